//! The built-in local model, used when `LLM_BASE_URL` is unset: it answers by echoing the
//! user's message word by word with a small delay, so the whole path (streaming, quota,
//! history) runs on a fresh machine and in tests, deterministically.

use std::collections::VecDeque;
use std::time::Duration;

use crate::upstream::{Message, Piece, Usage};

/// The local model: how long it waits before each word, and how many words it may say.
#[derive(Debug, Clone, Copy)]
pub struct LocalModel {
    /// Delay before each word (`CHAT_LOCAL_DELAY_MS`).
    pub delay: Duration,
    /// `CHAT_MAX_OUTPUT_TOKENS`: it stops there, as a real model told `max_tokens` does.
    pub max_tokens: u32,
}

impl LocalModel {
    /// Starts the answer to the last message of `messages`. Tokens are counted as words.
    pub fn answer(&self, messages: &[Message]) -> LocalAnswer {
        let prompt = messages.last().map_or("", |m| m.content.as_str());
        let cap = usize::try_from(self.max_tokens).unwrap_or(usize::MAX);
        let words: Vec<&str> = prompt.split_whitespace().take(cap).collect();
        let last = words.len().saturating_sub(1);
        let pieces: VecDeque<String> = words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == last {
                    (*w).to_owned()
                } else {
                    format!("{w} ")
                }
            })
            .collect();
        let prompt_tokens = messages
            .iter()
            .map(|m| m.content.split_whitespace().count() as u64)
            .sum();
        LocalAnswer {
            usage: Some(Usage {
                prompt_tokens,
                completion_tokens: pieces.len() as u64,
            }),
            pieces,
            delay: self.delay,
        }
    }
}

/// A local answer in progress.
#[derive(Debug)]
pub struct LocalAnswer {
    pieces: VecDeque<String>,
    usage: Option<Usage>,
    delay: Duration,
}

impl LocalAnswer {
    /// The next word (after the delay), then the usage, then `None`.
    pub async fn next(&mut self) -> Option<Piece> {
        if let Some(word) = self.pieces.pop_front() {
            tokio::time::sleep(self.delay).await;
            return Some(Piece::Text(word));
        }
        self.usage.take().map(Piece::Usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn it_echoes_word_by_word_and_counts_words() {
        let model = LocalModel {
            delay: Duration::ZERO,
            max_tokens: 100,
        };
        let mut answer = model.answer(&[Message {
            role: "user".into(),
            content: "  hello   big world ".into(),
        }]);
        let mut text = String::new();
        let mut usage = None;
        while let Some(piece) = answer.next().await {
            match piece {
                Piece::Text(t) => text.push_str(&t),
                Piece::Usage(u) => usage = Some(u),
            }
        }
        assert_eq!(text, "hello big world");
        assert_eq!(
            usage,
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 3
            })
        );
    }

    #[tokio::test]
    async fn it_stops_at_the_output_cap() {
        let model = LocalModel {
            delay: Duration::ZERO,
            max_tokens: 2,
        };
        let mut answer = model.answer(&[Message {
            role: "user".into(),
            content: "one two three four".into(),
        }]);
        let mut pieces = Vec::new();
        while let Some(piece) = answer.next().await {
            pieces.push(piece);
        }
        assert_eq!(
            pieces,
            vec![
                Piece::Text("one ".into()),
                Piece::Text("two".into()),
                Piece::Usage(Usage {
                    prompt_tokens: 4,
                    completion_tokens: 2
                })
            ]
        );
    }
}
