//! The real engine behind the worker: [`Backend`] for `lapsd_engine::SdEngine` and [`ModelText`]
//! for its tokenizer, plus the loader `lapsd serve` uses. Runs on the engine worker thread.
//!
//! Chat prompts: rendered with the model's own Jinja chat template (`lapsd_engine::chat`, from the
//! GGUF `tokenizer.chat_template` or a Hugging Face folder's template); a model without one gets
//! ChatML, the documented fallback.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use lapsd_engine::chat::{ChatError, ChatTemplate};
use lapsd_engine::engine::{EngineConfig, SdEngine};
use lapsd_engine::spec::DraftSpec;
use lapsd_engine::{EngineError, Tokenizer, WeightMode};

use crate::backend::{Backend, SamplingParams, SeqStepOutput, StepMember};
use crate::error::ServerError;
use crate::model_text::{
    special_chunks, special_in_contents, split_rendered, ChatPromptError, Chunk, ModelCard,
    ModelText,
};
use crate::server::{LoadedModel, ModelLoader};

/// What to load.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub model_path: PathBuf,
    pub draft: DraftSpec,
    /// The target's arithmetic (`--weights`).
    pub weights: WeightMode,
    /// Overrides the model's name in `model` / `GET /v1/models` (default: the file stem).
    pub served_model_name: Option<String>,
}

/// A loader for [`crate::server::start`].
pub fn loader(spec: LoadSpec) -> ModelLoader {
    Box::new(move || load(spec))
}

/// Loads the engine and a second copy of its tokenizer for the HTTP handlers.
pub fn load(spec: LoadSpec) -> Result<LoadedModel, ServerError> {
    let started = std::time::Instant::now();
    let engine = SdEngine::load(EngineConfig {
        model_path: spec.model_path.clone(),
        draft: spec.draft.clone(),
        weights: spec.weights,
    })?;
    let tokenizer = Tokenizer::for_model_path(&spec.model_path)?;
    let info = engine.info();
    let card = ModelCard {
        name: spec
            .served_model_name
            .clone()
            .unwrap_or_else(|| served_name_of(&spec.model_path)),
        context_length: u32::try_from(info.context_length).unwrap_or(u32::MAX),
        vocab_size: u32::try_from(info.vocab_size).unwrap_or(u32::MAX),
        eos_token_ids: info.eos_token_ids.clone(),
    };
    let chat_template = ChatTemplate::for_model(info, &tokenizer);
    tracing::info!(
        model = %spec.model_path.display(),
        chat_template = if chat_template.is_fallback() { "chatml (fallback)" } else { "model" },
        name = %card.name,
        draft = %spec.draft,
        load_s = started.elapsed().as_secs_f64(),
        "model loaded"
    );
    Ok(LoadedModel {
        backend: Box::new(SdBackend {
            engine,
            ids: HashSet::new(),
        }),
        text: Arc::new(EngineText::new(tokenizer, chat_template)),
        card,
        draft_name: spec.draft.to_string(),
    })
}

/// The default served name: the model file's stem (`SmolLM2-135M-Instruct.Q4_1`), or a Hugging
/// Face folder's whole name (`Qwen2.5-0.5B-Instruct`: its dots are not an extension), what
/// `--help` promises and what a client can read off the command line; the GGUF
/// `general.name` is often generic or absent.
pub fn served_name_of(model_path: &std::path::Path) -> String {
    let name = if model_path.is_dir() {
        model_path.file_name()
    } else {
        model_path.file_stem()
    };
    name.map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "model".to_string())
}

/// The engine tokenizer as [`ModelText`].
pub struct EngineText {
    tokenizer: Tokenizer,
    chat_template: ChatTemplate,
    /// The same tokenizer with special-token matching off: message contents go through it.
    plain: tokenizers::Tokenizer,
    /// Special tokens' text and id, for finding the template's markers.
    specials: Vec<(String, u32)>,
}

impl EngineText {
    pub fn new(tokenizer: Tokenizer, chat_template: ChatTemplate) -> Self {
        let mut plain = tokenizer.inner().clone();
        plain.set_encode_special_tokens(true);
        let mut specials: Vec<(String, u32)> = tokenizer
            .inner()
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (t.content, id))
            .collect();
        // A fixed order, so that ties between equal tokens never depend on hashing.
        specials.sort();
        Self {
            tokenizer,
            chat_template,
            plain,
            specials,
        }
    }

    fn encode_chunks(&self, chunks: &[Chunk]) -> Result<Vec<u32>, ChatPromptError> {
        let mut ids = Vec::new();
        for chunk in chunks {
            match chunk {
                Chunk::Special(id) => ids.push(*id),
                Chunk::Text(text) => {
                    let enc = self.plain.encode(text.as_str(), false).map_err(|e| {
                        ChatPromptError::Tokenize(EngineError::Tokenizer(e.to_string()))
                    })?;
                    ids.extend_from_slice(enc.get_ids());
                }
            }
        }
        Ok(ids)
    }
}

impl ModelText for EngineText {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, EngineError> {
        self.tokenizer.encode(text, add_special_tokens)
    }
    fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.tokenizer.decode(ids)
    }
    fn render_chat(&self, messages: &[(String, String)]) -> Result<String, ChatError> {
        self.chat_template.render_turns(messages)
    }
    fn encode_chat(&self, messages: &[(String, String)]) -> Result<Vec<u32>, ChatPromptError> {
        let rendered = self.render_chat(messages)?;
        let pieces = split_rendered(|m| self.render_chat(m), messages, &rendered)?;
        match pieces {
            Some(pieces) => self.encode_chunks(&special_chunks(&pieces, &self.specials)),
            // The template transforms contents, so they cannot be told apart from its own
            // text; encoding the whole prompt is safe only if no content holds a special token.
            None => match special_in_contents(messages, &self.specials) {
                Some((index, token)) => Err(ChatPromptError::SpecialTokenInContent {
                    index,
                    token: token.to_string(),
                }),
                None => self
                    .encode(&rendered, false)
                    .map_err(ChatPromptError::Tokenize),
            },
        }
    }
}

/// [`SdEngine`] as the worker's [`Backend`].
pub struct SdBackend {
    engine: SdEngine,
    /// Registered sequence ids (to sum KV in use).
    ids: HashSet<u64>,
}

impl Backend for SdBackend {
    fn add_sequence(
        &mut self,
        id: u64,
        prompt_ids: Vec<u32>,
        params: SamplingParams,
    ) -> Result<(), EngineError> {
        self.engine.add_sequence(id, prompt_ids, params)?;
        self.ids.insert(id);
        Ok(())
    }

    fn step(&mut self, batch: &[(u64, usize)]) -> Result<Vec<SeqStepOutput>, EngineError> {
        self.engine.step(batch)
    }

    fn step_members(&mut self, batch: &[StepMember]) -> Result<Vec<SeqStepOutput>, EngineError> {
        self.engine.step_members(batch)
    }

    fn free_kv(&mut self, id: u64) {
        if let Err(e) = self.engine.free_kv(id) {
            tracing::warn!(id, error = %e, "free_kv of an unknown sequence");
        }
    }

    fn remove(&mut self, id: u64) {
        self.engine.remove(id);
        self.ids.remove(&id);
    }

    fn kv_tokens_in_use(&self) -> u64 {
        self.ids
            .iter()
            .map(|&id| self.engine.kv_tokens(id) as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_name_is_the_file_stem() {
        assert_eq!(
            served_name_of(std::path::Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf")),
            "SmolLM2-135M-Instruct.Q4_1"
        );
        assert_eq!(served_name_of(std::path::Path::new("/")), "model");
        let dir = std::env::temp_dir().join(format!("lapsd-Qwen2.5-0.5B-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let name = served_name_of(&dir);
        std::fs::remove_dir(&dir).ok();
        assert_eq!(name, format!("lapsd-Qwen2.5-0.5B-{}", std::process::id()));
    }
}
