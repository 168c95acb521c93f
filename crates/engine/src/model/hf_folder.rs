//! Hugging Face model folders: `config.json`, `tokenizer.json` and `*.safetensors` (f32, f16 or
//! bf16 tensors, one file or shards), plus, when present, `generation_config.json` (end tokens)
//! and the chat template (`chat_template.jinja`, else `tokenizer_config.json`). Architectures
//! `LlamaForCausalLM` and `Qwen2ForCausalLM`.
//!
//! The folder's tensors are handed to the decoder under the GGUF names it is built from
//! (`llama::WeightSource`), and llama's Q/K rows are permuted into llama.cpp's RoPE layout on the
//! way, so a folder and a GGUF file of the same weights run one and the same forward pass.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::safetensors::BufferedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::attention::HeadDims;
use super::llama::{Arch, Hyper, WeightSource};
use crate::error::EngineError;
use crate::tokenizer::Tokenizer;

/// The model's hyper-parameters and architecture.
pub const CONFIG_FILE: &str = "config.json";
/// Generation defaults; the loader reads its BOS/EOS ids.
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// The tokenizer (the `tokenizers` library's format).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Tokenizer settings: `chat_template`, `add_bos_token`, `bos_token`.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// The chat template as a file of its own (newer `transformers` write it there instead of
/// `tokenizer_config.json`).
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// A parsed JSON object and the file it came from (errors name both the file and the key).
struct JsonFile {
    path: PathBuf,
    value: Value,
}

impl JsonFile {
    fn read(path: PathBuf) -> Result<Self, EngineError> {
        let text = std::fs::read_to_string(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                EngineError::MissingHfFile(path.clone())
            } else {
                EngineError::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let value: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                return Err(EngineError::InvalidHfFile {
                    path,
                    message: format!("not valid JSON: {e}"),
                })
            }
        };
        if !value.is_object() {
            return Err(EngineError::InvalidHfFile {
                path,
                message: "not a JSON object".to_string(),
            });
        }
        Ok(Self { path, value })
    }

    /// Reads `path` when the file exists (the folder's optional files).
    fn read_optional(path: PathBuf) -> Result<Option<Self>, EngineError> {
        if path.is_file() {
            Self::read(path).map(Some)
        } else {
            Ok(None)
        }
    }

    fn invalid(&self, message: String) -> EngineError {
        EngineError::InvalidHfFile {
            path: self.path.clone(),
            message,
        }
    }

    /// The value under `key`; JSON `null` counts as absent (`transformers` writes unset
    /// options as null).
    fn get(&self, key: &str) -> Option<&Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str) -> Result<usize, EngineError> {
        self.opt_usize(key)?
            .ok_or_else(|| self.invalid(format!("missing key `{key}`")))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, EngineError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| self.invalid(format!("`{key}` must be a non-negative integer, got {v}")))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, EngineError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_f64()
            .map(Some)
            .ok_or_else(|| self.invalid(format!("`{key}` must be a number, got {v}")))
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, EngineError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_bool()
            .map(Some)
            .ok_or_else(|| self.invalid(format!("`{key}` must be true or false, got {v}")))
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>, EngineError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        v.as_str()
            .map(Some)
            .ok_or_else(|| self.invalid(format!("`{key}` must be a string, got {v}")))
    }

    /// A token id or a list of them (`eos_token_id` is either); empty when absent.
    fn token_ids(&self, key: &str) -> Result<Vec<u32>, EngineError> {
        let bad = |v: &Value| {
            self.invalid(format!(
                "`{key}` must be a token id or a list of token ids, got {v}"
            ))
        };
        let id = |v: &Value| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| bad(v))
        };
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(&id).collect(),
            Some(v) => Ok(vec![id(v)?]),
        }
    }
}

/// What a folder's JSON files say about the model (no weights read).
#[derive(Debug, Clone)]
pub(crate) struct FolderMeta {
    pub(crate) hyper: Hyper,
    /// `general.architecture`'s spelling of the architecture (`llama`, `qwen2`), as
    /// `ModelInfo::architecture` reports it for GGUF files too.
    pub(crate) architecture: &'static str,
    /// The LM head is the token embedding (`tie_word_embeddings`; no `lm_head.weight` read).
    pub(crate) tie_word_embeddings: bool,
    /// `vocab_size` of config.json, checked against the embedding's rows.
    pub(crate) vocab_size: Option<usize>,
    /// `bos_token_id`: generation_config.json's, else config.json's.
    pub(crate) bos_token_id: Option<u32>,
    /// `eos_token_id` (a list or one id): generation_config.json's, else config.json's.
    pub(crate) eos_token_ids: Vec<u32>,
    pub(crate) chat_template: Option<String>,
    /// tokenizer_config.json's `add_bos_token` (used only when tokenizer.json has no post
    /// processor, which otherwise decides).
    add_bos_token: bool,
    /// tokenizer_config.json's `bos_token` text.
    bos_token: Option<String>,
}

/// The architecture named by config.json: `architectures[0]`, else `model_type`.
fn architecture(config: &JsonFile) -> Result<(Arch, &'static str), EngineError> {
    let named = match config.get("architectures") {
        Some(Value::Array(names)) => match names.first() {
            Some(Value::String(name)) => Some(name.clone()),
            Some(other) => {
                return Err(config.invalid(format!(
                    "`architectures` must list class names, got {other}"
                )))
            }
            None => None,
        },
        Some(other) => {
            return Err(config.invalid(format!("`architectures` must be a list, got {other}")))
        }
        None => None,
    };
    let name = match named {
        Some(name) => name,
        None => config
            .opt_str("model_type")?
            .ok_or_else(|| config.invalid("missing key `architectures` (or `model_type`)".into()))?
            .to_string(),
    };
    match name.as_str() {
        "LlamaForCausalLM" | "llama" => Ok((Arch::Llama, "llama")),
        "Qwen2ForCausalLM" | "qwen2" => Ok((Arch::Qwen2, "qwen2")),
        _ => Err(EngineError::UnsupportedArchitecture(name)),
    }
}

impl FolderMeta {
    /// Reads config.json and the optional generation_config.json, tokenizer_config.json and
    /// chat_template.jinja of `dir`.
    pub(crate) fn read(dir: &Path) -> Result<Self, EngineError> {
        let config = JsonFile::read(dir.join(CONFIG_FILE))?;
        let (arch, architecture) = architecture(&config)?;
        let hidden_size = config.usize("hidden_size")?;
        let n_layers = config.usize("num_hidden_layers")?;
        let n_heads = config.usize("num_attention_heads")?;
        let n_kv_heads = config.opt_usize("num_key_value_heads")?.unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(config.invalid(format!(
                "`num_attention_heads` {n_heads} is not a positive multiple of `num_key_value_heads` {n_kv_heads}"
            )));
        }
        let head_dim = match config.opt_usize("head_dim")? {
            Some(d) => d,
            None if hidden_size % n_heads == 0 => hidden_size / n_heads,
            None => {
                return Err(config.invalid(format!(
                    "`hidden_size` {hidden_size} is not a multiple of `num_attention_heads` {n_heads} (and there is no `head_dim`)"
                )))
            }
        };
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(config.invalid(format!(
                "head dimension {head_dim} must be even for rotary embeddings"
            )));
        }
        // Settings the decoder does not implement: refused by name rather than run wrongly.
        if let Some(v) = config.get("rope_scaling") {
            let kind = v.get("rope_type").or_else(|| v.get("type"));
            if kind.and_then(Value::as_str) != Some("default") {
                return Err(config.invalid(format!("`rope_scaling` {v} is not supported")));
            }
        }
        if let Some(f) = config.opt_f64("partial_rotary_factor")? {
            if f != 1.0 {
                return Err(config.invalid(format!(
                    "`partial_rotary_factor` {f} is not supported (only 1)"
                )));
            }
        }
        if let Some(act) = config.opt_str("hidden_act")? {
            if act != "silu" {
                return Err(config.invalid(format!(
                    "`hidden_act` \"{act}\" is not supported (only \"silu\")"
                )));
            }
        }
        if config.opt_bool("mlp_bias")? == Some(true) {
            return Err(config.invalid("`mlp_bias` true is not supported".into()));
        }
        if config.opt_bool("use_sliding_window")? == Some(true) {
            return Err(config.invalid("`use_sliding_window` true is not supported".into()));
        }
        let hyper = Hyper {
            arch,
            hidden_size,
            n_layers,
            dims: HeadDims {
                n_heads,
                n_kv_heads,
                head_dim,
            },
            rot_dim: head_dim,
            // transformers' defaults for LlamaConfig and Qwen2Config.
            rope_base: config.opt_f64("rope_theta")?.unwrap_or(10_000.0),
            rms_eps: config.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            context_length: config.usize("max_position_embeddings")?,
        };
        // LlamaConfig and Qwen2Config default to untied embeddings.
        let tie_word_embeddings = config.opt_bool("tie_word_embeddings")?.unwrap_or(false);
        let vocab_size = config.opt_usize("vocab_size")?;

        let generation = JsonFile::read_optional(dir.join(GENERATION_CONFIG_FILE))?;
        let mut bos_token_id = None;
        let mut eos_token_ids = Vec::new();
        for file in generation.iter().chain(std::iter::once(&config)) {
            if bos_token_id.is_none() {
                bos_token_id = file.token_ids("bos_token_id")?.first().copied();
            }
            if eos_token_ids.is_empty() {
                eos_token_ids = file.token_ids("eos_token_id")?;
            }
        }
        let mut seen = Vec::with_capacity(eos_token_ids.len());
        eos_token_ids.retain(|id| {
            let first = !seen.contains(id);
            seen.push(*id);
            first
        });

        let tokenizer_config = JsonFile::read_optional(dir.join(TOKENIZER_CONFIG_FILE))?;
        let template_file = dir.join(CHAT_TEMPLATE_FILE);
        let chat_template = if template_file.is_file() {
            Some(
                std::fs::read_to_string(&template_file).map_err(|source| EngineError::Io {
                    path: template_file.clone(),
                    source,
                })?,
            )
        } else {
            match &tokenizer_config {
                Some(tc) => chat_template(tc)?,
                None => None,
            }
        };
        let (add_bos_token, bos_token) = match &tokenizer_config {
            Some(tc) => (
                tc.opt_bool("add_bos_token")?.unwrap_or(false),
                token_text(tc, "bos_token")?,
            ),
            None => (false, None),
        };
        Ok(Self {
            hyper,
            architecture,
            tie_word_embeddings,
            vocab_size,
            bos_token_id,
            eos_token_ids,
            chat_template,
            add_bos_token,
            bos_token,
        })
    }
}

/// tokenizer_config.json's `chat_template`: one template, or a list of named ones
/// (`[{"name": "default", "template": ...}, {"name": "tool_use", ...}]`), of which the one named
/// `default` (else the first) is the chat template.
fn chat_template(tc: &JsonFile) -> Result<Option<String>, EngineError> {
    match tc.get("chat_template") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(named)) => {
            let pick = named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| named.first());
            match pick.map(|t| t.get("template").and_then(Value::as_str)) {
                None => Ok(None),
                Some(Some(template)) => Ok(Some(template.to_string())),
                Some(None) => Err(
                    tc.invalid("`chat_template` entries must have a string `template`".to_string())
                ),
            }
        }
        Some(other) => Err(tc.invalid(format!(
            "`chat_template` must be a string or a list of named templates, got {other}"
        ))),
    }
}

/// A special token's text in tokenizer_config.json: a string, or an object with `content`.
fn token_text(tc: &JsonFile, key: &str) -> Result<Option<String>, EngineError> {
    match tc.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => match v.get("content").and_then(Value::as_str) {
            Some(s) => Ok(Some(s.to_string())),
            None => Err(tc.invalid(format!(
                "`{key}` must be a string or an object with `content`, got {v}"
            ))),
        },
    }
}

/// The folder's tokenizer.json. A tokenizer.json adds its own BOS through its post processor;
/// one without a post processor gets the BOS token prepended when tokenizer_config.json sets
/// `add_bos_token`.
pub(crate) fn tokenizer(dir: &Path, meta: &FolderMeta) -> Result<Tokenizer, EngineError> {
    let path = dir.join(TOKENIZER_FILE);
    if !path.is_file() {
        return Err(EngineError::MissingHfFile(path));
    }
    let tokenizer = Tokenizer::from_tokenizer_json(&path)?;
    if !meta.add_bos_token || tokenizer.inner().get_post_processor().is_some() {
        return Ok(tokenizer);
    }
    let bos = meta
        .bos_token
        .as_deref()
        .and_then(|t| tokenizer.token_id(t))
        .or(meta.bos_token_id);
    Ok(tokenizer.with_bos_to_add(bos))
}

/// The tokenizer of the folder `dir` (what [`Tokenizer::for_model_path`] loads for a folder).
pub(crate) fn load_tokenizer(dir: &Path) -> Result<Tokenizer, EngineError> {
    tokenizer(dir, &FolderMeta::read(dir)?)
}

/// The folder's safetensors files, read into memory (parsed lazily, tensor by tensor), and
/// which file holds each tensor.
pub(crate) struct HfWeights {
    dir: PathBuf,
    arch: Arch,
    dims: HeadDims,
    tie_word_embeddings: bool,
    files: Vec<(PathBuf, BufferedSafetensors)>,
    /// Tensor name -> index into `files`.
    index: HashMap<String, usize>,
    total_elements: u64,
}

impl HfWeights {
    /// Reads every `*.safetensors` file of `dir` (a single file or the shards of a larger
    /// model). Files are read rather than memory-mapped: mapping is `unsafe` (the file could
    /// change underneath) and the crate has no unsafe code; the bytes are freed after loading.
    pub(crate) fn open(dir: &Path, meta: &FolderMeta) -> Result<Self, EngineError> {
        let entries = std::fs::read_dir(dir).map_err(|source| EngineError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| EngineError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "safetensors") && path.is_file() {
                paths.push(path);
            }
        }
        if paths.is_empty() {
            return Err(EngineError::MissingHfFile(dir.join("*.safetensors")));
        }
        paths.sort();
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        let mut total_elements = 0u64;
        for (i, path) in paths.into_iter().enumerate() {
            let bytes = std::fs::read(&path).map_err(|source| EngineError::Io {
                path: path.clone(),
                source,
            })?;
            let file = match BufferedSafetensors::new(bytes) {
                Ok(f) => f,
                Err(e) => {
                    return Err(EngineError::InvalidHfFile {
                        path,
                        message: format!("not a safetensors file: {e}"),
                    })
                }
            };
            for (name, view) in file.tensors() {
                total_elements += view.shape().iter().product::<usize>() as u64;
                index.insert(name, i);
            }
            files.push((path, file));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            arch: meta.hyper.arch,
            dims: meta.hyper.dims,
            tie_word_embeddings: meta.tie_word_embeddings,
            files,
            index,
            total_elements,
        })
    }

    /// Elements in all tensors of the folder (the model's parameter count).
    pub(crate) fn total_elements(&self) -> u64 {
        self.total_elements
    }

    /// Tensor `name` (the folder's own name) as f32.
    fn load_f32(&self, name: &str) -> Result<Tensor, EngineError> {
        let missing = || EngineError::MissingHfTensor {
            dir: self.dir.clone(),
            name: name.to_string(),
        };
        let &file = self.index.get(name).ok_or_else(missing)?;
        let (path, st) = &self.files[file];
        let invalid = |message: String| EngineError::InvalidHfFile {
            path: path.clone(),
            message,
        };
        let t = st
            .load(name, &Device::Cpu)
            .map_err(|e| invalid(format!("tensor `{name}`: {e}")))?;
        match t.dtype() {
            DType::F32 => Ok(t),
            DType::F16 | DType::BF16 => Ok(t.to_dtype(DType::F32)?),
            other => Err(invalid(format!(
                "tensor `{name}` has dtype {other:?} (supported: F32, F16, BF16)"
            ))),
        }
    }
}

/// The folder's name of the decoder's (GGUF-named) tensor `name`, if it has one.
fn hf_tensor_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(fixed) = fixed {
        return Some(fixed.to_string());
    }
    let (layer, rest) = name.strip_prefix("blk.")?.split_once('.')?;
    let (part, kind) = rest.rsplit_once('.')?;
    let hf_part = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_part}.{kind}"))
}

/// Reorders the rows of each head of a Q or K projection (weight `[n_heads * head_dim, in]` or
/// bias `[n_heads * head_dim]`) from the Hugging Face llama layout, where RoPE rotates row `i`
/// of a head with row `i + head_dim/2`, to llama.cpp's, where the rotated pairs are adjacent
/// (rows `2i`, `2i + 1`; `RopeLayout::Interleaved`): row `j * head_dim/2 + i` of a head moves
/// to row `2i + j`, the permutation llama.cpp's converter applies when it writes a GGUF file.
fn halves_to_interleaved(
    t: &Tensor,
    n_heads: usize,
    head_dim: usize,
) -> Result<Tensor, EngineError> {
    let dims = t.dims().to_vec();
    let rows = dims.first().copied().unwrap_or(0);
    if rows != n_heads * head_dim || !head_dim.is_multiple_of(2) {
        return Err(EngineError::InvalidModel(format!(
            "a Q/K projection of shape {dims:?} does not hold {n_heads} heads of {head_dim} rows"
        )));
    }
    let cols: usize = dims[1..].iter().product();
    Ok(t.reshape((n_heads, 2, head_dim / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?)
}

impl WeightSource for HfWeights {
    fn has_tensor(&self, name: &str) -> bool {
        // An untied head is required: answering yes makes a missing lm_head.weight an error
        // naming it, instead of a silent fall-back to the embedding.
        if name == "output.weight" {
            return !self.tie_word_embeddings;
        }
        hf_tensor_name(name).is_some_and(|n| self.index.contains_key(&n))
    }

    fn tensor(&mut self, name: &str) -> Result<QTensor, EngineError> {
        let hf_name = hf_tensor_name(name).ok_or_else(|| EngineError::MissingHfTensor {
            dir: self.dir.clone(),
            name: name.to_string(),
        })?;
        let mut t = self.load_f32(&hf_name)?;
        if self.arch == Arch::Llama {
            let heads = if name.ends_with(".attn_q.weight") || name.ends_with(".attn_q.bias") {
                Some(self.dims.n_heads)
            } else if name.ends_with(".attn_k.weight") || name.ends_with(".attn_k.bias") {
                Some(self.dims.n_kv_heads)
            } else {
                None
            };
            if let Some(heads) = heads {
                t = halves_to_interleaved(&t, heads, self.dims.head_dim)?;
            }
        }
        // An F32 QTensor holds the values as they are; `projection` quantizes it or not.
        Ok(QTensor::quantize(&t, GgmlDType::F32)?)
    }

    fn source_name(&self, name: &str) -> String {
        hf_tensor_name(name).unwrap_or_else(|| name.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_names_map_onto_the_folder_layout() {
        assert_eq!(
            hf_tensor_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(
            hf_tensor_name("blk.12.attn_output.weight").as_deref(),
            Some("model.layers.12.self_attn.o_proj.weight")
        );
        assert_eq!(
            hf_tensor_name("blk.0.attn_k.bias").as_deref(),
            Some("model.layers.0.self_attn.k_proj.bias")
        );
        assert_eq!(
            hf_tensor_name("blk.3.ffn_norm.weight").as_deref(),
            Some("model.layers.3.post_attention_layernorm.weight")
        );
        assert_eq!(hf_tensor_name("rope_freqs.weight"), None);
        assert_eq!(hf_tensor_name("blk.1.unknown.weight"), None);
    }

    #[test]
    fn the_permutation_pairs_row_i_with_row_i_plus_half() {
        // One head of 4 rows, one column holding the row number: rows (0, 2) and (1, 3) are the
        // rotated pairs of the halves layout and must end up adjacent.
        let t = Tensor::new(&[[0f32], [1.], [2.], [3.]], &Device::Cpu).expect("tensor");
        let p = halves_to_interleaved(&t, 1, 4).expect("permutes");
        let rows: Vec<f32> = p.flatten_all().expect("flat").to_vec1().expect("vec");
        assert_eq!(rows, vec![0., 2., 1., 3.]);
        // Two heads of a bias: each head is permuted on its own.
        let b = Tensor::new(&[0f32, 1., 2., 3., 4., 5., 6., 7.], &Device::Cpu).expect("bias");
        let p = halves_to_interleaved(&b, 2, 4).expect("permutes");
        assert_eq!(
            p.to_vec1::<f32>().expect("vec"),
            vec![0., 2., 1., 3., 4., 6., 5., 7.]
        );
        assert!(halves_to_interleaved(&b, 3, 4).is_err());
    }
}
