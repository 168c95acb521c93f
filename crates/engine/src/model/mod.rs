//! Models: loading a GGUF file or a Hugging Face model folder ([`hf_folder`]) into a [`Model`], its
//! [`ModelInfo`], per-request [`KvCache`]s, and the batched forward pass that returns logits for
//! every new position (what speculative verification needs: all k+1 positions, not just the last).
mod attention;
pub mod hf_folder;
mod kv_cache;
mod llama;
mod qgemv;
mod qgemv_k;
pub mod reference;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::Tensor;

pub use kv_cache::KvCache;

use crate::error::EngineError;
use crate::gguf::GgufFile;
use crate::tokenizer::Tokenizer;
use llama::{SeqRows, Transformer, WeightOptions};

/// What callers need to know about a loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// `general.architecture`: `llama` or `qwen2` (a Hugging Face folder's `LlamaForCausalLM` or
    /// `Qwen2ForCausalLM` reports the same).
    pub architecture: String,
    /// Number of decoder layers.
    pub n_layers: usize,
    /// Rows of the token embedding (the tokenizer's vocabulary).
    pub vocab_size: usize,
    /// Token ids the LM head scores: the columns of the logits (`vocab_size` unless
    /// [`LoadOptions::lm_head_rows`] cut the head).
    pub head_rows: usize,
    /// Maximum positions (`<arch>.context_length`; a folder's `max_position_embeddings`).
    pub context_length: usize,
    /// `tokenizer.ggml.bos_token_id` (a folder's `bos_token_id`), if the model has one.
    pub bos_token_id: Option<u32>,
    /// Tokens that end generation: the file's EOS id (a folder's `eos_token_id`s, from
    /// generation_config.json else config.json) plus the usual end-of-turn/end-of-text tokens
    /// found in its vocabulary (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, `</s>`), deduplicated.
    pub eos_token_ids: Vec<u32>,
    /// `tokenizer.chat_template` (Jinja source; a folder's `chat_template.jinja`, else the
    /// `chat_template` of its tokenizer_config.json), if any.
    pub chat_template: Option<String>,
    /// `general.name`, else the file stem; a folder's directory name.
    pub name: String,
    /// Hidden (embedding) size.
    pub hidden_size: usize,
    /// Query heads per layer.
    pub n_heads: usize,
    /// Key/value heads per layer (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
    /// KV-cache bytes one position takes across all layers (f32 K and V).
    pub kv_bytes_per_token: usize,
}

/// One sequence of a batched forward call: the new tokens and the cache they continue.
pub struct SeqForward<'a> {
    /// New tokens, run at positions `cache.len()..cache.len() + tokens.len()`.
    pub tokens: &'a [u32],
    /// The sequence's cache; the new tokens' K/V are appended to it.
    pub cache: &'a mut KvCache,
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Re-quantize projection weights stored as Q5_0/Q5_1/Q8_1 to Q8_0 at load time, because
    /// candle's CPU kernels for those types are scalar (several times slower per token). Costs
    /// ~1.6x the weight memory of Q5_0 and changes each weight by less than half a Q8_0 step.
    /// (Q4_1 and Q8_0 run on this crate's own kernels and are never re-quantized.)
    /// Default: true. Set false to run the file's exact weights.
    pub requantize_slow_types: bool,
    /// Re-quantize every quantized projection that is not Q8_0 (Q4_1 included) to Q8_0 at load:
    /// the arithmetic of a Hugging Face folder of the same values quantized at load
    /// (`quantize_float_weights`), for comparing the two. Default: false.
    pub requantize_all_to_q8_0: bool,
    /// Also keep an f32 copy of the projections candle's kernels serve (types other than Q8_0,
    /// Q4_1, Q4_K and Q6_K, padded Q8_0, a Hugging Face folder's f32 weights), used for inputs
    /// of many rows (prefill, large batched verifies), when all the model's weights in f32 take
    /// at most this many bytes (candle's quantized CPU matmul costs a full pass per row; f32
    /// GEMM amortises the weight read over the rows). 0 = never. Default: 2 GiB (SmolLM2-135M:
    /// 0.54 GB; Qwen2.5 0.5B: 2.0 GB; the 1.5B model stays quantized only).
    pub dense_weights_max_bytes: u64,
    /// Keep the f32 copy (`dense_weights_max_bytes`) for the projections this crate's own
    /// kernels serve too. They take a prompt faster than the f32 GEMM does, so this is for
    /// comparing the two paths. Default: false.
    pub dense_for_own_kernels: bool,
    /// Pad Q8_0 weights (including re-quantized ones) whose input width is not a multiple of 256
    /// with zero columns, so that candle's repacked AVX-512 VNNI kernel serves them instead of its
    /// per-row dot product (no effect on CPUs without AVX-512 VNNI). Faster (SmolLM2-135M decode
    /// ~1.4x; the Qwen2.5-0.5B draft 42 -> 32 ms per position), but that kernel quantizes the
    /// input in blocks of 256 instead of 32, which moves the logits: on SmolLM2 the quantized
    /// path's mean distance from the f32 model grew from ~5% to 8% of the logits' scale, and a
    /// padded copy of the model agreed with the unpadded one on 73% of greedy drafts instead of
    /// over 95%. So it is off for targets and on for draft models (`spec::DraftSpec`), whose
    /// arithmetic moves only their acceptance. Default: false.
    pub pad_q8_0_for_repack: bool,
    /// Score only the first N token ids in the LM head (logits then have N columns). For a draft
    /// model (FR-Spec, Zhao et al. 2025: a draft's head over the whole vocabulary is a large
    /// part of its cost, and BPE ids come roughly in frequency order); the draft's distribution
    /// is then zero elsewhere, which speculative sampling allows. Default: None (every id).
    pub lm_head_rows: Option<usize>,
    /// Quantize the f32/f16/bf16 projection weights of a Hugging Face folder to Q8_0 at load
    /// (LM head included; embedding and norms stay f32), so that decoding takes the same int8
    /// kernels as a GGUF model, at ~0.27x the f32 bytes per step (and prompts too: the own
    /// kernels keep no f32 copy unless `dense_for_own_kernels`). Each weight moves by at most half a Q8_0 step. False keeps
    /// every projection f32 (exact weights, no f32 copy needed; decode reads 4 bytes per weight).
    /// No effect on GGUF files, whose float weights stay as they are. Default: true.
    pub quantize_float_weights: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self::for_weights(WeightMode::default())
    }
}

impl LoadOptions {
    /// A target model's options for `mode` (nothing padded, every LM-head row).
    pub fn for_weights(mode: WeightMode) -> Self {
        let fast = mode == WeightMode::Fast;
        Self {
            requantize_slow_types: fast,
            requantize_all_to_q8_0: false,
            dense_weights_max_bytes: if fast { 2 << 30 } else { 0 },
            dense_for_own_kernels: false,
            pad_q8_0_for_repack: false,
            lm_head_rows: None,
            quantize_float_weights: fast,
        }
    }
}

/// Which arithmetic a model runs (`--weights` of `generate`, `serve` and `calibrate`).
/// docs/speculative-decoding.md ("Exact or fast weights") gives each mode's measured distance
/// from an f64 evaluation of the file's weights ([`reference::ReferenceModel`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightMode {
    /// Faster on the CPU: Q5_0/Q5_1/Q8_1 projections re-quantized to Q8_0 at load
    /// ([`LoadOptions::requantize_slow_types`]), a Hugging Face folder's float projections
    /// quantized to Q8_0 ([`LoadOptions::quantize_float_weights`]), and prompts of 16 tokens or
    /// more through an f32 copy of the weights candle's kernels serve
    /// ([`LoadOptions::dense_weights_max_bytes`]), so that a prompt's positions and generated
    /// positions can round differently. For Q8_0, Q4_1, Q4_K and Q6_K files nothing differs
    /// from `Exact`.
    #[default]
    Fast,
    /// The file's own weights for every position, prompt and generated alike: a GGUF's
    /// quantized weights (what another engine running the same file computes, up to its
    /// kernels' rounding), a Hugging Face folder's weights in f32.
    Exact,
}

impl WeightMode {
    /// The name `--weights` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            WeightMode::Fast => "fast",
            WeightMode::Exact => "exact",
        }
    }
}

impl std::fmt::Display for WeightMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for WeightMode {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fast" => Ok(WeightMode::Fast),
            "exact" => Ok(WeightMode::Exact),
            other => Err(EngineError::InvalidWeightMode(other.to_string())),
        }
    }
}

/// What a model file says about the model beyond its weights (the [`ModelInfo`] fields a
/// decoder's shape does not give).
struct FileFacts {
    architecture: String,
    bos_token_id: Option<u32>,
    eos_token_ids: Vec<u32>,
    chat_template: Option<String>,
    name: String,
}

/// A loaded model (weights on the CPU). `Send + Sync`: one model can serve many requests, each with
/// its own [`KvCache`].
pub struct Model {
    info: ModelInfo,
    transformer: Transformer,
    /// Distinguishes this model's caches from other models' caches.
    id: u64,
}

static NEXT_MODEL_ID: AtomicU64 = AtomicU64::new(1);

const END_TOKENS: [&str; 4] = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"];

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Model {
    /// Loads a `llama` or `qwen2` GGUF file, or a Hugging Face model folder, onto the CPU
    /// (default [`LoadOptions`]).
    pub fn load(path: &Path) -> Result<Model, EngineError> {
        Self::load_with_options(path, &LoadOptions::default())
    }

    /// Loads a `llama` or `qwen2` GGUF file, or a Hugging Face model folder (a directory:
    /// [`hf_folder`]), onto the CPU.
    pub fn load_with_options(path: &Path, options: &LoadOptions) -> Result<Model, EngineError> {
        if path.is_dir() {
            return Ok(Self::from_hf_folder(path, options)?.0);
        }
        let mut gguf = GgufFile::open(path)?;
        Self::from_gguf(&mut gguf, options)
    }

    /// Loads the model and the tokenizer. A GGUF file: `tokenizer.json` beside the file if
    /// present, else the one described by the GGUF metadata. A Hugging Face folder: its
    /// `tokenizer.json`.
    pub fn load_with_tokenizer(path: &Path) -> Result<(Model, Tokenizer), EngineError> {
        Self::load_with_tokenizer_options(path, &LoadOptions::default())
    }

    /// [`Model::load_with_tokenizer`] with non-default [`LoadOptions`].
    pub fn load_with_tokenizer_options(
        path: &Path,
        options: &LoadOptions,
    ) -> Result<(Model, Tokenizer), EngineError> {
        if path.is_dir() {
            return Self::from_hf_folder(path, options);
        }
        let mut gguf = GgufFile::open(path)?;
        let model = Self::from_gguf(&mut gguf, options)?;
        let tokenizer = match Tokenizer::beside_gguf(path) {
            Some(json) => Tokenizer::from_tokenizer_json(&json)?,
            None => Tokenizer::from_gguf(&gguf)?,
        };
        Ok((model, tokenizer))
    }

    fn from_gguf(gguf: &mut GgufFile, options: &LoadOptions) -> Result<Model, EngineError> {
        let dense_bytes = gguf.total_elements().saturating_mul(4);
        let weights = WeightOptions {
            requantize: options.requantize_slow_types,
            requantize_all: options.requantize_all_to_q8_0,
            dense: dense_bytes <= options.dense_weights_max_bytes,
            dense_for_own_kernels: options.dense_for_own_kernels,
            pad_q8_0: options.pad_q8_0_for_repack,
            lm_head_rows: options.lm_head_rows,
            // GGUF float weights keep their behaviour (f32 matmuls).
            quantize_float: false,
        };
        let transformer = Transformer::load(gguf, weights)?;
        let id32 = |key: &str| gguf.opt_u64(key).and_then(|v| u32::try_from(v).ok());
        let mut eos_token_ids: Vec<u32> = id32("tokenizer.ggml.eos_token_id").into_iter().collect();
        if let Ok(tokens) = gguf.string_array("tokenizer.ggml.tokens") {
            for (i, t) in tokens.iter().enumerate() {
                if END_TOKENS.contains(t) {
                    let id = i as u32;
                    if !eos_token_ids.contains(&id) {
                        eos_token_ids.push(id);
                    }
                }
            }
        }
        let facts = FileFacts {
            architecture: gguf.str("general.architecture")?.to_string(),
            bos_token_id: id32("tokenizer.ggml.bos_token_id"),
            eos_token_ids,
            chat_template: gguf.opt_str("tokenizer.chat_template").map(str::to_string),
            name: gguf
                .opt_str("general.name")
                .map(str::to_string)
                .unwrap_or_else(|| file_stem(gguf.path())),
        };
        Ok(Self::assemble(transformer, options, facts))
    }

    /// The model of a built decoder and what its file says about it.
    fn assemble(transformer: Transformer, options: &LoadOptions, facts: FileFacts) -> Model {
        let cfg = &transformer.config;
        let info = ModelInfo {
            architecture: facts.architecture,
            n_layers: cfg.n_layers,
            vocab_size: cfg.vocab_size,
            head_rows: options
                .lm_head_rows
                .map_or(cfg.vocab_size, |rows| rows.min(cfg.vocab_size)),
            context_length: cfg.context_length,
            bos_token_id: facts.bos_token_id,
            eos_token_ids: facts.eos_token_ids,
            chat_template: facts.chat_template,
            name: facts.name,
            hidden_size: cfg.hidden_size,
            n_heads: cfg.dims.n_heads,
            n_kv_heads: cfg.dims.n_kv_heads,
            head_dim: cfg.dims.head_dim,
            kv_bytes_per_token: 2 * cfg.kv_dim() * cfg.n_layers * std::mem::size_of::<f32>(),
        };
        Model {
            info,
            transformer,
            id: NEXT_MODEL_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Loads a Hugging Face model folder and its tokenizer (whose vocabulary gives the end
    /// tokens, as a GGUF file's does).
    fn from_hf_folder(
        dir: &Path,
        options: &LoadOptions,
    ) -> Result<(Model, Tokenizer), EngineError> {
        let meta = hf_folder::FolderMeta::read(dir)?;
        let tokenizer = hf_folder::tokenizer(dir, &meta)?;
        let mut source = hf_folder::HfWeights::open(dir, &meta)?;
        let dense_bytes = source.total_elements().saturating_mul(4);
        let weights = WeightOptions {
            requantize: options.requantize_slow_types,
            requantize_all: options.requantize_all_to_q8_0,
            // Unquantized projections are f32 already: a second f32 copy would change nothing.
            dense: options.quantize_float_weights && dense_bytes <= options.dense_weights_max_bytes,
            dense_for_own_kernels: options.dense_for_own_kernels,
            pad_q8_0: options.pad_q8_0_for_repack,
            lm_head_rows: options.lm_head_rows,
            quantize_float: options.quantize_float_weights,
        };
        let transformer = Transformer::build(&meta.hyper, &mut source, weights)?;
        drop(source);
        let cfg = &transformer.config;
        if let Some(v) = meta.vocab_size.filter(|&v| v != cfg.vocab_size) {
            return Err(EngineError::InvalidHfFile {
                path: dir.join(hf_folder::CONFIG_FILE),
                message: format!(
                    "`vocab_size` {v} differs from the {} rows of model.embed_tokens.weight",
                    cfg.vocab_size
                ),
            });
        }
        let mut eos_token_ids = meta.eos_token_ids.clone();
        // In vocabulary order, as for a GGUF file.
        let mut end_ids: Vec<u32> = END_TOKENS
            .iter()
            .filter_map(|t| tokenizer.token_id(t))
            .collect();
        end_ids.sort_unstable();
        for id in end_ids {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
        // `models/x/.` or `.` has no last component of its own: the resolved path has.
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .or_else(|| {
                let resolved = dir.canonicalize().ok()?;
                Some(resolved.file_name()?.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "model".to_string());
        let facts = FileFacts {
            architecture: meta.architecture.to_string(),
            bos_token_id: meta.bos_token_id,
            eos_token_ids,
            chat_template: meta.chat_template.clone(),
            name,
        };
        Ok((Self::assemble(transformer, options, facts), tokenizer))
    }

    /// Runs throwaway forwards of 1, 2 and 32 quantized rows so that candle builds the weight
    /// layouts it otherwise builds lazily, inside the first requests' steps: its int8 kernels
    /// repack each weight on first use, once for matmuls of up to 31 rows (Q6_K only from 2 rows
    /// on) and once more, AMX tiles, for Q4_K matmuls of 32 rows or more. Measured on the
    /// Qwen2.5-Coder-1.5B target: the first prefill took 5.3 s instead of ~0.7 s and the first
    /// decode step 2.2 s instead of ~0.13 s. Caches are left untouched.
    pub fn warm_up(&self) -> Result<(), EngineError> {
        let mut cache = self.new_cache();
        let mut used = 0;
        // The first forward has one row, so the cache's positions never take the f32 copy
        // (`llama::DENSE_MIN_ROWS`) and every later row is quantized.
        for rows in [1usize, 2, 32] {
            if used + rows > self.info.context_length {
                break;
            }
            let tokens = vec![0u32; rows];
            self.forward_batch(&mut [SeqForward {
                tokens: &tokens,
                cache: &mut cache,
            }])?;
            used += rows;
        }
        Ok(())
    }

    /// Facts about the model.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// An empty cache covering all layers.
    pub fn new_cache(&self) -> KvCache {
        self.new_cache_layers(self.info.n_layers)
    }

    /// An empty cache covering the first `n_layers` layers (for `forward_batch_layers`), clamped to
    /// the model's layer count.
    pub fn new_cache_layers(&self, n_layers: usize) -> KvCache {
        KvCache::new(
            n_layers.min(self.info.n_layers),
            self.transformer.config.kv_dim(),
            self.id,
        )
    }

    /// For each sequence, runs its `tokens` after its cache's contents, appends their K/V, and returns
    /// logits for every new position: one f32 CPU tensor `[tokens.len(), vocab]` per sequence.
    /// All sequences go through the linear layers as one stacked matrix. On error every cache is left
    /// as it was.
    pub fn forward_batch(&self, seqs: &mut [SeqForward<'_>]) -> Result<Vec<Tensor>, EngineError> {
        self.forward_batch_layers(seqs, self.info.n_layers)
    }

    /// Like [`Model::forward_batch`] but through only the first `n_layers` decoder layers, then the
    /// final norm and LM head (the self-speculative draft `self:N`). Each cache must cover exactly
    /// `n_layers` layers.
    pub fn forward_batch_layers(
        &self,
        seqs: &mut [SeqForward<'_>],
        n_layers: usize,
    ) -> Result<Vec<Tensor>, EngineError> {
        let all_rows: Vec<usize> = seqs.iter().map(|s| s.tokens.len()).collect();
        self.forward_batch_tails(seqs, n_layers, &all_rows)
    }

    /// Like [`Model::forward_batch_layers`] but returns logits only for the last
    /// `logit_rows[i]` positions of sequence `i` (clamped to 1..=its token count): a prefill
    /// reads only its last position's logits, so the LM head skips the others. Each sequence's
    /// K/V is appended for every token, as always.
    pub fn forward_batch_tails(
        &self,
        seqs: &mut [SeqForward<'_>],
        n_layers: usize,
        logit_rows: &[usize],
    ) -> Result<Vec<Tensor>, EngineError> {
        if logit_rows.len() != seqs.len() {
            return Err(EngineError::CacheMismatch(format!(
                "{} logit row counts for {} sequences",
                logit_rows.len(),
                seqs.len()
            )));
        }
        if n_layers == 0 || n_layers > self.info.n_layers {
            return Err(EngineError::InvalidLayerCount {
                requested: n_layers,
                available: self.info.n_layers,
            });
        }
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let total_rows: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        let mut tokens = Vec::with_capacity(total_rows);
        let mut positions = Vec::with_capacity(total_rows);
        for (index, seq) in seqs.iter().enumerate() {
            self.validate(index, seq, n_layers)?;
            tokens.extend_from_slice(seq.tokens);
            positions.extend(seq.cache.len()..seq.cache.len() + seq.tokens.len());
        }
        let mut row_offset = 0;
        let mut rows: Vec<SeqRows<'_>> = seqs
            .iter_mut()
            .zip(logit_rows)
            .map(|(s, &logit_rows)| {
                let r = SeqRows {
                    row_offset,
                    n_rows: s.tokens.len(),
                    logit_rows: logit_rows.clamp(1, s.tokens.len()),
                    cache: &mut *s.cache,
                };
                row_offset += s.tokens.len();
                r
            })
            .collect();
        match self
            .transformer
            .forward_rows(&tokens, &positions, &mut rows, n_layers)
        {
            Ok(logits) => {
                let mut out = Vec::with_capacity(rows.len());
                let mut logit_offset = 0;
                for seq in rows.iter_mut() {
                    seq.cache.len_tokens += seq.n_rows;
                    out.push(logits.narrow(0, logit_offset, seq.logit_rows)?);
                    logit_offset += seq.logit_rows;
                }
                Ok(out)
            }
            Err(e) => {
                for seq in rows.iter_mut() {
                    let keep = seq.cache.len_tokens * seq.cache.kv_dim;
                    for layer in &mut seq.cache.layers {
                        layer.k.truncate(keep);
                        layer.v.truncate(keep);
                    }
                }
                Err(e)
            }
        }
    }

    fn validate(
        &self,
        index: usize,
        seq: &SeqForward<'_>,
        n_layers: usize,
    ) -> Result<(), EngineError> {
        if seq.tokens.is_empty() {
            return Err(EngineError::EmptySequence { index });
        }
        if seq.cache.model_id != self.id {
            return Err(EngineError::CacheMismatch(format!(
                "cache of sequence {index} was made by another model"
            )));
        }
        if seq.cache.n_layers() != n_layers {
            return Err(EngineError::CacheMismatch(format!(
                "cache of sequence {index} covers {} layers, the forward runs {n_layers}",
                seq.cache.n_layers()
            )));
        }
        let vocab_size = self.info.vocab_size;
        if let Some(&token_id) = seq.tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(EngineError::TokenOutOfRange {
                token_id,
                vocab_size,
            });
        }
        if seq.cache.len() + seq.tokens.len() > self.info.context_length {
            return Err(EngineError::ContextOverflow {
                cached_tokens: seq.cache.len(),
                new_tokens: seq.tokens.len(),
                context_length: self.info.context_length,
            });
        }
        Ok(())
    }
}
