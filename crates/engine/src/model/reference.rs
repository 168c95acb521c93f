//! A slow, plain f64 evaluation of a GGUF model's weights, kept apart from the engine's forward
//! (`llama.rs`, `attention.rs`) on purpose: it is the yardstick the engine's arithmetic is
//! measured against (`--weights fast|exact`, docs/speculative-decoding.md), so it shares none of
//! that code. Every weight is the file's own value, dequantized once to f64; activations stay
//! f64 throughout; the whole prompt is evaluated at once with a causal mask, no KV cache.
//! Architectures `llama` (GGUF's permuted Q/K: adjacent-pair RoPE) and `qwen2` (Q/K/V biases,
//! half-split RoPE), as the engine supports them. Memory: 8 bytes per parameter.
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::EngineError;
use crate::gguf::GgufFile;

struct ReferenceLayer {
    attn_norm: Vec<f64>,
    /// `[out, in]` f64 matrices.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_bias: Option<Vec<f64>>,
    k_bias: Option<Vec<f64>>,
    v_bias: Option<Vec<f64>>,
    output: Tensor,
    ffn_norm: Vec<f64>,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// The f64 yardstick. `forward` returns every position's logits.
pub struct ReferenceModel {
    embedding: Tensor,
    layers: Vec<ReferenceLayer>,
    output_norm: Vec<f64>,
    head: Tensor,
    rms_eps: f64,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    rope_dims: usize,
    rope_base: f64,
    /// RoPE rotates pairs `(2i, 2i+1)` (llama in GGUF) rather than `(i, i + dims/2)` (qwen2).
    rope_adjacent_pairs: bool,
}

fn matrix(gguf: &mut GgufFile, name: &str) -> Result<Tensor, EngineError> {
    Ok(gguf
        .tensor(name, &Device::Cpu)?
        .dequantize(&Device::Cpu)?
        .to_dtype(DType::F64)?)
}

fn vector(gguf: &mut GgufFile, name: &str) -> Result<Vec<f64>, EngineError> {
    Ok(matrix(gguf, name)?.flatten_all()?.to_vec1::<f64>()?)
}

impl ReferenceModel {
    /// Reads a `llama` or `qwen2` GGUF file.
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let mut gguf = GgufFile::open(path)?;
        let arch = gguf.str("general.architecture")?.to_string();
        if arch != "llama" && arch != "qwen2" {
            return Err(EngineError::UnsupportedArchitecture(arch));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = gguf.usize(&key("embedding_length"))?;
        let n_layers = gguf.usize(&key("block_count"))?;
        let n_heads = gguf.usize(&key("attention.head_count"))?;
        let n_kv_heads = gguf
            .opt_u64(&key("attention.head_count_kv"))
            .map_or(n_heads, |v| v as usize);
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(EngineError::InvalidModel(format!(
                "{n_heads} heads over {n_kv_heads} kv heads"
            )));
        }
        let head_dim = gguf
            .opt_u64(&key("attention.key_length"))
            .map_or(hidden / n_heads, |v| v as usize);
        let rope_dims = gguf
            .opt_u64(&key("rope.dimension_count"))
            .map_or(head_dim, |v| v as usize);
        let rope_base = gguf.opt_f64(&key("rope.freq_base")).unwrap_or(10_000.0);
        let rms_eps = gguf
            .opt_f64(&key("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5);
        let embedding = matrix(&mut gguf, "token_embd.weight")?;
        let head = if gguf.has_tensor("output.weight") {
            matrix(&mut gguf, "output.weight")?
        } else {
            embedding.clone()
        };
        let output_norm = vector(&mut gguf, "output_norm.weight")?;
        let mut layers = Vec::with_capacity(n_layers);
        for i in 0..n_layers {
            let name = |part: &str| format!("blk.{i}.{part}");
            let mut bias = |part: &str| -> Result<Option<Vec<f64>>, EngineError> {
                let full = name(&format!("{part}.bias"));
                if gguf.has_tensor(&full) {
                    Ok(Some(vector(&mut gguf, &full)?))
                } else {
                    Ok(None)
                }
            };
            let (q_bias, k_bias, v_bias) = (bias("attn_q")?, bias("attn_k")?, bias("attn_v")?);
            layers.push(ReferenceLayer {
                attn_norm: vector(&mut gguf, &name("attn_norm.weight"))?,
                q: matrix(&mut gguf, &name("attn_q.weight"))?,
                k: matrix(&mut gguf, &name("attn_k.weight"))?,
                v: matrix(&mut gguf, &name("attn_v.weight"))?,
                q_bias,
                k_bias,
                v_bias,
                output: matrix(&mut gguf, &name("attn_output.weight"))?,
                ffn_norm: vector(&mut gguf, &name("ffn_norm.weight"))?,
                gate: matrix(&mut gguf, &name("ffn_gate.weight"))?,
                up: matrix(&mut gguf, &name("ffn_up.weight"))?,
                down: matrix(&mut gguf, &name("ffn_down.weight"))?,
            });
        }
        Ok(Self {
            embedding,
            layers,
            output_norm,
            head,
            rms_eps,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_dims,
            rope_base,
            rope_adjacent_pairs: arch == "llama",
        })
    }

    /// Logits of every position of `tokens` (positions 0..len), `[len][vocab]`.
    pub fn forward(&self, tokens: &[u32]) -> Result<Vec<Vec<f64>>, EngineError> {
        let dev = Device::Cpu;
        let n = tokens.len();
        let ids = Tensor::from_slice(tokens, n, &dev)?;
        let mut x = self.embedding.index_select(&ids, 0)?;
        for layer in &self.layers {
            let xn = self.rms_norm(&x, &layer.attn_norm)?;
            let mut q = linear(&xn, &layer.q, layer.q_bias.as_deref())?;
            let mut k = linear(&xn, &layer.k, layer.k_bias.as_deref())?;
            let v = linear(&xn, &layer.v, layer.v_bias.as_deref())?;
            self.rotate(&mut q, self.n_heads);
            self.rotate(&mut k, self.n_kv_heads);
            let attended = self.attend(&q, &k, &v);
            let width = self.n_heads * self.head_dim;
            let attended = Tensor::from_vec(attended, (n, width), &dev)?;
            x = (x + attended.matmul(&layer.output.t()?)?)?;
            let xn = self.rms_norm(&x, &layer.ffn_norm)?;
            let gate = xn.matmul(&layer.gate.t()?)?;
            let up = xn.matmul(&layer.up.t()?)?;
            // silu(g) = g / (1 + e^-g)
            let silu = (&gate / (gate.neg()?.exp()? + 1.0)?)?;
            x = (x + (silu * up)?.matmul(&layer.down.t()?)?)?;
        }
        let xn = self.rms_norm(&x, &self.output_norm)?;
        Ok(xn.matmul(&self.head.t()?)?.to_vec2::<f64>()?)
    }

    /// `x / sqrt(mean(x^2) + eps) * weight`, row by row.
    fn rms_norm(&self, x: &Tensor, weight: &[f64]) -> Result<Tensor, EngineError> {
        let rows = x.to_vec2::<f64>()?;
        let normed: Vec<f64> = rows
            .iter()
            .flat_map(|row| {
                let mean_square = row.iter().map(|v| v * v).sum::<f64>() / row.len() as f64;
                let scale = 1.0 / (mean_square + self.rms_eps).sqrt();
                row.iter()
                    .zip(weight)
                    .map(move |(v, w)| v * scale * w)
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(Tensor::from_vec(normed, x.dims2()?, &Device::Cpu)?)
    }

    /// RoPE in place on `x` (`[positions][heads * head_dim]`; row r is position r).
    fn rotate(&self, x: &mut [Vec<f64>], heads: usize) {
        let half = self.rope_dims / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| {
                self.rope_base
                    .powf(-((2 * i) as f64) / self.rope_dims as f64)
            })
            .collect();
        for (position, row) in x.iter_mut().enumerate() {
            for head in row.chunks_exact_mut(self.head_dim).take(heads) {
                for (i, freq) in inv_freq.iter().enumerate() {
                    let (sin, cos) = (position as f64 * freq).sin_cos();
                    let (a, b) = if self.rope_adjacent_pairs {
                        (2 * i, 2 * i + 1)
                    } else {
                        (i, i + half)
                    };
                    let (xa, xb) = (head[a], head[b]);
                    head[a] = xa * cos - xb * sin;
                    head[b] = xa * sin + xb * cos;
                }
            }
        }
    }

    /// Causal grouped-query softmax attention; returns `[positions * heads * head_dim]`.
    fn attend(&self, q: &[Vec<f64>], k: &[Vec<f64>], v: &[Vec<f64>]) -> Vec<f64> {
        let d = self.head_dim;
        let group = self.n_heads / self.n_kv_heads;
        let scale = 1.0 / (d as f64).sqrt();
        let mut out = vec![0.0; q.len() * self.n_heads * d];
        for (i, q_row) in q.iter().enumerate() {
            for h in 0..self.n_heads {
                let kv = (h / group) * d;
                let qh = &q_row[h * d..(h + 1) * d];
                let scores: Vec<f64> = k[..=i]
                    .iter()
                    .map(|k_row| {
                        qh.iter()
                            .zip(&k_row[kv..kv + d])
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                let oh = &mut out[(i * self.n_heads + h) * d..(i * self.n_heads + h + 1) * d];
                for (w, v_row) in weights.iter().zip(v) {
                    for (o, value) in oh.iter_mut().zip(&v_row[kv..kv + d]) {
                        *o += w / total * value;
                    }
                }
            }
        }
        out
    }
}

/// `x W^T (+ bias)` as rows of f64.
fn linear(x: &Tensor, weight: &Tensor, bias: Option<&[f64]>) -> Result<Vec<Vec<f64>>, EngineError> {
    let mut rows = x.matmul(&weight.t()?)?.to_vec2::<f64>()?;
    if let Some(bias) = bias {
        for row in &mut rows {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
    Ok(rows)
}
