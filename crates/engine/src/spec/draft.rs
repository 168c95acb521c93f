//! Draft methods (the "small speculative model" of LAPS-SD): which one a request uses
//! ([`DraftSpec`], parsed from `--draft`), and prompt-lookup n-gram drafting (Saxena 2023,
//! "Prompt Lookup Decoding"), which needs no model: the proposal is copied from earlier text.
//! Model drafters (a separate GGUF file or Hugging Face folder, or the target's first N layers)
//! run inside [`crate::engine::SdEngine`], which batches their forwards.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Default longest n-gram matched by `ngram` without `:N`.
pub const DEFAULT_NGRAM_N: usize = 3;

/// The draft method every command uses without `--draft` (`lapsd generate`, `calibrate`,
/// `serve`): prompt lookup, chosen by measurement on SmolLM2-135M
/// (docs/speculative-decoding.md). Written as the spec displays; `ngram` parses to the same.
pub const DEFAULT_DRAFT: &str = "ngram:3";

/// Which draft method proposes tokens. Parsed from `none`, `ngram`, `ngram:N`, `self:N`, or a
/// separate draft model sharing the target's tokenizer: a path to a `.gguf` file, or
/// `model:PATH` for any model path (a Hugging Face folder, or a GGUF file of another name),
/// optionally followed by `:vocab=N` (the draft scores only the first N token ids, see
/// `LoadOptions::lm_head_rows`) and/or `:exact` (the draft runs the target's arithmetic, without
/// the padded fast kernel of `LoadOptions::pad_q8_0_for_repack`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DraftSpec {
    /// No drafting: every step is plain decoding.
    None,
    /// Prompt lookup: match the last `n` (down to 1) tokens against the prompt and output so far.
    NGram {
        /// Longest suffix length tried first.
        n: usize,
    },
    /// Self-speculative: the target's first `n_layers` layers plus its final norm and head.
    SelfLayers {
        /// Number of leading target layers the draft runs.
        n_layers: usize,
    },
    /// A separate draft model (GGUF file or Hugging Face folder) with the target's tokenizer.
    Model {
        /// The GGUF file or model folder.
        path: PathBuf,
        /// Score only the first `head_rows` token ids in the draft's LM head (None: all).
        head_rows: Option<usize>,
        /// Pad Q8_0 weights for candle's faster kernel (`LoadOptions::pad_q8_0_for_repack`);
        /// false with `:exact`.
        pad_q8_0: bool,
    },
}

/// Why a `--draft` string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid draft spec {spec:?}: {reason} (expected none, ngram, ngram:N, self:N, or a path to a .gguf file or model:PATH, optionally with :vocab=N and/or :exact)")]
pub struct DraftSpecParseError {
    /// The string as given.
    pub spec: String,
    /// What was wrong with it.
    pub reason: String,
}

impl FromStr for DraftSpec {
    type Err = DraftSpecParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| DraftSpecParseError {
            spec: s.to_string(),
            reason: reason.to_string(),
        };
        let positive = |v: &str, what: &str| -> Result<usize, DraftSpecParseError> {
            match v.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(err(&format!(
                    "{what} must be a positive integer, got {v:?}"
                ))),
            }
        };
        let trimmed = s.trim();
        match trimmed {
            "" => Err(err("empty")),
            "none" => Ok(DraftSpec::None),
            "ngram" => Ok(DraftSpec::NGram { n: DEFAULT_NGRAM_N }),
            _ => {
                if let Some(v) = trimmed.strip_prefix("ngram:") {
                    Ok(DraftSpec::NGram {
                        n: positive(v, "the n-gram length")?,
                    })
                } else if let Some(v) = trimmed.strip_prefix("self:") {
                    Ok(DraftSpec::SelfLayers {
                        n_layers: positive(v, "the layer count")?,
                    })
                } else {
                    // `model:PATH`: the options are the trailing `:vocab=N` / `:exact` parts
                    // (a folder name has no suffix that could end the path); a `.gguf` path
                    // ends at its suffix.
                    let (path, options) = if let Some(rest) = trimmed.strip_prefix("model:") {
                        let mut path = rest;
                        while let Some((head, tail)) = path.rsplit_once(':') {
                            if tail == "exact" || tail.starts_with("vocab=") {
                                path = head;
                            } else {
                                break;
                            }
                        }
                        if path.is_empty() {
                            return Err(err("the model path is empty"));
                        }
                        (path, &rest[path.len()..])
                    } else if let Some(at) = gguf_path_end(trimmed) {
                        (&trimmed[..at], &trimmed[at..])
                    } else {
                        return Err(err("unknown draft method"));
                    };
                    let mut head_rows = None;
                    let mut pad_q8_0 = true;
                    for option in options.split(':').filter(|o| !o.is_empty()) {
                        if let Some(v) = option.strip_prefix("vocab=") {
                            head_rows = Some(positive(v, "the draft vocabulary size")?);
                        } else if option == "exact" {
                            pad_q8_0 = false;
                        } else {
                            return Err(err(&format!(
                                "unknown draft model option {option:?} (expected vocab=N or exact)"
                            )));
                        }
                    }
                    Ok(DraftSpec::Model {
                        path: PathBuf::from(path),
                        head_rows,
                        pad_q8_0,
                    })
                }
            }
        }
    }
}

impl fmt::Display for DraftSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DraftSpec::None => write!(f, "none"),
            DraftSpec::NGram { n } => write!(f, "ngram:{n}"),
            DraftSpec::SelfLayers { n_layers } => write!(f, "self:{n_layers}"),
            DraftSpec::Model {
                path,
                head_rows,
                pad_q8_0,
            } => {
                // A `.gguf` path parses back as itself, unless it starts like another method;
                // any other path needs the prefix.
                let text = path.to_string_lossy();
                let plain = gguf_path_end(&text) == Some(text.len())
                    && !["ngram:", "self:", "model:"]
                        .iter()
                        .any(|p| text.starts_with(p));
                if plain {
                    write!(f, "{text}")?;
                } else {
                    write!(f, "model:{text}")?;
                }
                if let Some(rows) = head_rows {
                    write!(f, ":vocab={rows}")?;
                }
                if !pad_q8_0 {
                    write!(f, ":exact")?;
                }
                Ok(())
            }
        }
    }
}

/// Where the `.gguf` path of a draft-model spec ends: the end of the string, or the first `:`
/// after a `.gguf` (options follow).
fn gguf_path_end(spec: &str) -> Option<usize> {
    let lower = spec.to_ascii_lowercase();
    lower
        .match_indices(".gguf")
        .map(|(i, _)| i + 5)
        .find(|&end| end == spec.len() || spec[end..].starts_with(':'))
}

/// Loads a separate draft model for `DraftSpec::Model`, with its LM head cut to `head_rows`
/// token ids when given, its Q8_0 weights padded for candle's faster kernel when `pad_q8_0`
/// (`LoadOptions::pad_q8_0_for_repack`: a draft's arithmetic moves only its acceptance, never the
/// output), and its lazily packed weights built now (`Model::warm_up`).
pub fn load_draft_model(
    path: &std::path::Path,
    head_rows: Option<usize>,
    pad_q8_0: bool,
) -> Result<crate::Model, crate::EngineError> {
    let options = crate::LoadOptions {
        lm_head_rows: head_rows,
        pad_q8_0_for_repack: pad_q8_0,
        ..Default::default()
    };
    let draft = crate::Model::load_with_options(path, &options)?;
    draft.warm_up()?;
    Ok(draft)
}

/// Prompt-lookup proposal: finds the most recent earlier occurrence of the last `m` tokens of
/// `tokens` (trying `m = max_n` down to 1) and proposes up to `k` tokens that followed it.
/// Returns fewer than `k` tokens (or none) when the match is near the end or nothing matches.
pub fn ngram_propose(tokens: &[u32], max_n: usize, k: usize) -> Vec<u32> {
    let len = tokens.len();
    if k == 0 || len < 2 {
        return Vec::new();
    }
    for m in (1..=max_n.min(len - 1)).rev() {
        let suffix = &tokens[len - m..];
        // Candidate starts: the match must end before the suffix's last token so that at least
        // one token follows it; scan from the most recent.
        for start in (0..len - m).rev() {
            if &tokens[start..start + m] == suffix {
                let from = start + m;
                let to = (from + k).min(len);
                return tokens[from..to].to_vec();
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_every_form() {
        assert_eq!("none".parse::<DraftSpec>(), Ok(DraftSpec::None));
        assert_eq!(
            "ngram".parse::<DraftSpec>(),
            Ok(DraftSpec::NGram { n: DEFAULT_NGRAM_N })
        );
        assert_eq!(
            "ngram:2".parse::<DraftSpec>(),
            Ok(DraftSpec::NGram { n: 2 })
        );
        assert_eq!(
            "self:8".parse::<DraftSpec>(),
            Ok(DraftSpec::SelfLayers { n_layers: 8 })
        );
        assert_eq!(
            "models/draft.Q4_K_M.gguf".parse::<DraftSpec>(),
            Ok(DraftSpec::Model {
                path: PathBuf::from("models/draft.Q4_K_M.gguf"),
                head_rows: None,
                pad_q8_0: true,
            })
        );
        assert_eq!(
            "model:models/Qwen2.5-0.5B:exact:vocab=9".parse::<DraftSpec>(),
            Ok(DraftSpec::Model {
                path: PathBuf::from("models/Qwen2.5-0.5B"),
                head_rows: Some(9),
                pad_q8_0: false,
            })
        );
        assert_eq!(
            "models/draft.gguf:vocab=65536:exact".parse::<DraftSpec>(),
            Ok(DraftSpec::Model {
                path: PathBuf::from("models/draft.gguf"),
                head_rows: Some(65536),
                pad_q8_0: false,
            })
        );
        for s in [
            "none",
            "ngram:3",
            "self:12",
            "a/b.gguf",
            "a/b.gguf:vocab=100",
            "a/b.gguf:exact",
            "x.gguf.d/b.gguf:vocab=7:exact",
            "model:models/SmolLM2-135M-Instruct",
            "model:models/qwen:vocab=100:exact",
            "model:a/b.gguf:x",
            "model:self:1.gguf",
        ] {
            assert_eq!(
                s.parse::<DraftSpec>().map(|d| d.to_string()).as_deref(),
                Ok(s)
            );
        }
    }

    #[test]
    fn the_default_draft_is_ngram_with_the_default_n() {
        let spec = DraftSpec::NGram { n: DEFAULT_NGRAM_N };
        assert_eq!(DEFAULT_DRAFT.parse::<DraftSpec>(), Ok(spec.clone()));
        assert_eq!(spec.to_string(), DEFAULT_DRAFT);
    }

    #[test]
    fn rejects_bad_specs_with_the_reason() {
        let e = "self:0".parse::<DraftSpec>().unwrap_err();
        assert_eq!(e.spec, "self:0");
        assert!(e.reason.contains("layer count"), "{e}");
        assert!("ngram:x"
            .parse::<DraftSpec>()
            .unwrap_err()
            .reason
            .contains("n-gram length"));
        assert_eq!(
            "medusa".parse::<DraftSpec>().unwrap_err().reason,
            "unknown draft method"
        );
        assert_eq!("".parse::<DraftSpec>().unwrap_err().reason, "empty");
        assert!("d.gguf:vocab=0"
            .parse::<DraftSpec>()
            .unwrap_err()
            .reason
            .contains("draft vocabulary size"));
        assert_eq!(
            "draft.bin:vocab=5".parse::<DraftSpec>().unwrap_err().reason,
            "unknown draft method"
        );
        assert_eq!(
            "model::exact".parse::<DraftSpec>().unwrap_err().reason,
            "the model path is empty"
        );
        assert!("d.gguf:fast"
            .parse::<DraftSpec>()
            .unwrap_err()
            .reason
            .contains("unknown draft model option \"fast\""));
    }

    #[test]
    fn ngram_copies_the_continuation_of_the_latest_match() {
        // ... 1 2 3 [4 5 6 7] ... 1 2 3 [9 9] ... 1 2 3  -> latest match is the one followed by 9 9.
        let t = [1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 9, 9, 1, 2, 3];
        assert_eq!(ngram_propose(&t, 3, 4), vec![9, 9, 1, 2]);
        assert_eq!(ngram_propose(&t, 3, 1), vec![9]);
        assert_eq!(ngram_propose(&t, 3, 0), Vec::<u32>::new());
    }

    #[test]
    fn ngram_falls_back_to_shorter_suffixes_and_may_propose_nothing() {
        // Suffix [8, 3]: no 2-gram match, 1-gram [3] matches at index 2 -> proposes 4 5.
        let t = [1, 2, 3, 4, 5, 8, 3];
        assert_eq!(ngram_propose(&t, 2, 2), vec![4, 5]);
        assert_eq!(ngram_propose(&[1, 2, 3, 4], 3, 4), Vec::<u32>::new());
        assert_eq!(ngram_propose(&[7], 3, 4), Vec::<u32>::new());
        // A match whose continuation runs into the end proposes fewer than k.
        assert_eq!(ngram_propose(&[5, 6, 5, 6, 5], 2, 8), vec![6, 5]);
    }
}
