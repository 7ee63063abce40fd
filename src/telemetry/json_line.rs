//! The `LOG_FORMAT=json` line: the shape of tracing-subscriber's own JSON format (event
//! flattened, current span under `span`), written at about half its cost per line.
//!
//! tracing-subscriber keeps a span's fields as the JSON object its `JsonFields` wrote; it parses
//! and rewrites that object each time a field is recorded later (the user id, once the token is
//! verified), and its JSON formatter parses it back into a map and serializes it again for every
//! event. At one line per request that was over half of the 7.5 µs logging added to a request
//! (`cargo bench --bench request`). Here a span keeps `"name":value` pairs, a field recorded
//! later is appended, and each line copies them as they are.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// One JSON object per line: `timestamp`, `level`, the event's fields, `target`, and the
/// current span's fields plus its `name` under `span`. Use with [`JsonSpanFields`] as the field
/// formatter (tracing-subscriber's `JsonFields` works too, at its own cost).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = String::with_capacity(320);
        line.push_str("{\"timestamp\":\"");
        // RFC 3339 digits and separators only: nothing to escape.
        SystemTime.format_time(&mut Writer::new(&mut line))?;
        line.push_str("\",\"level\":\"");
        line.push_str(meta.level().as_str());
        line.push('"');
        event.record(&mut FieldWriter { line: &mut line });
        line.push_str(",\"target\":");
        push_str_value(&mut line, meta.target());

        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            line.push_str(",\"span\":{");
            let extensions = span.extensions();
            // `JsonSpanFields` stores the pairs bare; `JsonFields` stores them in braces.
            let stored = extensions
                .get::<FormattedFields<N>>()
                .map(|f| f.fields.trim())
                .map(|f| {
                    f.strip_prefix('{')
                        .and_then(|f| f.strip_suffix('}'))
                        .unwrap_or(f)
                })
                .filter(|body| !body.trim().is_empty());
            if let Some(body) = stored {
                line.push_str(body);
                line.push(',');
            }
            line.push_str("\"name\":");
            push_str_value(&mut line, span.name());
            line.push('}');
        }
        line.push_str("}\n");
        writer.write_str(&line)
    }
}

/// Keeps a span's fields as `"name":value` pairs separated by commas, ready to be copied into
/// a JSON object; a field recorded later is appended (recording one field twice would repeat
/// its key, which JSON readers take as the last value; this service records each once).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct JsonSpanFields;

impl<'writer> FormatFields<'writer> for JsonSpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut pairs = String::new();
        fields.record(&mut FieldWriter { line: &mut pairs });
        writer.write_str(pairs.strip_prefix(',').unwrap_or(&pairs))
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        let mut pairs = String::new();
        fields.record(&mut FieldWriter { line: &mut pairs });
        let pairs = if current.fields.is_empty() {
            pairs.strip_prefix(',').unwrap_or(&pairs)
        } else {
            &pairs
        };
        current.fields.push_str(pairs);
        Ok(())
    }
}

/// Appends each field as `,"name":value`.
struct FieldWriter<'a> {
    line: &'a mut String,
}

impl FieldWriter<'_> {
    fn key(&mut self, field: &Field) {
        self.line.push(',');
        push_str_value(self.line, field.name());
        self.line.push(':');
    }

    /// An integer: its decimal digits are already valid JSON.
    fn number(&mut self, field: &Field, value: impl fmt::Display) {
        self.key(field);
        let _ = write!(self.line, "{value}");
    }
}

impl Visit for FieldWriter<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            // Rust prints finite floats in plain decimal, which is valid JSON.
            let _ = write!(self.line, "{value}");
        } else {
            self.line.push_str("null");
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, value);
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.number(field, value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.number(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_str_value(self.line, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.key(field);
        push_str_value(self.line, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        push_str_value(self.line, &format!("{value:?}"));
    }
}

/// Appends `text` as a JSON string, escaped by serde_json.
fn push_str_value(line: &mut String, text: &str) {
    match serde_json::to_string(text) {
        Ok(quoted) => line.push_str(&quoted),
        // Serializing a str cannot fail; keep the line valid JSON regardless.
        Err(_) => line.push_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::fmt::format::JsonFields;

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    /// The lines a subscriber writes for a request-like span and events, parsed, with the
    /// timestamps checked and then removed.
    fn lines(subscriber: impl Subscriber + Send + Sync + 'static, capture: &Capture) -> Vec<Value> {
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                method = "GET",
                route = "/name",
                request_id = "id \"quoted\" \\ é",
                user.id = tracing::field::Empty,
            );
            let _entered = span.enter();
            span.record("user.id", "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f");
            tracing::info!(
                status = 200_u16,
                latency_ms = 1.25,
                negative = -3_i64,
                ok = true,
                debug = ?Some("x"),
                display = %"shown",
                error.code = "invalid_token",
                "request completed"
            );
            tracing::warn!(nan = f64::NAN, "no finite value");
        });
        tracing::info!("outside any span, not captured");
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
                let ts = v["timestamp"].as_str().unwrap().to_owned();
                assert!(ts.ends_with('Z') && ts.contains('T'), "{ts}");
                v.as_object_mut().unwrap().remove("timestamp");
                v
            })
            .collect()
    }

    #[test]
    fn json_line_matches_tracing_subscribers_json_format() {
        let ours = Capture::default();
        let theirs = Capture::default();
        let ours_lines = lines(
            tracing_subscriber::fmt()
                .with_writer(ours.clone())
                .fmt_fields(JsonSpanFields)
                .event_format(JsonLine)
                .finish(),
            &ours,
        );
        let with_their_fields = Capture::default();
        let with_their_fields_lines = lines(
            tracing_subscriber::fmt()
                .with_writer(with_their_fields.clone())
                .fmt_fields(JsonFields::new())
                .event_format(JsonLine)
                .finish(),
            &with_their_fields,
        );
        let theirs_lines = lines(
            tracing_subscriber::fmt()
                .with_writer(theirs.clone())
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
            &theirs,
        );
        assert_eq!(ours_lines.len(), 2);
        assert_eq!(ours_lines, theirs_lines);
        assert_eq!(with_their_fields_lines, theirs_lines);
        assert_eq!(ours_lines[0]["span"]["request_id"], "id \"quoted\" \\ é");
        assert_eq!(
            ours_lines[0]["span"]["user.id"],
            "5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f"
        );
        assert_eq!(ours_lines[1]["nan"], Value::Null);
    }
}
