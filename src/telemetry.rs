//! Telemetry: the `tracing` subscriber in pretty or JSON form (writing where the caller says),
//! Prometheus metrics, and the optional `Server-Timing` header.

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

mod json_line;
pub(crate) mod metrics;
pub(crate) mod server_timing;

/// Builds a subscriber without installing it: JSON writes one object per line with
/// `timestamp`, `level`, the event's fields (`message`, `status`, `latency_ms`, …) and the
/// request `span` (`method`, `route`, `request_id`, `user.id`). Tests install it for their own
/// thread with `tracing::subscriber::set_default` and capture `writer`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Pretty => Box::new(builder.with_target(false).finish()),
        LogFormat::Json => Box::new(
            builder
                .fmt_fields(json_line::JsonSpanFields)
                .event_format(json_line::JsonLine)
                .finish(),
        ),
    }
}

/// Installs the global subscriber. `RUST_LOG` filters (default `info`); `writer` lets tests
/// capture or silence output. Calling it twice is harmless (the second call does nothing).
pub fn init<W>(format: LogFormat, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = subscriber(format, filter, writer).try_init();
}
