//! The engine's error type: everything that can go wrong loading a model, tokenizing or running a step.
use std::path::PathBuf;

/// Errors of the engine layer. Each variant names what was missing or wrong so the message alone
/// tells the user what to fix; `kind()` gives a stable tag for logs and metrics.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a readable GGUF file (bad magic, truncated header, ...).
    #[error("invalid GGUF file {path}: {message}")]
    Gguf { path: PathBuf, message: String },
    /// A tensor the architecture needs is not in the file.
    #[error("GGUF file lacks tensor `{0}`")]
    MissingTensor(String),
    /// A metadata key the architecture needs is not in the file (or has the wrong type).
    #[error("GGUF file lacks metadata `{0}` (or it has the wrong type)")]
    MissingMetadata(String),
    /// A Hugging Face model folder lacks a file the loader needs (`config.json`,
    /// `tokenizer.json`, any `*.safetensors`).
    #[error("Hugging Face model folder lacks {0}")]
    MissingHfFile(PathBuf),
    /// A file of a Hugging Face model folder is unreadable or has a missing, mistyped or
    /// unsupported value; `message` names the key or tensor.
    #[error("{path}: {message}")]
    InvalidHfFile { path: PathBuf, message: String },
    /// A tensor the architecture needs is in none of a Hugging Face folder's safetensors files.
    #[error("no safetensors file in {dir} has tensor `{name}`")]
    MissingHfTensor { dir: PathBuf, name: String },
    /// `general.architecture` (GGUF) or `architectures` / `model_type` (Hugging Face
    /// `config.json`) names an architecture this engine does not implement.
    #[error("unsupported model architecture `{0}` (supported: llama, qwen2; Hugging Face: LlamaForCausalLM, Qwen2ForCausalLM)")]
    UnsupportedArchitecture(String),
    /// Shapes or hyper-parameters in the file contradict each other.
    #[error("inconsistent model file: {0}")]
    InvalidModel(String),
    /// Building or running the tokenizer failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// A candle tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// A sequence would run past the model's context window.
    #[error("context overflow: {cached_tokens} cached + {new_tokens} new tokens exceed the context length {context_length}")]
    ContextOverflow {
        cached_tokens: usize,
        new_tokens: usize,
        context_length: usize,
    },
    /// A token id is not in the model's vocabulary.
    #[error("token id {token_id} is out of range for vocabulary size {vocab_size}")]
    TokenOutOfRange { token_id: u32, vocab_size: usize },
    /// A forward call was given no tokens for a sequence.
    #[error("sequence {index} of the batch has no new tokens")]
    EmptySequence { index: usize },
    /// A KV cache does not fit the forward call (wrong number of layers or wrong model).
    #[error("KV cache mismatch: {0}")]
    CacheMismatch(String),
    /// A layer count outside 1..=n_layers was asked for.
    #[error("invalid layer count {requested} (model has {available} layers)")]
    InvalidLayerCount { requested: usize, available: usize },
    /// A request or sequence id that the engine does not know.
    #[error("unknown sequence {0}")]
    UnknownSequence(u64),
    /// `--weights` got something other than `fast` or `exact`.
    #[error("unknown weight mode `{0}` (expected `fast` or `exact`)")]
    InvalidWeightMode(String),
}

impl EngineError {
    /// A stable, short tag per variant for logs, metrics and API error bodies.
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::Io { .. } => "io",
            EngineError::Gguf { .. } => "gguf",
            EngineError::MissingTensor(_) => "missing_tensor",
            EngineError::MissingMetadata(_) => "missing_metadata",
            EngineError::MissingHfFile(_) => "missing_hf_file",
            EngineError::InvalidHfFile { .. } => "invalid_hf_file",
            EngineError::MissingHfTensor { .. } => "missing_tensor",
            EngineError::UnsupportedArchitecture(_) => "unsupported_architecture",
            EngineError::InvalidModel(_) => "invalid_model",
            EngineError::Tokenizer(_) => "tokenizer",
            EngineError::Candle(_) => "tensor",
            EngineError::ContextOverflow { .. } => "context_overflow",
            EngineError::TokenOutOfRange { .. } => "token_out_of_range",
            EngineError::EmptySequence { .. } => "empty_sequence",
            EngineError::CacheMismatch(_) => "cache_mismatch",
            EngineError::InvalidLayerCount { .. } => "invalid_layer_count",
            EngineError::UnknownSequence(_) => "unknown_sequence",
            EngineError::InvalidWeightMode(_) => "invalid_weight_mode",
        }
    }
}
