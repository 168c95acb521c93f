//! Tokenizers for the engine's models: built from a GGUF file's `tokenizer.ggml.*` metadata (GPT-2
//! style byte-level BPE, with the split rules chosen by `tokenizer.ggml.pre`) or loaded from a
//! `tokenizer.json` (beside a GGUF file, or in a Hugging Face model folder); plus
//! [`DecodeStream`], which turns a growing list of ids into text pieces without ever cutting a
//! UTF-8 character in half.
use std::path::Path;

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::EngineError;
use crate::gguf::GgufFile;

/// Qwen2's split regex (llama.cpp `LLAMA_VOCAB_PRE_TYPE_QWEN2`, HF `tokenizer.json`): digits one by
/// one, letters with one leading non-letter, case-insensitive contractions.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types that are matched whole in input text: 2 unknown, 3 control, 4 user-defined.
fn is_special_type(token_type: i64) -> bool {
    matches!(token_type, 2..=4)
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

/// Text <-> token ids for one model.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Prepended by `encode(.., true)` when the file asks for it (`tokenizer.ggml.add_bos_token`).
    bos_to_add: Option<u32>,
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes.
    pub fn from_gguf_file(path: &Path) -> Result<Self, EngineError> {
        Self::from_gguf(&GgufFile::open(path)?)
    }

    /// The tokenizer of a model path as [`crate::Model::load_with_tokenizer`] takes it: a
    /// Hugging Face folder's `tokenizer.json` (with its `tokenizer_config.json`); for a GGUF
    /// file, a `tokenizer.json` beside it if there is one (see [`Self::beside_gguf`]), else the
    /// one the file's metadata describes.
    pub fn for_model_path(path: &Path) -> Result<Self, EngineError> {
        if path.is_dir() {
            crate::model::hf_folder::load_tokenizer(path)
        } else if let Some(json) = Self::beside_gguf(path) {
            Self::from_tokenizer_json(&json)
        } else {
            Self::from_gguf_file(path)
        }
    }

    /// A `tokenizer.json` in the GGUF file's folder, which takes precedence over the file's own
    /// vocabulary (for files whose metadata a converter got wrong, or a tokenizer it cannot
    /// express).
    pub(crate) fn beside_gguf(path: &Path) -> Option<std::path::PathBuf> {
        let beside = path.with_file_name("tokenizer.json");
        beside.is_file().then_some(beside)
    }

    /// Prepends `bos` in `encode(.., true)` (a folder whose tokenizer.json does not add it).
    pub(crate) fn with_bos_to_add(self, bos: Option<u32>) -> Self {
        Self {
            bos_to_add: bos,
            ..self
        }
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self, EngineError> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Self {
            inner,
            bos_to_add: None,
        })
    }

    /// Builds the tokenizer from already-parsed GGUF metadata.
    pub(crate) fn from_gguf(gguf: &GgufFile) -> Result<Self, EngineError> {
        let kind = gguf.str("tokenizer.ggml.model")?;
        if kind != "gpt2" {
            return Err(EngineError::Tokenizer(format!(
                "tokenizer model `{kind}` is not supported (only gpt2-style byte-level BPE)"
            )));
        }
        let tokens = gguf.string_array("tokenizer.ggml.tokens")?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let merges = gguf
            .string_array("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| EngineError::Tokenizer(format!("invalid merge `{m}`")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tok_err)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = gguf.opt_str("tokenizer.ggml.pre").unwrap_or("gpt2");
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            "qwen2" => {
                inner.with_normalizer(Some(NFC)).map_err(tok_err)?;
                let split = Split::new(
                    SplitPattern::Regex(QWEN2_SPLIT.to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(tok_err)?;
                Sequence::new(vec![split.into(), ByteLevel::new(false, false, false).into()]).into()
            }
            // SmolLM's tokenizer.json: every digit on its own, then GPT-2's byte-level split.
            "smollm" => Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            "gpt2" | "default" => ByteLevel::new(false, true, true).into(),
            other => {
                return Err(EngineError::Tokenizer(format!(
                    "pre-tokenizer `{other}` (tokenizer.ggml.pre) is not supported: gpt2, smollm, qwen2"
                )))
            }
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevel::default()));
        if let Some(types) = gguf.opt_int_array("tokenizer.ggml.token_type") {
            let specials: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(ty, _)| is_special_type(**ty))
                .map(|(_, t)| AddedToken::from(t.to_string(), true))
                .collect();
            inner.add_special_tokens(specials).map_err(tok_err)?;
        }
        let add_bos = matches!(
            gguf.value("tokenizer.ggml.add_bos_token"),
            Some(candle_core::quantized::gguf_file::Value::Bool(true))
        );
        let bos_to_add = if add_bos {
            gguf.opt_u64("tokenizer.ggml.bos_token_id")
                .and_then(|v| u32::try_from(v).ok())
        } else {
            None
        };
        Ok(Self { inner, bos_to_add })
    }

    /// Token ids of `text`. Special tokens written in the text (e.g. `<|im_start|>`) are always
    /// recognised; `add_special_tokens` adds the BOS token when the model asks for one.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, EngineError> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_special_tokens {
            ids.extend(self.bos_to_add);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.inner.decode(ids, false).map_err(tok_err)
    }

    /// The id of a token string (e.g. `"<|im_end|>"`), if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Number of tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Incremental detokenizer for streaming: feed ids one at a time, get back the text they complete.
/// Text is only released once it no longer ends in a partial UTF-8 character (a byte-level token can
/// carry half of one), and decoding restarts from a recent offset so spacing rules of the decoder
/// see the neighbouring tokens (the scheme text-generation-inference uses).
#[derive(Debug, Clone, Default)]
pub struct DecodeStream {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl DecodeStream {
    /// An empty stream (for text that starts after the prompt, create it after the prompt).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `id` and returns the newly completed text (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, EngineError> {
        self.push_with(|ids| tokenizer.decode(ids), id)
    }

    /// [`Self::push`] with any decoder of id slices (the server decodes through its model-text
    /// trait).
    pub fn push_with<E>(
        &mut self,
        decode: impl Fn(&[u32]) -> Result<String, E>,
        id: u32,
    ) -> Result<String, E> {
        self.ids.push(id);
        let prefix = decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            let piece = full
                .get(prefix.len()..)
                .map(str::to_string)
                .unwrap_or_default();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(piece)
        } else {
            Ok(String::new())
        }
    }

    /// Text held back at the end of generation (an incomplete character comes out as U+FFFD).
    pub fn flush_with<E>(
        &mut self,
        decode: impl Fn(&[u32]) -> Result<String, E>,
    ) -> Result<String, E> {
        if self.read_offset == self.ids.len() {
            return Ok(String::new());
        }
        let prefix = decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(full
            .get(prefix.len()..)
            .map(str::to_string)
            .unwrap_or_default())
    }

    /// Every id pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::DecodeStream;

    /// A byte-level code: token id = one byte of UTF-8.
    fn bytes(ids: &[u32]) -> Result<String, std::convert::Infallible> {
        let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    #[test]
    fn the_stream_never_splits_a_utf8_character() {
        let mut d = DecodeStream::new();
        let mut out = String::new();
        let mut pieces = 0;
        for id in "aé€b".bytes().map(u32::from) {
            let piece = d.push_with(bytes, id).expect("decodes");
            assert!(!piece.contains('\u{FFFD}'), "broken character in {piece:?}");
            pieces += usize::from(!piece.is_empty());
            out.push_str(&piece);
        }
        out.push_str(&d.flush_with(bytes).expect("decodes"));
        assert_eq!(out, "aé€b");
        assert_eq!(pieces, 4, "one piece per character");
    }

    #[test]
    fn flush_releases_an_incomplete_character_as_a_replacement() {
        let mut d = DecodeStream::new();
        let euro: Vec<u32> = "€".bytes().map(u32::from).collect();
        assert_eq!(d.push_with(bytes, u32::from(b'a')).expect("decodes"), "a");
        assert_eq!(d.push_with(bytes, euro[0]).expect("decodes"), "");
        assert_eq!(d.flush_with(bytes).expect("decodes"), "\u{FFFD}");
        assert_eq!(d.flush_with(bytes).expect("decodes"), "");
    }
}
