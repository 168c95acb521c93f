//! Token counting for workload lengths. Without a tokenizer, tokens are approximated as
//! ceil(characters / 4) (OpenAI's rule of thumb for English text); with `--tokenizer FILE` a Hugging
//! Face `tokenizer.json` counts them exactly (without special tokens). The count only sizes the
//! workload (ShareGPT reply lengths become `max_tokens`; prompt lengths go to `--emit-sim-trace`); the
//! reported output-token numbers come from the server's `usage`.
use std::path::Path;

use crate::error::BenchError;

/// How text lengths are turned into token counts.
pub enum TokenCounter {
    /// ceil(chars / 4), never less than 1 for non-empty text.
    CharsPerFour,
    /// A real tokenizer loaded from a `tokenizer.json`.
    Tokenizer(Box<tokenizers::Tokenizer>),
}

impl TokenCounter {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, BenchError> {
        let tokenizer =
            tokenizers::Tokenizer::from_file(path).map_err(|e| BenchError::Tokenizer {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(TokenCounter::Tokenizer(Box::new(tokenizer)))
    }

    /// The counter `--tokenizer FILE` selects: that tokenizer, or characters/4 without the flag.
    pub fn from_flag(tokenizer: Option<&Path>) -> Result<Self, BenchError> {
        match tokenizer {
            Some(path) => Self::from_file(path),
            None => Ok(TokenCounter::CharsPerFour),
        }
    }

    /// Name recorded in the result file.
    pub fn describe(&self) -> &'static str {
        match self {
            TokenCounter::CharsPerFour => "chars/4",
            TokenCounter::Tokenizer(_) => "tokenizer.json",
        }
    }

    /// Number of tokens in `text`.
    pub fn count(&self, text: &str) -> u32 {
        match self {
            TokenCounter::CharsPerFour => chars_per_four(text),
            TokenCounter::Tokenizer(tokenizer) => match tokenizer.encode(text, false) {
                Ok(encoding) => encoding.len() as u32,
                // An encoding failure on odd text should not abort a run: fall back to the estimate.
                Err(_) => chars_per_four(text),
            },
        }
    }
}

fn chars_per_four(text: &str) -> u32 {
    let chars = text.chars().count() as u32;
    chars.div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chars_per_four_rounds_up_and_counts_characters_not_bytes() {
        let counter = TokenCounter::CharsPerFour;
        assert_eq!(counter.count(""), 0);
        assert_eq!(counter.count("a"), 1);
        assert_eq!(counter.count("abcd"), 1);
        assert_eq!(counter.count("abcde"), 2);
        assert_eq!(counter.count("éééé"), 1); // 4 characters, 8 bytes
    }

    #[test]
    fn missing_tokenizer_file_is_a_tokenizer_error() {
        let err = TokenCounter::from_file(Path::new("/nonexistent/tokenizer.json"))
            .err()
            .expect("must fail");
        assert_eq!(err.kind(), "tokenizer");
    }
}
