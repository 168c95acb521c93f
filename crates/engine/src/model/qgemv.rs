//! Quantized matrix-vector products for the decode path, on the weights' own GGUF blocks (Q8_0 and
//! Q4_1): the input rows are quantized once to 8-bit blocks of 32 (ggml's `quantize_row_q8_1`),
//! and every output row is one block-wise integer dot product (ggml's `vec_dot_q8_0_q8_0` /
//! `vec_dot_q4_1_q8_1` arithmetic). Projections that read the same input (Q, K and V; gate and up)
//! run in one parallel region over all their output rows, on candle's worker pool.
//!
//! Why not candle's own kernel: at one input row, candle quantizes the input once per projection
//! and opens a parallel region per projection, and its Q4_1 dot product is scalar, so Q4_1 files
//! had to be re-quantized to Q8_0 at load (1.7x the bytes) to decode at speed.
//!
//! Every output value is computed by the same function whatever the number of rows, so a
//! position's logits do not depend on what it is batched with (greedy speculative decoding relies
//! on that). The AVX2 kernels and the portable one give bit-identical results (tested): both sum
//! each block's integer products exactly and accumulate `scale * integer_sum` in the same 8-lane
//! order with fused multiply-adds.
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use crate::error::EngineError;

/// Values per quantization block (Q8_0, Q8_1 and Q4_1 alike).
const BLOCK: usize = 32;
/// Bytes of one Q8_0 block: f16 scale, 32 signed bytes.
const Q8_0_BYTES: usize = 34;
/// Bytes of one Q4_1 block: f16 scale, f16 minimum, 16 bytes of two 4-bit values each.
const Q4_1_BYTES: usize = 20;
/// Lanes of the float accumulator (one AVX2 register of f32).
const LANES: usize = 8;

/// The weight formats this module multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockFormat {
    Q8_0,
    Q4_1,
}

impl BlockFormat {
    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            _ => None,
        }
    }

    fn block_bytes(self) -> usize {
        match self {
            Self::Q8_0 => Q8_0_BYTES,
            Self::Q4_1 => Q4_1_BYTES,
        }
    }
}

/// A `[n_out, n_in]` weight in its GGUF blocks, row after row.
pub(crate) struct QuantWeights {
    format: BlockFormat,
    n_out: usize,
    n_in: usize,
    data: Vec<u8>,
}

impl QuantWeights {
    /// The weight's blocks, if its type is one this module multiplies (Q8_0, Q4_1) and its rows
    /// are whole blocks; `None` otherwise (candle's kernels serve it).
    pub(crate) fn from_qtensor(t: &QTensor) -> Result<Option<Self>, EngineError> {
        let Some(format) = BlockFormat::of(t.dtype()) else {
            return Ok(None);
        };
        let (n_out, n_in) = t.shape().dims2()?;
        if n_in == 0 || !n_in.is_multiple_of(BLOCK) {
            return Ok(None);
        }
        let data = t.data()?.into_owned();
        if data.len() != n_out * (n_in / BLOCK) * format.block_bytes() {
            return Err(EngineError::InvalidModel(format!(
                "a {:?} weight of shape [{n_out}, {n_in}] holds {} bytes",
                t.dtype(),
                data.len()
            )));
        }
        Ok(Some(Self {
            format,
            n_out,
            n_in,
            data,
        }))
    }

    /// The same blocks as a candle tensor.
    #[cfg(test)]
    pub(crate) fn to_qtensor(&self) -> Result<QTensor, EngineError> {
        let dtype = match self.format {
            BlockFormat::Q8_0 => GgmlDType::Q8_0,
            BlockFormat::Q4_1 => GgmlDType::Q4_1,
        };
        Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(
            dtype,
            &self.data,
            vec![self.n_out, self.n_in],
            &candle_core::Device::Cpu,
        )?)
    }

    pub(crate) fn n_out(&self) -> usize {
        self.n_out
    }

    fn row(&self, r: usize) -> &[u8] {
        let row_bytes = self.n_in / BLOCK * self.format.block_bytes();
        &self.data[r * row_bytes..(r + 1) * row_bytes]
    }
}

/// Input rows quantized to 8 bits per value in blocks of 32 (ggml's Q8_1): per block the scale
/// `d` (rounded to f16, as stored by ggml), `d` times the sum of the block's quants (`s`, also
/// f16-rounded; Q4_1's minimum multiplies it) and the 32 quants.
pub(crate) struct QuantizedInput {
    d: Vec<f32>,
    s: Vec<f32>,
    qs: Vec<i8>,
    blocks_per_row: usize,
}

impl QuantizedInput {
    /// Quantizes `rows` rows of `x` (`x.len() / rows` values each, a multiple of 32).
    pub(crate) fn new(x: &[f32], rows: usize) -> Self {
        let n_in = x.len() / rows.max(1);
        let blocks_per_row = n_in / BLOCK;
        let n_blocks = rows * blocks_per_row;
        let mut d = Vec::with_capacity(n_blocks);
        let mut s = Vec::with_capacity(n_blocks);
        let mut qs = vec![0i8; n_blocks * BLOCK];
        for (block, q) in x.chunks_exact(BLOCK).zip(qs.chunks_exact_mut(BLOCK)) {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            let mut sum = 0i32;
            for (qv, &v) in q.iter_mut().zip(block) {
                *qv = (v * inv).round() as i8;
                sum += i32::from(*qv);
            }
            d.push(f16::from_f32(scale).to_f32());
            s.push(f16::from_f32(sum as f32 * scale).to_f32());
        }
        Self {
            d,
            s,
            qs,
            blocks_per_row,
        }
    }

    fn row(&self, r: usize) -> InputRow<'_> {
        let b = r * self.blocks_per_row..(r + 1) * self.blocks_per_row;
        InputRow {
            d: &self.d[b.clone()],
            s: &self.s[b.clone()],
            qs: &self.qs[b.start * BLOCK..b.end * BLOCK],
        }
    }
}

#[derive(Clone, Copy)]
struct InputRow<'a> {
    d: &'a [f32],
    s: &'a [f32],
    qs: &'a [i8],
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Sums the 8 lanes in the order of [`hsum8`]'s SIMD counterpart: halves, then pairs, then the two.
fn hsum_lanes(acc: &[f32; LANES]) -> f32 {
    let q: [f32; 4] = std::array::from_fn(|i| acc[i] + acc[i + 4]);
    let p = [q[0] + q[2], q[1] + q[3]];
    p[0] + p[1]
}

/// Portable dot product of one weight row with one input row, lane by lane as the AVX2 kernel
/// does it: lane `l` of a block holds the integer products of its values `4l..4l + 4`.
fn dot_portable(format: BlockFormat, w: &[u8], x: InputRow<'_>) -> f32 {
    let mut acc = [0f32; LANES];
    let mut min_term = 0f32;
    for (b, wb) in w.chunks_exact(format.block_bytes()).enumerate() {
        let xq = &x.qs[b * BLOCK..(b + 1) * BLOCK];
        let wd = f16_at(wb, 0);
        let (scale, quants): (f32, [i32; BLOCK]) = match format {
            BlockFormat::Q8_0 => (
                wd * x.d[b],
                std::array::from_fn(|j| i32::from(wb[2 + j] as i8)),
            ),
            BlockFormat::Q4_1 => {
                min_term = f16_at(wb, 2).mul_add(x.s[b], min_term);
                let qs = &wb[4..4 + BLOCK / 2];
                (
                    wd * x.d[b],
                    std::array::from_fn(|j| {
                        i32::from(if j < BLOCK / 2 {
                            qs[j] & 0x0F
                        } else {
                            qs[j - BLOCK / 2] >> 4
                        })
                    }),
                )
            }
        };
        for (l, a) in acc.iter_mut().enumerate() {
            let isum: i32 = (4 * l..4 * l + 4)
                .map(|j| quants[j] * i32::from(xq[j]))
                .sum();
            *a = scale.mul_add(isum as f32, *a);
        }
    }
    hsum_lanes(&acc) + min_term
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{hsum_lanes, BlockFormat, InputRow, QuantWeights, QuantizedInput, BLOCK, LANES};
    use std::arch::x86_64::*;

    /// 8 lanes of `sum over 4 bytes of u8 * i8` (the pairwise-then-quad order does not matter:
    /// the sums are exact integers). With VNNI one instruction does it.
    #[inline(always)]
    unsafe fn dot_u8_i8<const VNNI: bool>(u: __m256i, s: __m256i) -> __m256i {
        if VNNI {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
        } else {
            let pairs = _mm256_maddubs_epi16(u, s);
            _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
        }
    }

    #[inline(always)]
    unsafe fn store(acc: __m256) -> [f32; LANES] {
        let mut out = [0f32; LANES];
        _mm256_storeu_ps(out.as_mut_ptr(), acc);
        out
    }

    /// One block of Q4_1 weights: the 4-bit quants are unsigned, so they are the unsigned operand
    /// as they are; low nibbles hold values 0..16 of a block, high nibbles 16..32.
    #[inline(always)]
    unsafe fn block_q4_1<const VNNI: bool>(wb: *const u8, xq: __m256i) -> __m256 {
        let low = _mm_set1_epi8(0x0F);
        let packed = _mm_loadu_si128(wb.add(4) as *const __m128i);
        let lo = _mm_and_si128(packed, low);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
        _mm256_cvtepi32_ps(dot_u8_i8::<VNNI>(_mm256_set_m128i(hi, lo), xq))
    }

    #[inline(always)]
    unsafe fn f16_at_ptr(p: *const u8) -> f32 {
        half::f16::from_bits(u16::from_le_bytes([*p, *p.add(1)])).to_f32()
    }

    /// Dot products of `R` weight rows with one input row, each accumulated exactly as
    /// `super::dot_portable` does.
    #[inline(always)]
    unsafe fn dot_rows<const VNNI: bool, const R: usize>(
        format: BlockFormat,
        rows: [&[u8]; R],
        x: InputRow<'_>,
    ) -> [f32; R] {
        let mut acc = [_mm256_setzero_ps(); R];
        let mut min_term = [0f32; R];
        let block_bytes = format.block_bytes();
        for b in 0..x.d.len() {
            let xq = _mm256_loadu_si256(x.qs.as_ptr().add(b * BLOCK) as *const __m256i);
            let xd = x.d[b];
            for r in 0..R {
                let wb = rows[r].as_ptr().add(b * block_bytes);
                let scale = f16_at_ptr(wb) * xd;
                let isum = match format {
                    BlockFormat::Q8_0 => {
                        let wq = _mm256_loadu_si256(wb.add(2) as *const __m256i);
                        _mm256_cvtepi32_ps(dot_u8_i8::<VNNI>(
                            _mm256_sign_epi8(wq, wq),
                            _mm256_sign_epi8(xq, wq),
                        ))
                    }
                    BlockFormat::Q4_1 => {
                        min_term[r] = f16_at_ptr(wb.add(2)).mul_add(x.s[b], min_term[r]);
                        block_q4_1::<VNNI>(wb, xq)
                    }
                };
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(scale), isum, acc[r]);
            }
        }
        std::array::from_fn(|r| hsum_lanes(&store(acc[r])) + min_term[r])
    }

    /// Output rows `rows` of `w` for every input row, written at `out[i * n_out + r]`.
    #[inline(always)]
    unsafe fn rows_into<const VNNI: bool>(
        w: &QuantWeights,
        rows: std::ops::Range<usize>,
        input: &QuantizedInput,
        m: usize,
        out: *mut f32,
    ) {
        let mut r = rows.start;
        while r + 4 <= rows.end {
            let ws = [w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)];
            for i in 0..m {
                let y = dot_rows::<VNNI, 4>(w.format, ws, input.row(i));
                for (j, v) in y.into_iter().enumerate() {
                    *out.add(i * w.n_out + r + j) = v;
                }
            }
            r += 4;
        }
        for r in r..rows.end {
            for i in 0..m {
                *out.add(i * w.n_out + r) =
                    dot_rows::<VNNI, 1>(w.format, [w.row(r)], input.row(i))[0];
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows_avx2(
        w: &QuantWeights,
        rows: std::ops::Range<usize>,
        input: &QuantizedInput,
        m: usize,
        out: *mut f32,
    ) {
        rows_into::<false>(w, rows, input, m, out)
    }

    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
    pub(super) unsafe fn rows_vnni(
        w: &QuantWeights,
        rows: std::ops::Range<usize>,
        input: &QuantizedInput,
        m: usize,
        out: *mut f32,
    ) {
        rows_into::<true>(w, rows, input, m, out)
    }
}

/// The widest integer-dot instructions this CPU has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Simd {
    Portable,
    Avx2,
    Vnni,
}

fn simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        static LEVEL: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
        *LEVEL.get_or_init(|| {
            if !(has!("avx2") && has!("fma")) {
                Simd::Portable
            } else if has!("avx512f") && has!("avx512vl") && has!("avx512vnni") {
                Simd::Vnni
            } else {
                Simd::Avx2
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Simd::Portable
    }
}

/// Output rows `rows` of `w` for every input row, written at `out[i * n_out + r]`.
///
/// # Safety
/// `out` must hold `m * w.n_out()` values, `rows` must lie within `0..w.n_out()` and `input` must
/// hold `m` rows of `w.n_in()` values.
unsafe fn rows_into(
    w: &QuantWeights,
    rows: std::ops::Range<usize>,
    input: &QuantizedInput,
    m: usize,
    out: *mut f32,
) {
    // SAFETY: `simd()` checked the CPU's features; the kernels read whole blocks of rows of `w`
    // and of `input`, which have the same width.
    match simd() {
        #[cfg(target_arch = "x86_64")]
        Simd::Vnni => unsafe { avx2::rows_vnni(w, rows, input, m, out) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { avx2::rows_avx2(w, rows, input, m, out) },
        _ => {
            for r in rows {
                for i in 0..m {
                    // SAFETY: in bounds by the caller's contract.
                    unsafe {
                        *out.add(i * w.n_out + r) = dot_portable(w.format, w.row(r), input.row(i))
                    };
                }
            }
        }
    }
}

/// An output buffer several workers write into, each at indices no other worker writes.
struct SharedOut(*mut f32);
// SAFETY: workers write disjoint elements (see `gemv`), and the buffers outlive the region.
unsafe impl Sync for SharedOut {}

/// Output rows per work item: few enough that two workers share the smallest projection.
const ROWS_PER_ITEM: usize = 16;

/// `y_p = x W_p^T` for every weight `p` (all of `n_in` columns): `x` is `m` rows, the result of
/// `p` is `m * p.n_out()` values, row-major. One parallel region over all weights' output rows.
pub(crate) fn gemv(weights: &[&QuantWeights], x: &[f32], m: usize) -> Vec<Vec<f32>> {
    let mut outs: Vec<Vec<f32>> = weights.iter().map(|w| vec![0f32; m * w.n_out]).collect();
    if m == 0 || weights.is_empty() {
        return outs;
    }
    let n_in = weights[0].n_in;
    debug_assert!(weights.iter().all(|w| w.n_in == n_in) && x.len() == m * n_in);
    let input = QuantizedInput::new(x, m);
    // Work items: (weight, first output row), ROWS_PER_ITEM rows each.
    let items: Vec<(usize, usize)> = weights
        .iter()
        .enumerate()
        .flat_map(|(p, w)| (0..w.n_out).step_by(ROWS_PER_ITEM).map(move |r| (p, r)))
        .collect();
    let ptrs: Vec<SharedOut> = outs.iter_mut().map(|o| SharedOut(o.as_mut_ptr())).collect();
    let run = |range: std::ops::Range<usize>| {
        for &(p, first) in &items[range] {
            let w = weights[p];
            // SAFETY: `outs[p]` holds m * n_out values, and the rows of this item are written
            // by this item only.
            unsafe {
                rows_into(
                    w,
                    first..(first + ROWS_PER_ITEM).min(w.n_out),
                    &input,
                    m,
                    ptrs[p].0,
                )
            };
        }
    };
    candle_core::utils::barrier_pool().execute_chunked(items.len(), run);
    outs
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 7919 % 2003) as f32 / 1001.5) - 1.0)
            .collect()
    }

    fn weights(dtype: GgmlDType, n_out: usize, n_in: usize) -> (QuantWeights, Vec<f32>) {
        let w = Tensor::from_vec(values(n_out * n_in, 3), (n_out, n_in), &Device::Cpu)
            .expect("weights");
        let q = QTensor::quantize(&w, dtype).expect("quantize");
        let dense = q
            .dequantize(&Device::Cpu)
            .expect("dequantize")
            .flatten_all()
            .expect("flat")
            .to_vec1::<f32>()
            .expect("values");
        let qw = QuantWeights::from_qtensor(&q)
            .expect("blocks")
            .expect("a supported type");
        (qw, dense)
    }

    #[test]
    fn simd_and_portable_kernels_agree_bit_for_bit() {
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_1] {
            let (w, _) = weights(dtype, 22, 576);
            let x: Vec<f32> = values(576, 11).iter().map(|v| v * 3.0).collect();
            let input = QuantizedInput::new(&x, 1);
            let fast = gemv(&[&w], &x, 1).remove(0);
            for (r, y) in fast.iter().enumerate() {
                let portable = dot_portable(w.format, w.row(r), input.row(0));
                assert_eq!(*y, portable, "{dtype:?}, row {r}");
            }
        }
    }

    #[test]
    fn products_match_the_dequantized_weights() {
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_1] {
            let (n_out, n_in) = (40, 96);
            let (w, dense) = weights(dtype, n_out, n_in);
            let x = values(2 * n_in, 5);
            let y = gemv(&[&w], &x, 2).remove(0);
            for i in 0..2 {
                for r in 0..n_out {
                    let exact: f32 = (0..n_in)
                        .map(|c| dense[r * n_in + c] * x[i * n_in + c])
                        .sum();
                    // The input's 8-bit rounding: half a step of 1/127 of each block's largest
                    // magnitude (here <= 1), times the sum of the row's weight magnitudes.
                    let bound: f32 = (0..n_in).map(|c| dense[r * n_in + c].abs()).sum::<f32>()
                        * (0.5 / 127.0)
                        + 1e-3;
                    let got = y[i * n_out + r];
                    assert!((got - exact).abs() <= bound, "{dtype:?}: {got} vs {exact}");
                }
            }
        }
    }

    #[test]
    fn a_row_does_not_depend_on_the_rows_beside_it() {
        let (w, _) = weights(GgmlDType::Q4_1, 48, 64);
        let (v, _) = weights(GgmlDType::Q8_0, 16, 64);
        let x = values(5 * 64, 9);
        let together = gemv(&[&w, &v], &x, 5);
        for i in 0..5 {
            let alone = gemv(&[&w, &v], &x[i * 64..(i + 1) * 64], 1);
            for (t, a) in together.iter().zip(&alone) {
                let n = a.len();
                assert_eq!(&t[i * n..(i + 1) * n], a.as_slice());
            }
        }
    }

    #[test]
    fn unsupported_types_and_widths_are_left_to_candle() {
        let w = Tensor::from_vec(values(16 * 256, 1), (16, 256), &Device::Cpu).expect("w");
        let q = QTensor::quantize(&w, GgmlDType::Q4K).expect("quantize");
        assert!(QuantWeights::from_qtensor(&q).expect("ok").is_none());
    }
}
