//! The llama-family decoder (architectures `llama` and `qwen2`; qwen2 is llama plus Q/K/V biases and
//! the "halves" RoPE layout) over quantized GGUF weights, or a Hugging Face folder's float weights
//! mapped onto the same layout ([`WeightSource`]). Field names follow the GGUF tensor names.
//! Linear layers run once over the rows of every sequence of a batch stacked together; attention runs
//! per sequence against that sequence's own KV cache (see `attention.rs`).
use std::sync::Arc;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor, D};

use super::attention::{attend_all, HeadDims, Rope, RopeLayout, SeqAttention};
use super::kv_cache::KvCache;
use super::qgemv::{gemv, QuantWeights};
use crate::error::EngineError;
use crate::gguf::GgufFile;

/// The architectures this file implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arch {
    Llama,
    Qwen2,
}

impl Arch {
    pub(crate) fn parse(name: &str) -> Result<Self, EngineError> {
        match name {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            other => Err(EngineError::UnsupportedArchitecture(other.to_string())),
        }
    }
}

/// Hyper-parameters read from the GGUF metadata (`<arch>.*` keys) and tensor shapes.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) hidden_size: usize,
    pub(crate) n_layers: usize,
    pub(crate) dims: HeadDims,
    pub(crate) rms_eps: f32,
    pub(crate) context_length: usize,
    pub(crate) vocab_size: usize,
}

impl Config {
    /// Floats per position per layer in K (and in V).
    pub(crate) fn kv_dim(&self) -> usize {
        self.dims.n_kv_heads * self.dims.head_dim
    }
}

/// A bias vector added to the rows of a projection's output (qwen2's attn_q/k/v.bias).
type Bias = Option<Vec<f32>>;

struct Layer {
    attn_norm: Vec<f32>,
    attn_q: Projection,
    attn_k: Projection,
    attn_v: Projection,
    attn_q_bias: Bias,
    attn_k_bias: Bias,
    attn_v_bias: Bias,
    attn_output: Projection,
    ffn_norm: Vec<f32>,
    ffn_gate: Projection,
    ffn_up: Projection,
    ffn_down: Projection,
}

/// The loaded decoder.
pub(crate) struct Transformer {
    pub(crate) config: Config,
    token_embd: Arc<QTensor>,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    output: Projection,
    rope: Rope,
}

/// One sequence of a batched forward, after validation.
pub(crate) struct SeqRows<'a> {
    /// First row of this sequence in the stacked batch.
    pub(crate) row_offset: usize,
    /// Number of new tokens (rows).
    pub(crate) n_rows: usize,
    /// How many of its last rows need logits (1 to `n_rows`; 1 for a prefill, whose last row
    /// alone is read): the LM head runs on those rows only.
    pub(crate) logit_rows: usize,
    pub(crate) cache: &'a mut KvCache,
}

/// Quantized types that neither this crate's kernels (`super::qgemv`: Q8_0, Q4_1) nor a SIMD path
/// of candle 0.11 serve (candle's `vec_dot_unopt`): a decode step on them is several times slower
/// than on Q8_0 (measured: Q5_0, which llama.cpp's Q4_K_M uses for Qwen2.5-0.5B's 896-wide rows,
/// took 24% of a speculative-decoding run with that model as the draft).
pub(crate) fn is_slow_on_cpu(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q8_1)
}

/// A projection weight `[out, in]`, optionally re-quantized to Q8_0 when its own type is slow on
/// the CPU. Q8_0 keeps 8 bits per weight with one scale per 32, so the values of a 4/5-bit block
/// change by about half a Q8_0 step (< 0.5% of the block's largest magnitude, the f16 scale
/// included). A Q8_0 weight whose input width is not a multiple of 256 is padded with zero
/// columns when `opts.pad_q8_0` (see [`q8_0_pad_cols`]); re-quantizing a llama.cpp Q8_0 block
/// gives back the same scale and quants (its largest value sits at +-127 steps), so padding an
/// already-Q8_0 weight changes no value. F32/F16/BF16 weights (a Hugging Face folder's) become
/// Q8_0 the same way when `opts.quantize_float`, and otherwise run as f32 matmuls.
fn projection(t: Arc<QTensor>, opts: WeightOptions) -> Result<Projection, EngineError> {
    let (n_out, n_in) = t.shape().dims2()?;
    // Q8_0 blocks are 32 wide: a float weight of another width stays as it is (f32 matmul).
    let quantize_float = opts.quantize_float
        && is_float(t.dtype())
        && n_in.is_multiple_of(GgmlDType::Q8_0.block_size());
    let requantize = (opts.requantize && is_slow_on_cpu(t.dtype()))
        || (opts.requantize_all && !is_float(t.dtype()) && t.dtype() != GgmlDType::Q8_0)
        || quantize_float;
    let pad_cols = if opts.pad_q8_0 && (requantize || t.dtype() == GgmlDType::Q8_0) {
        q8_0_pad_cols(n_out, n_in)
    } else {
        0
    };
    // The file's values in f32, when re-quantizing needs them (kept for the f32 copy below).
    let mut original_f32 = None;
    let weights = if requantize || pad_cols > 0 {
        let f32_weights = t.dequantize(&Device::Cpu)?;
        let padded = f32_weights.pad_with_zeros(1, 0, pad_cols)?;
        original_f32 = Some(f32_weights);
        Arc::new(QTensor::quantize(&padded, GgmlDType::Q8_0)?)
    } else {
        Arc::clone(&t)
    };
    // Padded weights are for candle's repacked kernel; the others take ours where it applies.
    let own = if pad_cols == 0 {
        QuantWeights::from_qtensor(&weights)?
    } else {
        None
    };
    // The own kernels take a prompt faster than the f32 copy does (SmolLM2-135M, 2 cores:
    // 1.2-1.5x at 64 to 512 rows), so that copy is kept only where candle's kernels serve; and
    // it is not even computed otherwise.
    let dense = if opts.dense && (own.is_none() || opts.dense_for_own_kernels) {
        Some(match original_f32 {
            Some(d) => d,
            None => t.dequantize(&Device::Cpu)?,
        })
    } else {
        None
    };
    let quantized = match own {
        Some(w) => QuantKernel::Own(w),
        None => QuantKernel::Candle(QMatMul::from_arc(weights)?),
    };
    Ok(Projection {
        quantized,
        quantized_pad_cols: pad_cols,
        dense,
    })
}

/// Zero columns to append to a Q8_0 weight of `n_out x n_in` so that candle's repacked int8
/// kernel (AVX-512 VNNI, 16 output rows x 256 inputs per tile) takes it instead of its per-row
/// `vec_dot` path, which it uses when `n_in` is not a multiple of 256: Qwen2.5-0.5B's 896-wide
/// rows (the Qwen pair's draft; padded to 1024, +14% multiply-adds) and SmolLM2-135M's 576-wide
/// ones (to 768, +33%). Zero weights times the zero-padded input add exactly nothing; the kernel
/// itself rounds differently (see `LoadOptions::pad_q8_0_for_repack`). 0 when the kernel would
/// not apply (no AVX-512 VNNI, `n_out` not a multiple of 16) or no padding is needed.
pub(crate) fn q8_0_pad_cols(n_out: usize, n_in: usize) -> usize {
    const REPACK_K: usize = 256;
    const REPACK_N: usize = 16;
    if !cpu_has_avx512_vnni() || n_in == 0 || !n_out.is_multiple_of(REPACK_N) {
        return 0;
    }
    n_in.next_multiple_of(REPACK_K) - n_in
}

fn cpu_has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// How projection weights are kept in memory (from [`crate::LoadOptions`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WeightOptions {
    /// Re-quantize Q5_0/Q5_1/Q8_1 to Q8_0 (see `is_slow_on_cpu`).
    pub(crate) requantize: bool,
    /// Re-quantize every quantized type but Q8_0 to Q8_0.
    pub(crate) requantize_all: bool,
    /// Also keep an f32 copy for many-row inputs (see [`DENSE_MIN_ROWS`]), of the projections
    /// candle's kernels serve (all of them if `dense_for_own_kernels`).
    pub(crate) dense: bool,
    /// Keep the f32 copy for projections this crate's kernels serve too.
    pub(crate) dense_for_own_kernels: bool,
    /// Pad Q8_0 weights to a multiple of 256 inputs (see [`q8_0_pad_cols`]).
    pub(crate) pad_q8_0: bool,
    /// Keep only the LM head's first rows (see `LoadOptions::lm_head_rows`).
    pub(crate) lm_head_rows: Option<usize>,
    /// Quantize F32/F16/BF16 projection weights to Q8_0 (see
    /// `LoadOptions::quantize_float_weights`).
    pub(crate) quantize_float: bool,
}

/// Unquantized weight types: what a Hugging Face folder's weights arrive as.
fn is_float(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// A sequence's first forward of at least this many rows (its prompt) runs those positions
/// through the f32 copy of the weights that keep one (those candle's kernels serve, see
/// `projection`) instead of the quantized ones. Candle's quantized CPU kernel costs about one
/// full pass of integer dot products per row (measured on SmolLM2-135M, 2 cores: ~11.4 ms per row
/// for the whole model), while the f32 GEMM costs a fixed weight read (~100 ms) plus ~3.6 ms per
/// row: the f32 path wins from ~13 rows on. It is used for prompts only: the choice must be a
/// function of the position, not of the batch, or greedy output would depend on what else is
/// batched (the two paths round differently), so decode and verify rows always take the
/// quantized weights.
pub(crate) const DENSE_MIN_ROWS: usize = 16;

/// Which code multiplies a projection's quantized weights.
enum QuantKernel {
    /// Q8_0 and Q4_1: this crate's kernels (`super::qgemv`).
    Own(QuantWeights),
    /// Every other type, and weights padded for candle's repacked kernel.
    Candle(QMatMul),
}

/// A weight matrix `[out, in]`: quantized, plus an optional f32 copy for many-row inputs.
struct Projection {
    quantized: QuantKernel,
    /// Zero columns the quantized weight has beyond the input width (see [`q8_0_pad_cols`]); the
    /// input is padded to match before the quantized matmul.
    quantized_pad_cols: usize,
    dense: Option<Tensor>,
}

/// Which rows of a batched forward take the f32 weights.
enum RowPaths {
    AllQuantized,
    AllDense,
    /// Row indices per path, and the permutation that puts `[dense; quantized]` back in order.
    Mixed {
        dense: Tensor,
        quantized: Tensor,
        restore: Tensor,
    },
}

impl RowPaths {
    fn new(dense_rows: &[bool]) -> Result<Self, EngineError> {
        let n_dense = dense_rows.iter().filter(|&&d| d).count();
        if n_dense == 0 {
            return Ok(Self::AllQuantized);
        }
        if n_dense == dense_rows.len() {
            return Ok(Self::AllDense);
        }
        let pick = |want: bool| -> Vec<u32> {
            (0..dense_rows.len() as u32)
                .filter(|&i| dense_rows[i as usize] == want)
                .collect()
        };
        let (dense, quantized) = (pick(true), pick(false));
        let mut restore = vec![0u32; dense_rows.len()];
        for (slot, &row) in dense.iter().chain(&quantized).enumerate() {
            restore[row as usize] = slot as u32;
        }
        let dev = Device::Cpu;
        Ok(Self::Mixed {
            dense: Tensor::new(dense.as_slice(), &dev)?,
            quantized: Tensor::new(quantized.as_slice(), &dev)?,
            restore: Tensor::new(restore.as_slice(), &dev)?,
        })
    }
}

impl Projection {
    /// `x [rows, in]` -> `[rows, out]`, each row through the weights `paths` gives it.
    fn forward(&self, x: &Tensor, paths: &RowPaths) -> Result<Tensor, EngineError> {
        let Some(w) = &self.dense else {
            return self.forward_quantized(x);
        };
        match paths {
            RowPaths::AllQuantized => self.forward_quantized(x),
            RowPaths::AllDense => Ok(x.matmul(&w.t()?)?),
            RowPaths::Mixed {
                dense,
                quantized,
                restore,
            } => {
                let d = x.index_select(dense, 0)?.matmul(&w.t()?)?;
                let q = self.forward_quantized(&x.index_select(quantized, 0)?)?;
                Ok(Tensor::cat(&[d, q], 0)?.index_select(restore, 0)?)
            }
        }
    }
}

impl Projection {
    /// `x [rows, in]` through the quantized weights. candle picks its CPU kernel by the row count
    /// m, and for Q6_K the kernels round differently: per-row dot products on the compact weights
    /// at m = 1, repacked tiles above. A position's logits would then depend on what it is batched
    /// with, and greedy speculative decoding would drift from target-only decoding (measured on
    /// the Qwen2.5-Coder-1.5B target, whose Q6_K tensors made the two texts part after ~150
    /// tokens). So a single Q6_K row runs as two copies of itself. (Q4_K's AMX tiles, taken from
    /// 32 rows on, agree bit for bit with its other kernel: tested below.)
    fn forward_quantized(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        let matmul = match &self.quantized {
            QuantKernel::Own(w) => {
                let rows = x.dim(0)?;
                let y = gemv(&[w], &to_vec(x)?, rows).remove(0);
                return Ok(Tensor::from_vec(y, (rows, w.n_out()), &Device::Cpu)?);
            }
            QuantKernel::Candle(m) => m,
        };
        let x = if self.quantized_pad_cols == 0 {
            x.clone()
        } else {
            x.pad_with_zeros(D::Minus1, 0, self.quantized_pad_cols)?
        };
        let is_q6k = matches!(matmul, QMatMul::QTensor(t) if t.dtype() == GgmlDType::Q6K);
        if is_q6k && x.dim(0)? == 1 {
            let twice = Tensor::cat(&[&x, &x], 0)?;
            return Ok(matmul.forward(&twice)?.narrow(0, 0, 1)?);
        }
        Ok(matmul.forward(&x)?)
    }

    /// `x` (`rows` rows, row-major) through the weights `paths` gives each row.
    fn forward_rows(
        &self,
        x: &[f32],
        rows: usize,
        paths: &RowPaths,
    ) -> Result<Vec<f32>, EngineError> {
        if let QuantKernel::Own(w) = &self.quantized {
            if self.dense.is_none() || matches!(paths, RowPaths::AllQuantized) {
                return Ok(gemv(&[w], x, rows).remove(0));
            }
        }
        let t = Tensor::from_slice(x, (rows, x.len() / rows.max(1)), &Device::Cpu)?;
        to_vec(&self.forward(&t, paths)?)
    }

    /// `x` through each of `projections` (which share their input width): one quantization of
    /// `x` and one parallel region for all of them when every row takes the quantized weights and
    /// all are served by this crate's kernels; otherwise one after the other. The values are the
    /// same either way (each output is one dot product, computed by the same function).
    fn forward_group(
        projections: &[&Projection],
        x: &[f32],
        rows: usize,
        paths: &RowPaths,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let all_quantized = matches!(paths, RowPaths::AllQuantized)
            || projections.iter().all(|p| p.dense.is_none());
        let own: Vec<&QuantWeights> = projections
            .iter()
            .filter_map(|p| match &p.quantized {
                QuantKernel::Own(w) => Some(w),
                QuantKernel::Candle(_) => None,
            })
            .collect();
        if !all_quantized || own.len() != projections.len() {
            return projections
                .iter()
                .map(|p| p.forward_rows(x, rows, paths))
                .collect();
        }
        Ok(gemv(&own, x, rows))
    }
}

/// The first `rows` rows of a quantized `[n, k]` weight, in its own type and values: a row is a
/// whole number of blocks, so those rows are a prefix of the tensor's bytes.
fn first_rows(t: &QTensor, rows: usize) -> Result<QTensor, EngineError> {
    let (_, n_in) = t.shape().dims2()?;
    let dtype = t.dtype();
    let row_bytes = n_in / dtype.block_size() * dtype.type_size();
    let data = t.data()?;
    Ok(qtensor_from_ggml(
        dtype,
        &data[..rows * row_bytes],
        vec![rows, n_in],
        &Device::Cpu,
    )?)
}

fn dequantize_vec(t: &QTensor) -> Result<Vec<f32>, EngineError> {
    Ok(t.dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

fn add_bias(x: &mut [f32], bias: &Bias) {
    if let Some(b) = bias {
        for row in x.chunks_exact_mut(b.len()) {
            for (v, bv) in row.iter_mut().zip(b) {
                *v += bv;
            }
        }
    }
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>, EngineError> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Where [`Transformer::build`] reads its weights, by their GGUF names (`token_embd.weight`,
/// `blk.N.attn_q.weight`, ...): a GGUF file as it is, or a Hugging Face folder
/// (`super::hf_folder`), which maps the names onto its own and returns its f32/f16/bf16 weights
/// as f32 [`QTensor`]s, so that both sources build the same decoder.
pub(crate) trait WeightSource {
    /// Whether the tensor exists.
    fn has_tensor(&self, name: &str) -> bool;
    /// The tensor on the CPU, `[rows, columns]` for matrices.
    fn tensor(&mut self, name: &str) -> Result<QTensor, EngineError>;
    /// What the source itself calls the tensor, for error messages.
    fn source_name(&self, name: &str) -> String {
        name.to_string()
    }
}

impl WeightSource for GgufFile {
    fn has_tensor(&self, name: &str) -> bool {
        GgufFile::has_tensor(self, name)
    }

    fn tensor(&mut self, name: &str) -> Result<QTensor, EngineError> {
        GgufFile::tensor(self, name, &Device::Cpu)
    }
}

/// The hyper-parameters the decoder is built from, read from a GGUF file's metadata or a
/// Hugging Face `config.json`.
#[derive(Debug, Clone)]
pub(crate) struct Hyper {
    pub(crate) arch: Arch,
    pub(crate) hidden_size: usize,
    pub(crate) n_layers: usize,
    pub(crate) dims: HeadDims,
    /// Leading dimensions of each head that RoPE rotates.
    pub(crate) rot_dim: usize,
    pub(crate) rope_base: f64,
    pub(crate) rms_eps: f32,
    pub(crate) context_length: usize,
}

/// Fails unless `t` has exactly the dimensions `want` (a wrong-sized weight would otherwise
/// only fail, or silently misbehave, inside the first forward).
fn check_dims(name: &str, t: &QTensor, want: &[usize]) -> Result<(), EngineError> {
    let got = t.shape().dims();
    if got != want {
        return Err(EngineError::InvalidModel(format!(
            "tensor `{name}` has shape {got:?}, the configuration implies {want:?}"
        )));
    }
    Ok(())
}

impl Transformer {
    /// Reads the config and every weight of a `llama` or `qwen2` GGUF file onto the CPU.
    pub(crate) fn load(gguf: &mut GgufFile, opts: WeightOptions) -> Result<Self, EngineError> {
        let arch_name = gguf.str("general.architecture")?.to_string();
        let arch = Arch::parse(&arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let hidden_size = gguf.usize(&key("embedding_length"))?;
        let n_layers = gguf.usize(&key("block_count"))?;
        let n_heads = gguf.usize(&key("attention.head_count"))?;
        let n_kv_heads = gguf
            .opt_u64(&key("attention.head_count_kv"))
            .map_or(n_heads, |v| v as usize);
        if n_heads == 0
            || n_kv_heads == 0
            || n_heads % n_kv_heads != 0
            || hidden_size % n_heads != 0
        {
            return Err(EngineError::InvalidModel(format!(
                "{n_heads} heads / {n_kv_heads} kv heads / hidden {hidden_size} do not divide"
            )));
        }
        let head_dim = gguf
            .opt_u64(&key("attention.key_length"))
            .map_or(hidden_size / n_heads, |v| v as usize);
        let rot_dim = gguf
            .opt_u64(&key("rope.dimension_count"))
            .map_or(head_dim, |v| v as usize);
        if rot_dim > head_dim || !rot_dim.is_multiple_of(2) {
            return Err(EngineError::InvalidModel(format!(
                "rope dimension {rot_dim} does not fit head dimension {head_dim}"
            )));
        }
        if gguf.has_tensor("rope_freqs.weight") {
            return Err(EngineError::InvalidModel(
                "rope frequency factors (rope_freqs.weight, llama-3.1 style scaling) are not supported"
                    .to_string(),
            ));
        }
        let rope_base = gguf.opt_f64(&key("rope.freq_base")).unwrap_or(10_000.0);
        let rms_eps = gguf
            .opt_f64(&key("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5) as f32;
        let context_length = gguf.usize(&key("context_length"))?;
        let hyper = Hyper {
            arch,
            hidden_size,
            n_layers,
            dims: HeadDims {
                n_heads,
                n_kv_heads,
                head_dim,
            },
            rot_dim,
            rope_base,
            rms_eps,
            context_length,
        };
        Self::build(&hyper, gguf, opts)
    }

    /// Builds the decoder from `hyper` and the weights of `source`. The RoPE layout follows the
    /// architecture as llama.cpp stores it: llama's Q/K rows are permuted so that rotated pairs
    /// are adjacent (interleaved), qwen2's are not (halves); a Hugging Face source permutes its
    /// llama Q/K rows to match (`super::hf_folder`).
    pub(crate) fn build(
        hyper: &Hyper,
        source: &mut dyn WeightSource,
        opts: WeightOptions,
    ) -> Result<Self, EngineError> {
        let Hyper {
            arch,
            hidden_size,
            n_layers,
            dims,
            rot_dim,
            rope_base,
            rms_eps,
            context_length,
        } = *hyper;
        let q_dim = dims.n_heads * dims.head_dim;
        let kv_dim = dims.n_kv_heads * dims.head_dim;
        let layout = match arch {
            Arch::Llama => RopeLayout::Interleaved,
            Arch::Qwen2 => RopeLayout::Halves,
        };

        let token_embd = Arc::new(source.tensor("token_embd.weight")?);
        let (vocab_size, embd_cols) = token_embd.shape().dims2()?;
        if embd_cols != hidden_size {
            return Err(EngineError::InvalidModel(format!(
                "token_embd has {embd_cols} columns, embedding_length is {hidden_size}"
            )));
        }
        let output_norm_q = source.tensor("output_norm.weight")?;
        let name = source.source_name("output_norm.weight");
        check_dims(&name, &output_norm_q, &[hidden_size])?;
        let output_norm = dequantize_vec(&output_norm_q)?;
        // Tied embeddings: without output.weight the token embedding doubles as the LM head.
        let head = if source.has_tensor("output.weight") {
            let head = source.tensor("output.weight")?;
            let name = source.source_name("output.weight");
            check_dims(&name, &head, &[vocab_size, hidden_size])?;
            Arc::new(head)
        } else {
            token_embd.clone()
        };
        let head = match opts.lm_head_rows {
            Some(rows) if rows < vocab_size => Arc::new(first_rows(&head, rows)?),
            _ => head,
        };
        let output = projection(head, opts)?;
        let mut layers = Vec::with_capacity(n_layers);
        for i in 0..n_layers {
            // `rows: None` accepts any row count and returns it: the feed-forward width, which
            // not every source states, is fixed by the gate for the up and down projections.
            let mut qm = |name: &str,
                          rows: Option<usize>,
                          cols: usize|
             -> Result<(Projection, usize), EngineError> {
                let full = format!("blk.{i}.{name}.weight");
                let weight = source.tensor(&full)?;
                let rows = match rows {
                    Some(r) => r,
                    None => weight.shape().dims2()?.0,
                };
                check_dims(&source.source_name(&full), &weight, &[rows, cols])?;
                Ok((projection(Arc::new(weight), opts)?, rows))
            };
            let (attn_q, _) = qm("attn_q", Some(q_dim), hidden_size)?;
            let (attn_k, _) = qm("attn_k", Some(kv_dim), hidden_size)?;
            let (attn_v, _) = qm("attn_v", Some(kv_dim), hidden_size)?;
            let (attn_output, _) = qm("attn_output", Some(hidden_size), q_dim)?;
            let (ffn_gate, ffn_size) = qm("ffn_gate", None, hidden_size)?;
            let (ffn_up, _) = qm("ffn_up", Some(ffn_size), hidden_size)?;
            let (ffn_down, _) = qm("ffn_down", Some(hidden_size), ffn_size)?;
            let mut bias = |name: &str, len: usize| -> Result<Bias, EngineError> {
                let full = format!("blk.{i}.{name}.bias");
                if arch == Arch::Llama && !source.has_tensor(&full) {
                    return Ok(None);
                }
                // Required for qwen2: the source's own error names a missing one.
                let b = source.tensor(&full)?;
                check_dims(&source.source_name(&full), &b, &[len])?;
                Ok(Some(dequantize_vec(&b)?))
            };
            let attn_q_bias = bias("attn_q", q_dim)?;
            let attn_k_bias = bias("attn_k", kv_dim)?;
            let attn_v_bias = bias("attn_v", kv_dim)?;
            let mut norm = |name: &str| -> Result<Vec<f32>, EngineError> {
                let full = format!("blk.{i}.{name}.weight");
                let w = source.tensor(&full)?;
                check_dims(&source.source_name(&full), &w, &[hidden_size])?;
                dequantize_vec(&w)
            };
            layers.push(Layer {
                attn_norm: norm("attn_norm")?,
                attn_q,
                attn_k,
                attn_v,
                attn_q_bias,
                attn_k_bias,
                attn_v_bias,
                attn_output,
                ffn_norm: norm("ffn_norm")?,
                ffn_gate,
                ffn_up,
                ffn_down,
            });
        }
        let config = Config {
            hidden_size,
            n_layers,
            dims,
            rms_eps,
            context_length,
            vocab_size,
        };
        Ok(Self {
            config,
            token_embd,
            layers,
            output_norm,
            output,
            rope: Rope::new(rope_base, rot_dim, layout),
        })
    }

    /// Runs the stacked `tokens` (rows of all sequences, in `seqs` order) through the first
    /// `n_layers` layers, appending each sequence's K/V to its cache, then the final norm and LM
    /// head. Returns logits `[sum of logit_rows, vocab]`: each sequence's last `logit_rows` rows
    /// (at least one),
    /// in `seqs` order. Caches' `len` is NOT updated here (the caller commits or rolls back).
    pub(crate) fn forward_rows(
        &self,
        tokens: &[u32],
        positions: &[usize],
        seqs: &mut [SeqRows<'_>],
        n_layers: usize,
    ) -> Result<Tensor, EngineError> {
        let dev = Device::Cpu;
        let cfg = &self.config;
        let dims = cfg.dims;
        let n_rows = tokens.len();
        let q_dim = dims.n_heads * dims.head_dim;
        let kv_dim = cfg.kv_dim();
        let hidden = cfg.hidden_size;
        let ids = Tensor::from_slice(tokens, n_rows, &dev)?;
        let mut x = to_vec(&self.token_embd.embedding(&ids)?)?;
        let rope_rows = self.rope.rows(positions);
        let mut attn_out = vec![0f32; n_rows * q_dim];
        let mut dense_rows = vec![false; n_rows];
        for seq in seqs.iter_mut() {
            let first_pos = seq.cache.len_tokens;
            let prefix = *seq.cache.dense_prefix.get_or_insert(
                if first_pos == 0 && seq.n_rows >= DENSE_MIN_ROWS {
                    seq.n_rows
                } else {
                    0
                },
            );
            for (i, dense) in dense_rows[seq.row_offset..seq.row_offset + seq.n_rows]
                .iter_mut()
                .enumerate()
            {
                *dense = first_pos + i < prefix;
            }
        }
        let paths = RowPaths::new(&dense_rows)?;
        for (l, layer) in self.layers[..n_layers].iter().enumerate() {
            let xn = rms_norm(&x, &layer.attn_norm, cfg.rms_eps);
            let mut qkv = Projection::forward_group(
                &[&layer.attn_q, &layer.attn_k, &layer.attn_v],
                &xn,
                n_rows,
                &paths,
            )?
            .into_iter();
            let (Some(mut q), Some(mut k), Some(mut v)) = (qkv.next(), qkv.next(), qkv.next())
            else {
                unreachable!("three projections give three outputs")
            };
            add_bias(&mut q, &layer.attn_q_bias);
            add_bias(&mut k, &layer.attn_k_bias);
            add_bias(&mut v, &layer.attn_v_bias);
            self.rope
                .apply(&mut q, &rope_rows, dims.n_heads, dims.head_dim);
            self.rope
                .apply(&mut k, &rope_rows, dims.n_kv_heads, dims.head_dim);
            for seq in seqs.iter_mut() {
                let rows = seq.row_offset..seq.row_offset + seq.n_rows;
                let cache = &mut seq.cache.layers[l];
                cache
                    .k
                    .extend_from_slice(&k[rows.start * kv_dim..rows.end * kv_dim]);
                cache
                    .v
                    .extend_from_slice(&v[rows.start * kv_dim..rows.end * kv_dim]);
            }
            let views: Vec<SeqAttention<'_>> = seqs
                .iter()
                .map(|seq| SeqAttention {
                    row_offset: seq.row_offset,
                    n_rows: seq.n_rows,
                    first_pos: seq.cache.len_tokens,
                    k: &seq.cache.layers[l].k,
                    v: &seq.cache.layers[l].v,
                })
                .collect();
            attend_all(&q, &views, dims, &mut attn_out);
            let o = layer.attn_output.forward_rows(&attn_out, n_rows, &paths)?;
            add_into(&mut x, &o);
            let xn = rms_norm(&x, &layer.ffn_norm, cfg.rms_eps);
            let mut gate_up =
                Projection::forward_group(&[&layer.ffn_gate, &layer.ffn_up], &xn, n_rows, &paths)?
                    .into_iter();
            let (Some(mut h), Some(up)) = (gate_up.next(), gate_up.next()) else {
                unreachable!("two projections give two outputs")
            };
            // SwiGLU: silu(gate) * up, silu as candle computes it.
            for (g, u) in h.iter_mut().zip(&up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            let down = layer.ffn_down.forward_rows(&h, n_rows, &paths)?;
            add_into(&mut x, &down);
        }
        let wanted: Vec<usize> = seqs
            .iter()
            .flat_map(|s| {
                let end = s.row_offset + s.n_rows;
                end - s.logit_rows.clamp(1, s.n_rows)..end
            })
            .collect();
        // Rows whose logits nobody reads skip the LM head (a prompt's rows but the last): it
        // is the widest matrix of a small model. Each kept row keeps its own weight path.
        let (x, paths) = if wanted.len() == n_rows {
            (x, paths)
        } else {
            let kept: Vec<f32> = wanted
                .iter()
                .flat_map(|&r| x[r * hidden..(r + 1) * hidden].iter().copied())
                .collect();
            let kept_dense: Vec<bool> = wanted.iter().map(|&r| dense_rows[r]).collect();
            (kept, RowPaths::new(&kept_dense)?)
        };
        let xn = rms_norm(&x, &self.output_norm, cfg.rms_eps);
        let logits = self.output.forward_rows(&xn, wanted.len(), &paths)?;
        let vocab = logits.len() / wanted.len().max(1);
        Ok(Tensor::from_vec(logits, (wanted.len(), vocab), &dev)?)
    }
}

/// Each row of `x` (`w.len()` values) divided by its root mean square and scaled by `w`, in
/// candle's `rms_norm` arithmetic.
fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let n = w.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(n) {
        let sum2 = row.iter().map(|v| v * v).sum::<f32>();
        let m = (sum2 / n as f32 + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(v, a)| v / m * a));
    }
    out
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Projection {
        /// The quantized weights as candle holds them, whichever kernel serves them.
        fn quantized_tensor(&self) -> QTensor {
            match &self.quantized {
                QuantKernel::Own(w) => w.to_qtensor().expect("qtensor"),
                QuantKernel::Candle(QMatMul::QTensor(t)) => {
                    first_rows(t, t.shape().dims2().expect("2d").0).expect("copy")
                }
                QuantKernel::Candle(_) => panic!("expected a quantized weight"),
            }
        }
    }

    #[test]
    fn slow_types_are_requantized_to_q8_0_and_stay_close() {
        assert!(is_slow_on_cpu(GgmlDType::Q5_0) && !is_slow_on_cpu(GgmlDType::Q4_1));
        assert!(!is_slow_on_cpu(GgmlDType::Q4K) && !is_slow_on_cpu(GgmlDType::Q8_0));
        let dev = Device::Cpu;
        // 64 outputs of 256 inputs, deterministic values in [-1, 1).
        let values: Vec<f32> = (0..64 * 256)
            .map(|i| ((i * 7919 % 2003) as f32 / 1001.5) - 1.0)
            .collect();
        let weights = Tensor::from_vec(values, (64, 256), &dev).expect("weights");
        let q5 = QTensor::quantize(&weights, GgmlDType::Q5_0).expect("Q5_0");
        let reference = q5.dequantize(&dev).expect("dequantize");
        let options = WeightOptions {
            requantize: true,
            requantize_all: false,
            dense: false,
            dense_for_own_kernels: false,
            pad_q8_0: false,
            lm_head_rows: None,
            quantize_float: false,
        };
        let p = projection(Arc::new(q5), options).expect("projection");
        let stored = p.quantized_tensor();
        assert_eq!(stored.dtype(), GgmlDType::Q8_0);
        let back = stored.dequantize(&dev).expect("dequantize");
        // Half a Q8_0 step (the step is 1/127 of the block's largest magnitude, here <= 1), plus
        // the f16 rounding of the block scale (2^-11 relative, over up to 127 steps).
        let max_diff = (back - reference)
            .expect("diff")
            .abs()
            .expect("abs")
            .flatten_all()
            .expect("flat")
            .max(0)
            .expect("max")
            .to_scalar::<f32>()
            .expect("scalar");
        assert!(max_diff <= 0.6 / 127.0, "max diff {max_diff}");
    }

    #[test]
    fn padded_q8_0_projection_keeps_the_weights_and_the_outputs() {
        let dev = Device::Cpu;
        // 32 outputs of 96 inputs: 96 is not a multiple of 256, so candle's repacked kernel only
        // serves the padded weight.
        let (n_out, n_in) = (32, 96);
        let values: Vec<f32> = (0..n_out * n_in)
            .map(|i| ((i * 7919 % 2003) as f32 / 1001.5) - 1.0)
            .collect();
        let weights = Tensor::from_vec(values, (n_out, n_in), &dev).expect("weights");
        let q8 = || Arc::new(QTensor::quantize(&weights, GgmlDType::Q8_0).expect("Q8_0"));
        let options = |pad_q8_0| WeightOptions {
            requantize: true,
            requantize_all: false,
            dense: false,
            dense_for_own_kernels: false,
            pad_q8_0,
            lm_head_rows: None,
            quantize_float: false,
        };
        let plain = projection(q8(), options(false)).expect("plain");
        let padded = projection(q8(), options(true)).expect("padded");
        assert_eq!(plain.quantized_pad_cols, 0);
        let expected_pad = q8_0_pad_cols(n_out, n_in);
        assert_eq!(padded.quantized_pad_cols, expected_pad);
        if expected_pad == 0 {
            // No AVX-512 VNNI here: nothing is padded, nothing more to check.
            return;
        }
        assert_eq!(expected_pad, 160);
        let dequantized =
            |p: &Projection| p.quantized_tensor().dequantize(&dev).expect("dequantize");
        let w_plain = dequantized(&plain).to_vec2::<f32>().expect("rows");
        let w_padded = dequantized(&padded).to_vec2::<f32>().expect("rows");
        for (a, b) in w_plain.iter().zip(&w_padded) {
            // Re-quantizing a Q8_0 block gives back the same values; the padding is zeros.
            assert_eq!(a.as_slice(), &b[..n_in]);
            assert!(b[n_in..].iter().all(|&v| v == 0.0));
        }
        let x: Vec<f32> = (0..3 * n_in)
            .map(|i| ((i * 104_729 % 997) as f32 / 498.5) - 1.0)
            .collect();
        let x = Tensor::from_vec(x, (3, n_in), &dev).expect("input");
        let y_plain = plain
            .forward(&x, &RowPaths::AllQuantized)
            .expect("forward")
            .to_vec2::<f32>()
            .expect("rows");
        let y_padded = padded
            .forward(&x, &RowPaths::AllQuantized)
            .expect("forward")
            .to_vec2::<f32>()
            .expect("rows");
        // The two kernels quantize the input differently (32- vs 256-wide int8 blocks), so the
        // outputs agree to the input's quantization error, not bit for bit.
        let scale = y_plain.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in y_plain.iter().flatten().zip(y_padded.iter().flatten()) {
            assert!((a - b).abs() <= 0.02 * scale, "{a} vs {b} (scale {scale})");
        }
    }

    /// Rows of `x` through `p`'s quantized weights, one call per row.
    fn rows_alone(p: &Projection, x: &Tensor) -> Vec<Vec<f32>> {
        (0..x.dim(0).expect("rows"))
            .map(|r| {
                let row = x.narrow(0, r, 1).expect("row");
                let y = p.forward(&row, &RowPaths::AllQuantized).expect("forward");
                y.to_vec2::<f32>().expect("rows").remove(0)
            })
            .collect()
    }

    fn test_weights(dtype: GgmlDType, n_out: usize, n_in: usize) -> Projection {
        let values: Vec<f32> = (0..n_out * n_in)
            .map(|i| ((i * 7919 % 2003) as f32 / 1001.5) - 1.0)
            .collect();
        let w = Tensor::from_vec(values, (n_out, n_in), &Device::Cpu).expect("weights");
        let options = WeightOptions {
            requantize: true,
            requantize_all: false,
            dense: false,
            dense_for_own_kernels: false,
            pad_q8_0: true,
            lm_head_rows: None,
            quantize_float: false,
        };
        projection(
            Arc::new(QTensor::quantize(&w, dtype).expect("quantize")),
            options,
        )
        .expect("projection")
    }

    fn test_input(rows: usize, n_in: usize) -> Tensor {
        let x: Vec<f32> = (0..rows * n_in)
            .map(|i| ((i * 104_729 % 997) as f32 / 498.5) - 1.0)
            .collect();
        Tensor::from_vec(x, (rows, n_in), &Device::Cpu).expect("input")
    }

    #[test]
    fn quantized_rows_do_not_depend_on_the_rows_beside_them() {
        // candle picks its CPU kernel by the row count (Q6_K: per-row dot products for one row,
        // repacked tiles for more; Q4_K: AMX tiles from 32 rows where the CPU has them), and the
        // kernels round differently. Greedy speculative decoding needs a position's logits to be
        // the same whether it is verified in a batch or decoded alone.
        for (dtype, rows) in [
            (GgmlDType::Q6K, 5),
            (GgmlDType::Q4K, 5),
            (GgmlDType::Q4K, 40),
            (GgmlDType::Q4K, 400),
            (GgmlDType::Q6K, 40),
            (GgmlDType::Q8_0, 40),
        ] {
            let p = test_weights(dtype, 32, 512);
            let x = test_input(rows, 512);
            let together = p
                .forward(&x, &RowPaths::AllQuantized)
                .expect("forward")
                .to_vec2::<f32>()
                .expect("rows");
            assert_eq!(together, rows_alone(&p, &x), "{dtype:?}, {rows} rows");
        }
    }

    #[test]
    fn first_rows_keeps_the_type_and_the_values() {
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q6K] {
            let values: Vec<f32> = (0..64 * 256)
                .map(|i| ((i * 7919 % 2003) as f32 / 1001.5) - 1.0)
                .collect();
            let w = Tensor::from_vec(values, (64, 256), &Device::Cpu).expect("weights");
            let q = QTensor::quantize(&w, dtype).expect("quantize");
            let cut = first_rows(&q, 10).expect("first rows");
            assert_eq!(cut.dtype(), dtype);
            assert_eq!(cut.shape().dims(), &[10, 256]);
            let all = q.dequantize(&Device::Cpu).expect("dequantize");
            let want = all
                .narrow(0, 0, 10)
                .expect("narrow")
                .to_vec2::<f32>()
                .expect("rows");
            let got = cut.dequantize(&Device::Cpu).expect("dequantize");
            assert_eq!(got.to_vec2::<f32>().expect("rows"), want, "{dtype:?}");
        }
    }
}
