//! Quantized matrix-vector products for the decode path, on the weights' own values (Q8_0 and
//! Q4_1 here, Q4_K and Q6_K in `super::qgemv_k`): the input rows are quantized once to 8-bit blocks of 32 (ggml's `quantize_row_q8_1`),
//! and every output is a block-wise integer dot product (ggml's `vec_dot_q8_0_q8_0` /
//! `vec_dot_q4_1_q8_1` arithmetic: per block, scale times the exact integer sum, plus Q4_1's
//! minimum times the input block's sum). Projections that read the same input (Q, K and V; gate
//! and up) run in one parallel region over all their output rows, on candle's worker pool.
//!
//! Why not candle's own kernel: at one input row, candle quantizes the input once per projection
//! and opens a parallel region per projection, and its Q4_1 dot product is scalar, so Q4_1 files
//! had to be re-quantized to Q8_0 at load (1.7x the bytes) to decode at speed.
//!
//! Q4_1 weights are regrouped at load, four blocks at a time (their 4-bit quants together, then
//! their f16 scales and minimums: the same 20 bytes per block), so that one 512-bit load feeds
//! four blocks to VNNI's `vpdpbusd`. Q8_0 weights stay in their GGUF blocks. Then every weight's
//! rows are interleaved by fours, unit by unit (see `interleave_rows`), so that the kernels,
//! which take four rows per pass over the input, read memory as one forward stream.
//!
//! Every output value is computed by the same function whatever the number of rows, so a
//! position's logits do not depend on what it is batched with (greedy speculative decoding relies
//! on that). The SIMD kernels (AVX-512 VNNI, AVX2) and the portable one give bit-identical results
//! (tested): all sum each block's integer products exactly and accumulate `scale * integer_sum`
//! lane by lane in the same order with fused multiply-adds.
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::qgemv_k::{
    dot_q4k_portable, dot_q6k_portable, unpack_q4k, KInput, KRow, Q4K_BYTES, Q4K_GGUF_BYTES,
    Q6K_BYTES, SUPER,
};
use crate::error::EngineError;

/// Values per quantization block (Q8_0, Q8_1 and Q4_1 alike).
const BLOCK: usize = 32;
/// Bytes of one Q8_0 block: f16 scale, 32 signed bytes.
const Q8_0_BYTES: usize = 34;
/// Bytes of one Q4_1 block in a GGUF file: f16 scale, f16 minimum, 16 bytes of two 4-bit values.
const Q4_1_BYTES: usize = 20;
/// Q4_1 blocks per group of the regrouped layout.
const GROUP: usize = 4;
/// Bytes of one regrouped Q4_1 group: 4 x 16 bytes of quants, 4 f16 scales, 4 f16 minimums.
const Q4_1_GROUP_BYTES: usize = GROUP * Q4_1_BYTES;
/// Lanes of the Q8_0 float accumulator (one AVX2 register of f32).
const LANES: usize = 8;
/// Lanes of the Q4_1 float accumulator: 4 per block of a group (one AVX-512 register).
const GROUP_LANES: usize = 16;

/// The weight formats this module multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockFormat {
    Q8_0,
    Q4_1,
    Q4K,
    Q6K,
}

impl BlockFormat {
    /// Values per block of the file's layout.
    fn block_values(self) -> usize {
        match self {
            Self::Q8_0 | Self::Q4_1 => BLOCK,
            Self::Q4K | Self::Q6K => SUPER,
        }
    }

    /// Bytes of the unit the kernels read at a time: a Q8_0 block, a regrouped Q4_1 group of
    /// four blocks, an (unpacked) k-quant super-block.
    fn unit_bytes(self) -> usize {
        match self {
            Self::Q8_0 => Q8_0_BYTES,
            Self::Q4_1 => Q4_1_GROUP_BYTES,
            Self::Q4K => Q4K_BYTES,
            Self::Q6K => Q6K_BYTES,
        }
    }

    /// Whether its input is quantized per super-block of 256 (Q8_K) instead of per 32 (Q8_1).
    fn is_k_quant(self) -> bool {
        matches!(self, Self::Q4K | Self::Q6K)
    }

    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q4K => Some(Self::Q4K),
            GgmlDType::Q6K => Some(Self::Q6K),
            _ => None,
        }
    }
}

/// A `[n_out, n_in]` weight, row after row: Q8_0 in its GGUF blocks, Q4_1 regrouped (see the
/// module documentation; a row's last group is padded with zero blocks).
pub(crate) struct QuantWeights {
    format: BlockFormat,
    n_out: usize,
    n_in: usize,
    data: Vec<u8>,
}

impl QuantWeights {
    /// The weight's values, if its type is one this module multiplies (Q8_0, Q4_1) and its rows
    /// are whole blocks; `None` otherwise (candle's kernels serve it).
    pub(crate) fn from_qtensor(t: &QTensor) -> Result<Option<Self>, EngineError> {
        let Some(format) = BlockFormat::of(t.dtype()) else {
            return Ok(None);
        };
        let (n_out, n_in) = t.shape().dims2()?;
        let block = format.block_values();
        if n_in == 0 || !n_in.is_multiple_of(block) {
            return Ok(None);
        }
        let gguf = t.data()?;
        let block_bytes = match format {
            BlockFormat::Q8_0 => Q8_0_BYTES,
            BlockFormat::Q4_1 => Q4_1_BYTES,
            BlockFormat::Q4K => Q4K_GGUF_BYTES,
            BlockFormat::Q6K => Q6K_BYTES,
        };
        if gguf.len() != n_out * (n_in / block) * block_bytes {
            return Err(EngineError::InvalidModel(format!(
                "a {:?} weight of shape [{n_out}, {n_in}] holds {} bytes",
                t.dtype(),
                gguf.len()
            )));
        }
        let rows = match format {
            BlockFormat::Q8_0 | BlockFormat::Q6K => gguf,
            BlockFormat::Q4_1 => regroup_q4_1(&gguf, n_out, n_in / BLOCK).into(),
            BlockFormat::Q4K => unpack_q4k(&gguf).into(),
        };
        let data = interleave_rows(&rows, n_out, format.unit_bytes());
        Ok(Some(Self {
            format,
            n_out,
            n_in,
            data,
        }))
    }

    /// The same values as a candle tensor in GGUF blocks.
    #[cfg(test)]
    pub(crate) fn to_qtensor(&self) -> Result<QTensor, EngineError> {
        let (dtype, gguf) = match self.format {
            BlockFormat::Q8_0 => (GgmlDType::Q8_0, self.whole_rows()),
            BlockFormat::Q4_1 => (GgmlDType::Q4_1, self.ungroup_q4_1()),
            BlockFormat::Q4K => (
                GgmlDType::Q4K,
                super::qgemv_k::repack_q4k(&self.whole_rows()),
            ),
            BlockFormat::Q6K => (GgmlDType::Q6K, self.whole_rows()),
        };
        Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(
            dtype,
            &gguf,
            vec![self.n_out, self.n_in],
            &candle_core::Device::Cpu,
        )?)
    }

    #[cfg(test)]
    fn ungroup_q4_1(&self) -> Vec<u8> {
        let blocks = self.n_in / BLOCK;
        let mut out = Vec::with_capacity(self.n_out * blocks * Q4_1_BYTES);
        let rows = self.whole_rows();
        for row in rows.chunks_exact(self.row_bytes()) {
            for b in 0..blocks {
                let g = &row[b / GROUP * Q4_1_GROUP_BYTES..];
                let j = b % GROUP;
                out.extend_from_slice(&g[64 + 2 * j..64 + 2 * j + 2]);
                out.extend_from_slice(&g[72 + 2 * j..72 + 2 * j + 2]);
                out.extend_from_slice(&g[16 * j..16 * j + 16]);
            }
        }
        out
    }

    pub(crate) fn n_out(&self) -> usize {
        self.n_out
    }

    fn row_bytes(&self) -> usize {
        let blocks = self.n_in / BLOCK;
        match self.format {
            BlockFormat::Q8_0 => blocks * Q8_0_BYTES,
            BlockFormat::Q4_1 => blocks.div_ceil(GROUP) * Q4_1_GROUP_BYTES,
            BlockFormat::Q4K => self.n_in / SUPER * Q4K_BYTES,
            BlockFormat::Q6K => self.n_in / SUPER * Q6K_BYTES,
        }
    }

    /// Row `r`: its units lie `stride` bytes apart (see [`interleave_rows`]).
    fn row(&self, r: usize) -> WeightRow<'_> {
        let n = self.row_bytes();
        let unit = self.format.unit_bytes();
        let rows_in_group = interleaved_rows(self.n_out);
        let start = r / rows_in_group * rows_in_group * n + r % rows_in_group * unit;
        let stride = rows_in_group * unit;
        WeightRow {
            bytes: &self.data[start..start + n / unit * stride - (stride - unit)],
            stride,
        }
    }

    /// The rows one after the other, each whole, in this module's layout of a row.
    #[cfg(test)]
    fn whole_rows(&self) -> Vec<u8> {
        let unit = self.format.unit_bytes();
        let mut out = Vec::with_capacity(self.data.len());
        for r in 0..self.n_out {
            let row = self.row(r);
            for u in 0..self.row_bytes() / unit {
                out.extend_from_slice(&row.bytes[u * row.stride..u * row.stride + unit]);
            }
        }
        out
    }
}

/// Rows per interleaved group of a weight: 4 when the rows come in fours, else 1.
fn interleaved_rows(n_out: usize) -> usize {
    if n_out.is_multiple_of(4) {
        4
    } else {
        1
    }
}

/// Rows of `block`-byte units, interleaved by groups of [`interleaved_rows`]: the first unit of
/// each of the group's rows, then their second ones, and so on. The kernels read four rows at
/// once, and this way they read them as one forward stream: with the rows apart, the four
/// streams ran at half the speed on the Qwen2.5-Coder-1.5B target (weights far larger than the
/// caches).
fn interleave_rows(rows: &[u8], n_out: usize, block: usize) -> Vec<u8> {
    let group = interleaved_rows(n_out);
    let supers = rows.len() / n_out.max(1) / block;
    let mut out = Vec::with_capacity(rows.len());
    for g in (0..n_out).step_by(group) {
        for s in 0..supers {
            for r in g..g + group {
                let at = (r * supers + s) * block;
                out.extend_from_slice(&rows[at..at + block]);
            }
        }
    }
    out
}

/// One row of a weight: unit `u` (block, group or super-block) at `bytes[u * stride..]`.
#[derive(Clone, Copy)]
pub(super) struct WeightRow<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) stride: usize,
}

/// GGUF Q4_1 rows (`blocks` blocks each) regrouped: per group of 4 blocks, their 4 x 16 bytes of
/// quants, then their 4 f16 scales, then their 4 f16 minimums; a row's last group padded with
/// zero blocks (which add exactly zero).
fn regroup_q4_1(gguf: &[u8], n_out: usize, blocks: usize) -> Vec<u8> {
    let groups = blocks.div_ceil(GROUP);
    let mut out = vec![0u8; n_out * groups * Q4_1_GROUP_BYTES];
    for r in 0..n_out {
        for b in 0..blocks {
            let src = &gguf[(r * blocks + b) * Q4_1_BYTES..][..Q4_1_BYTES];
            let (g, j) = (b / GROUP, b % GROUP);
            let dst = &mut out[(r * groups + g) * Q4_1_GROUP_BYTES..][..Q4_1_GROUP_BYTES];
            dst[16 * j..16 * j + 16].copy_from_slice(&src[4..20]);
            dst[64 + 2 * j..64 + 2 * j + 2].copy_from_slice(&src[0..2]);
            dst[72 + 2 * j..72 + 2 * j + 2].copy_from_slice(&src[2..4]);
        }
    }
    out
}

/// Input rows quantized to 8 bits per value in blocks of 32 (ggml's Q8_1): per block the scale
/// `d` (rounded to f16, as stored by ggml), `d` times the sum of the block's quants (`s`, also
/// f16-rounded; Q4_1's minimum multiplies it) and the 32 quants; plus the same values laid out
/// for the regrouped Q4_1 weights ([`GroupedRow`]).
pub(crate) struct QuantizedInput {
    d: Vec<f32>,
    qs: Vec<i8>,
    blocks_per_row: usize,
    /// Per input row, `groups` groups: low-half quants (64), high-half quants (64).
    grouped_qs: Vec<i8>,
    /// Per group, each block's scale 4 times (16).
    grouped_d: Vec<f32>,
    /// Per group, each block's `s` (4).
    grouped_s: Vec<f32>,
    groups_per_row: usize,
    /// The rows per super-block of 256, for the k-quant formats (when they are multiplied).
    k: Option<KInput>,
}

impl QuantizedInput {
    /// Quantizes `rows` rows of `x` (`x.len() / rows` values each, a multiple of 32) for every
    /// format that takes rows of that width.
    #[cfg(test)]
    pub(crate) fn new(x: &[f32], rows: usize) -> Self {
        let n_in = x.len() / rows.max(1);
        Self::for_formats(x, rows, true, n_in.is_multiple_of(SUPER))
    }

    /// Quantizes `rows` rows of `x` per block of 32 if `blocks` (Q8_0, Q4_1), per super-block
    /// of 256 if `supers` (Q4_K, Q6_K).
    fn for_formats(x: &[f32], rows: usize, blocks: bool, supers: bool) -> Self {
        let k = supers.then(|| KInput::new(x, rows));
        let n_in = x.len() / rows.max(1);
        let blocks_per_row = if blocks { n_in / BLOCK } else { 0 };
        let n_blocks = rows * blocks_per_row;
        let mut d = Vec::with_capacity(n_blocks);
        let mut s = Vec::with_capacity(n_blocks);
        let mut qs = vec![0i8; n_blocks * BLOCK];
        for (block, q) in x.chunks_exact(BLOCK).zip(qs.chunks_exact_mut(BLOCK)) {
            let scale = quantize_block(block, q);
            let sum: i32 = q.iter().map(|&v| i32::from(v)).sum();
            d.push(f16::from_f32(scale).to_f32());
            s.push(f16::from_f32(sum as f32 * scale).to_f32());
        }
        let groups_per_row = blocks_per_row.div_ceil(GROUP);
        let n_groups = rows * groups_per_row;
        let mut grouped_qs = vec![0i8; n_groups * 2 * GROUP * BLOCK / 2];
        let mut grouped_d = vec![0f32; n_groups * GROUP_LANES];
        let mut grouped_s = vec![0f32; n_groups * GROUP];
        for r in 0..rows {
            for b in 0..blocks_per_row {
                let src = r * blocks_per_row + b;
                let g = r * groups_per_row + b / GROUP;
                let j = b % GROUP;
                let q = &qs[src * BLOCK..(src + 1) * BLOCK];
                let dst = &mut grouped_qs[g * 128..(g + 1) * 128];
                dst[16 * j..16 * j + 16].copy_from_slice(&q[..16]);
                dst[64 + 16 * j..64 + 16 * j + 16].copy_from_slice(&q[16..]);
                grouped_d[g * GROUP_LANES + 4 * j..g * GROUP_LANES + 4 * j + 4].fill(d[src]);
                grouped_s[g * GROUP + j] = s[src];
            }
        }
        Self {
            d,
            qs,
            blocks_per_row,
            grouped_qs,
            grouped_d,
            grouped_s,
            groups_per_row,
            k,
        }
    }

    fn k_row(&self, r: usize) -> KRow<'_> {
        self.k
            .as_ref()
            .expect("the input was quantized per super-block")
            .row(r)
    }

    fn row(&self, r: usize) -> InputRow<'_> {
        let b = r * self.blocks_per_row..(r + 1) * self.blocks_per_row;
        InputRow {
            d: &self.d[b.clone()],
            qs: &self.qs[b.start * BLOCK..b.end * BLOCK],
        }
    }

    fn grouped_row(&self, r: usize) -> GroupedRow<'_> {
        let g = r * self.groups_per_row..(r + 1) * self.groups_per_row;
        GroupedRow {
            qs: &self.grouped_qs[g.start * 128..g.end * 128],
            d: &self.grouped_d[g.start * GROUP_LANES..g.end * GROUP_LANES],
            s: &self.grouped_s[g.start * GROUP..g.end * GROUP],
        }
    }
}

/// One input row for Q8_0 weights.
#[derive(Clone, Copy)]
struct InputRow<'a> {
    d: &'a [f32],
    qs: &'a [i8],
}

/// One input row for regrouped Q4_1 weights: per group, the quants of values 0..16 of its 4
/// blocks (64 bytes), then of values 16..32 (64), each block's scale 4 times (16 floats, one per
/// accumulator lane of the block) and each block's `s` (4).
#[derive(Clone, Copy)]
struct GroupedRow<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    s: &'a [f32],
}

pub(super) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Quantizes `block` to 8 bits into `q` (same length): scale = largest magnitude / 127, each
/// value rounded to the nearest step. Returns the scale (0 for an all-zero block).
pub(super) fn quantize_block(block: &[f32], q: &mut [i8]) -> f32 {
    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    for (qv, &v) in q.iter_mut().zip(block) {
        // |v * inv| <= 127 up to rounding, so the cast never saturates below -127.
        *qv = (v * inv).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// Sums 8 lanes as the SIMD kernels do: halves, then pairs, then the two.
fn hsum_lanes(acc: &[f32; LANES]) -> f32 {
    let q: [f32; 4] = std::array::from_fn(|i| acc[i] + acc[i + 4]);
    let p = [q[0] + q[2], q[1] + q[3]];
    p[0] + p[1]
}

/// Sums 16 lanes as the SIMD kernels do: the two halves, then [`hsum_lanes`].
pub(super) fn hsum16(acc: &[f32; GROUP_LANES]) -> f32 {
    hsum_lanes(&std::array::from_fn(|i| acc[i] + acc[i + LANES]))
}

/// Sums a group's 4 minimum terms as the SIMD kernels do.
pub(super) fn hsum4(acc: &[f32; GROUP]) -> f32 {
    (acc[0] + acc[2]) + (acc[1] + acc[3])
}

/// Portable Q8_0 dot product of one weight row with one input row, lane by lane as the AVX2
/// kernel does it: lane `l` of a block holds the integer products of its values `4l..4l + 4`.
fn dot_q8_0_portable(w: WeightRow<'_>, x: InputRow<'_>) -> f32 {
    let mut acc = [0f32; LANES];
    for b in 0..x.d.len() {
        let wb = &w.bytes[b * w.stride..b * w.stride + Q8_0_BYTES];
        let xq = &x.qs[b * BLOCK..(b + 1) * BLOCK];
        let scale = f16_at(wb, 0) * x.d[b];
        for (l, a) in acc.iter_mut().enumerate() {
            let isum: i32 = (4 * l..4 * l + 4)
                .map(|j| i32::from(wb[2 + j] as i8) * i32::from(xq[j]))
                .sum();
            *a = scale.mul_add(isum as f32, *a);
        }
    }
    hsum_lanes(&acc)
}

/// Portable Q4_1 dot product of one regrouped weight row with one input row, lane by lane as the
/// AVX-512 kernel does it: lane `l` of a group belongs to block `l / 4` and sums the products of
/// its values `4(l % 4)..+4` and `16 + 4(l % 4)..+4` (the low and high nibbles of its quant bytes
/// `4(l % 4)..+4`).
fn dot_q4_1_portable(w: WeightRow<'_>, x: GroupedRow<'_>) -> f32 {
    let mut acc = [0f32; GROUP_LANES];
    let mut acc_min = [0f32; GROUP];
    for g in 0..x.s.len() / GROUP {
        let wg = &w.bytes[g * w.stride..g * w.stride + Q4_1_GROUP_BYTES];
        let xlo = &x.qs[g * 128..g * 128 + 64];
        let xhi = &x.qs[g * 128 + 64..g * 128 + 128];
        for (l, a) in acc.iter_mut().enumerate() {
            let b = l / 4;
            let isum: i32 = (4 * l..4 * l + 4)
                .map(|byte| {
                    i32::from(wg[byte] & 0x0F) * i32::from(xlo[byte])
                        + i32::from(wg[byte] >> 4) * i32::from(xhi[byte])
                })
                .sum();
            let scale = f16_at(wg, 64 + 2 * b) * x.d[g * GROUP_LANES + l];
            *a = scale.mul_add(isum as f32, *a);
        }
        for (b, m) in acc_min.iter_mut().enumerate() {
            *m = f16_at(wg, 72 + 2 * b).mul_add(x.s[g * GROUP + b], *m);
        }
    }
    hsum16(&acc) + hsum4(&acc_min)
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::super::qgemv_k::x86 as k;
    use super::{
        hsum16, hsum4, hsum_lanes, GroupedRow, InputRow, KRow, WeightRow, BLOCK, GROUP,
        GROUP_LANES, LANES,
    };
    use std::arch::x86_64::*;

    /// 8 lanes of `sum over 4 bytes of u8 * i8`, added to `acc` (exact integers: the order of
    /// the additions does not matter). With VNNI one instruction does it.
    #[inline(always)]
    unsafe fn dot_u8_i8<const VNNI: bool>(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        if VNNI {
            _mm256_dpbusd_epi32(acc, u, s)
        } else {
            let pairs = _mm256_maddubs_epi16(u, s);
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }

    #[inline(always)]
    unsafe fn store8(acc: __m256) -> [f32; LANES] {
        let mut out = [0f32; LANES];
        _mm256_storeu_ps(out.as_mut_ptr(), acc);
        out
    }

    #[inline(always)]
    pub(in crate::model) unsafe fn store4(acc: __m128) -> [f32; GROUP] {
        let mut out = [0f32; GROUP];
        _mm_storeu_ps(out.as_mut_ptr(), acc);
        out
    }

    #[inline(always)]
    pub(in crate::model) unsafe fn f16_at_ptr(p: *const u8) -> f32 {
        half::f16::from_bits(u16::from_le_bytes([*p, *p.add(1)])).to_f32()
    }

    /// Four f16 values at `p` as f32.
    #[inline(always)]
    unsafe fn f16x4(p: *const u8) -> __m128 {
        _mm_cvtph_ps(_mm_loadl_epi64(p as *const __m128i))
    }

    /// Q8_0 dot products of `R` weight rows with `N` input rows, each accumulated exactly as
    /// `super::dot_q8_0_portable` does; each weight block is loaded and its scale converted once
    /// for all `N` inputs (a verify step, a batch or a prompt multiplies several rows by the
    /// same weights).
    ///
    /// The integer sums are exact either way: with VNNI, the unsigned operand is the input plus
    /// 128 (its sign bit flipped) and `128 * sum(w)`, one more `vpdpbusd` per weight block that
    /// every input shares, is taken off; without, `|w| * sign(w) x` keeps the unsigned operand
    /// non-negative (`maddubs`'s i16 pair sums cannot saturate: 2 * 128 * 127 < 32768).
    #[inline(always)]
    unsafe fn dot_q8_0<const VNNI: bool, const R: usize, const N: usize>(
        rows: [WeightRow<'_>; R],
        x: [InputRow<'_>; N],
    ) -> [[f32; R]; N] {
        let mut acc = [[_mm256_setzero_ps(); R]; N];
        let zero = _mm256_setzero_si256();
        let offset = _mm256_set1_epi8(i8::MIN);
        for b in 0..x[0].d.len() {
            // Explicit loops, not `array::map`: its closures are not always inlined here.
            let mut xq = [zero; N];
            let mut xd = [_mm256_setzero_ps(); N];
            for j in 0..N {
                let q = _mm256_loadu_si256(x[j].qs.as_ptr().add(b * BLOCK) as *const __m256i);
                // With VNNI the unsigned operand: the input plus 128.
                xq[j] = if VNNI { _mm256_xor_si256(q, offset) } else { q };
                xd[j] = _mm256_set1_ps(*x[j].d.get_unchecked(b));
            }
            for r in 0..R {
                let wb = rows[r].bytes.as_ptr().add(b * rows[r].stride);
                let wq = _mm256_loadu_si256(wb.add(2) as *const __m256i);
                let wd = _mm256_set1_ps(f16_at_ptr(wb));
                if VNNI {
                    let bias = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, offset, wq));
                    for j in 0..N {
                        let isum = _mm256_dpbusd_epi32(bias, xq[j], wq);
                        let scale = _mm256_mul_ps(wd, xd[j]);
                        acc[j][r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(isum), acc[j][r]);
                    }
                } else {
                    let wabs = _mm256_sign_epi8(wq, wq);
                    for j in 0..N {
                        let isum = dot_u8_i8::<false>(zero, wabs, _mm256_sign_epi8(xq[j], wq));
                        let scale = _mm256_mul_ps(wd, xd[j]);
                        acc[j][r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(isum), acc[j][r]);
                    }
                }
            }
        }
        acc.map(|acc| acc.map(|a| hsum_lanes(&store8(a))))
    }

    /// Q4_1 dot products of `R` regrouped weight rows with one input row, 256 bits at a time:
    /// each group is two halves of the AVX-512 kernel's 16 lanes, so the results are the same.
    #[inline(always)]
    unsafe fn dot_q4_1_avx2<const VNNI: bool, const R: usize>(
        rows: [WeightRow<'_>; R],
        x: GroupedRow<'_>,
    ) -> [f32; R] {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let mut acc_min = [_mm_setzero_ps(); R];
        let low = _mm256_set1_epi8(0x0F);
        let first_pair = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
        let second_pair = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);
        let groups = x.s.len() / GROUP;
        for g in 0..groups {
            let xq = x.qs.as_ptr().add(g * 128);
            let xlo = [
                _mm256_loadu_si256(xq as *const __m256i),
                _mm256_loadu_si256(xq.add(32) as *const __m256i),
            ];
            let xhi = [
                _mm256_loadu_si256(xq.add(64) as *const __m256i),
                _mm256_loadu_si256(xq.add(96) as *const __m256i),
            ];
            let xd = [
                _mm256_loadu_ps(x.d.as_ptr().add(g * GROUP_LANES)),
                _mm256_loadu_ps(x.d.as_ptr().add(g * GROUP_LANES + LANES)),
            ];
            let xs = _mm_loadu_ps(x.s.as_ptr().add(g * GROUP));
            for r in 0..R {
                let wg = rows[r].bytes.as_ptr().add(g * rows[r].stride);
                let wd = _mm256_castps128_ps256(f16x4(wg.add(64)));
                let wd = [
                    _mm256_permutevar8x32_ps(wd, first_pair),
                    _mm256_permutevar8x32_ps(wd, second_pair),
                ];
                for h in 0..2 {
                    let packed = _mm256_loadu_si256(wg.add(32 * h) as *const __m256i);
                    let lo = _mm256_and_si256(packed, low);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low);
                    let isum = dot_u8_i8::<VNNI>(_mm256_setzero_si256(), lo, xlo[h]);
                    let isum = dot_u8_i8::<VNNI>(isum, hi, xhi[h]);
                    let scale = _mm256_mul_ps(wd[h], xd[h]);
                    acc[r][h] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(isum), acc[r][h]);
                }
                acc_min[r] = _mm_fmadd_ps(f16x4(wg.add(72)), xs, acc_min[r]);
            }
        }
        std::array::from_fn(|r| {
            let lanes: [f32; GROUP_LANES] = {
                let (a, b) = (store8(acc[r][0]), store8(acc[r][1]));
                std::array::from_fn(|i| if i < LANES { a[i] } else { b[i - LANES] })
            };
            hsum16(&lanes) + hsum4(&store4(acc_min[r]))
        })
    }

    /// Q4_1 dot products of `R` regrouped weight rows with `N` input rows, a group (4 blocks,
    /// 128 values) per 512-bit step. Each weight group is loaded, unpacked and its scales spread
    /// once for all `N` inputs (at one input that work is as much as the dot products
    /// themselves); every accumulator takes the same operations in the same order whatever `N`.
    #[inline(always)]
    unsafe fn dot_q4_1_avx512<const R: usize, const N: usize>(
        rows: [WeightRow<'_>; R],
        x: [GroupedRow<'_>; N],
    ) -> [[f32; R]; N] {
        let mut acc = [[_mm512_setzero_ps(); R]; N];
        let mut acc_min = [[_mm_setzero_ps(); R]; N];
        let low = _mm512_set1_epi8(0x0F);
        let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        let groups = x[0].s.len() / GROUP;
        for g in 0..groups {
            // Explicit loops, not `array::map`: its closures are not always inlined here.
            let mut xlo = [_mm512_setzero_si512(); N];
            let mut xhi = [_mm512_setzero_si512(); N];
            let mut xd = [_mm512_setzero_ps(); N];
            let mut xs = [_mm_setzero_ps(); N];
            for j in 0..N {
                let xq = x[j].qs.as_ptr().add(g * 128);
                xlo[j] = _mm512_loadu_si512(xq as *const __m512i);
                xhi[j] = _mm512_loadu_si512(xq.add(64) as *const __m512i);
                xd[j] = _mm512_loadu_ps(x[j].d.as_ptr().add(g * GROUP_LANES));
                xs[j] = _mm_loadu_ps(x[j].s.as_ptr().add(g * GROUP));
            }
            for r in 0..R {
                let wg = rows[r].bytes.as_ptr().add(g * rows[r].stride);
                let packed = _mm512_loadu_si512(wg as *const __m512i);
                let lo = _mm512_and_si512(packed, low);
                let hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low);
                let wd = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(f16x4(wg.add(64))));
                let wmin = f16x4(wg.add(72));
                for j in 0..N {
                    let isum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xlo[j]);
                    let isum = _mm512_dpbusd_epi32(isum, hi, xhi[j]);
                    let scale = _mm512_mul_ps(wd, xd[j]);
                    acc[j][r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(isum), acc[j][r]);
                    acc_min[j][r] = _mm_fmadd_ps(wmin, xs[j], acc_min[j][r]);
                }
            }
        }
        std::array::from_fn(|j| {
            std::array::from_fn(|r| {
                let mut lanes = [0f32; GROUP_LANES];
                _mm512_storeu_ps(lanes.as_mut_ptr(), acc[j][r]);
                hsum16(&lanes) + hsum4(&store4(acc_min[j][r]))
            })
        })
    }

    /// The kernels a CPU level runs: `R` weight rows against `N` input rows for the block
    /// formats, against one input row for the k-quants.
    pub(super) trait Level {
        unsafe fn q8_0<const R: usize, const N: usize>(
            rows: [WeightRow<'_>; R],
            x: [InputRow<'_>; N],
        ) -> [[f32; R]; N];
        unsafe fn q4_1<const R: usize, const N: usize>(
            rows: [WeightRow<'_>; R],
            x: [GroupedRow<'_>; N],
        ) -> [[f32; R]; N];
        unsafe fn q4k<const R: usize>(rows: [WeightRow<'_>; R], x: KRow<'_>) -> [f32; R];
        unsafe fn q6k<const R: usize>(rows: [WeightRow<'_>; R], x: KRow<'_>) -> [f32; R];
    }

    pub(super) struct Avx2;
    pub(super) struct Avx512;

    impl Level for Avx2 {
        #[inline(always)]
        unsafe fn q8_0<const R: usize, const N: usize>(
            rows: [WeightRow<'_>; R],
            x: [InputRow<'_>; N],
        ) -> [[f32; R]; N] {
            dot_q8_0::<false, R, N>(rows, x)
        }
        #[inline(always)]
        unsafe fn q4_1<const R: usize, const N: usize>(
            rows: [WeightRow<'_>; R],
            x: [GroupedRow<'_>; N],
        ) -> [[f32; R]; N] {
            x.map(|x| dot_q4_1_avx2::<false, R>(rows, x))
        }
        #[inline(always)]
        unsafe fn q4k<const R: usize>(rows: [WeightRow<'_>; R], x: KRow<'_>) -> [f32; R] {
            k::dot_q4k_avx2::<false, R>(rows, x)
        }
        #[inline(always)]
        unsafe fn q6k<const R: usize>(rows: [WeightRow<'_>; R], x: KRow<'_>) -> [f32; R] {
            k::dot_q6k_avx2::<false, R>(rows, x)
        }
    }

    impl Level for Avx512 {
        #[inline(always)]
        unsafe fn q8_0<const R: usize, const N: usize>(
            rows: [WeightRow<'_>; R],
            x: [InputRow<'_>; N],
        ) -> [[f32; R]; N] {
            dot_q8_0::<true, R, N>(rows, x)
        }
        #[inline(always)]
        unsafe fn q4_1<const R: usize, const N: usize>(
            rows: [WeightRow<'_>; R],
            x: [GroupedRow<'_>; N],
        ) -> [[f32; R]; N] {
            dot_q4_1_avx512::<R, N>(rows, x)
        }
        #[inline(always)]
        unsafe fn q4k<const R: usize>(rows: [WeightRow<'_>; R], x: KRow<'_>) -> [f32; R] {
            k::dot_q4k_avx512::<R>(rows, x)
        }
        #[inline(always)]
        unsafe fn q6k<const R: usize>(rows: [WeightRow<'_>; R], x: KRow<'_>) -> [f32; R] {
            k::dot_q6k_avx512::<R>(rows, x)
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn rows_avx2(
        w: &super::QuantWeights,
        rows: std::ops::Range<usize>,
        input: &super::QuantizedInput,
        m: usize,
        out: *mut f32,
    ) {
        super::rows_with::<Avx2>(w, rows, input, m, out)
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn rows_avx512(
        w: &super::QuantWeights,
        rows: std::ops::Range<usize>,
        input: &super::QuantizedInput,
        m: usize,
        out: *mut f32,
    ) {
        super::rows_with::<Avx512>(w, rows, input, m, out)
    }
}

/// Output rows `rows` of `w` for every input row, written at `out[i * n_out + r]`, four weight
/// rows per pass over the input; Q8_0 and Q4_1 weights against up to [`INPUTS_PER_PASS`] input
/// rows per pass (the positions of a verify step, a batch, a prompt).
///
/// # Safety
/// The CPU must have the features of `L`; `out` must hold `m * w.n_out()` values, `rows` must lie
/// within `0..w.n_out()` and `input` must hold `m` rows of `w`'s width.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn rows_with<L: x86::Level>(
    w: &QuantWeights,
    rows: std::ops::Range<usize>,
    input: &QuantizedInput,
    m: usize,
    out: *mut f32,
) {
    let mut r = rows.start;
    while r < rows.end {
        match w.format {
            BlockFormat::Q8_0 => r += block_rows::<L, true>(w, r, rows.end, input, m, out),
            BlockFormat::Q4_1 => r += block_rows::<L, false>(w, r, rows.end, input, m, out),
            BlockFormat::Q4K | BlockFormat::Q6K => {
                // Four k-quant rows at once only from an interleaved group's first row (see
                // `interleave_rows`).
                if r + 4 <= rows.end && r.is_multiple_of(4) && interleaved_rows(w.n_out) == 4 {
                    let ws = [w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)];
                    for i in 0..m {
                        let values = k_rows::<L, 4>(w.format, ws, input, i);
                        write_values(out, w.n_out, i, r, values);
                    }
                    r += 4;
                } else {
                    for i in 0..m {
                        write_values(
                            out,
                            w.n_out,
                            i,
                            r,
                            k_rows::<L, 1>(w.format, [w.row(r)], input, i),
                        );
                    }
                    r += 1;
                }
            }
        }
    }
}

/// Input rows per pass over a group of Q8_0 weight rows: enough to share each weight block's
/// load and scale among the positions of a verify step, few enough for the registers.
const INPUTS_PER_PASS: usize = 4;

/// Q8_0 (`Q8`) or Q4_1 weight rows from row `r` (four if `r + 4 <= end`, else one) against
/// every input row; returns how many weight rows it did.
///
/// # Safety
/// As [`rows_with`], with `r < end <= w.n_out()`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block_rows<L: x86::Level, const Q8: bool>(
    w: &QuantWeights,
    r: usize,
    end: usize,
    input: &QuantizedInput,
    m: usize,
    out: *mut f32,
) -> usize {
    if r + 4 <= end {
        let ws = [w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)];
        block_inputs_all::<L, 4, Q8>(w, ws, r, input, m, out);
        4
    } else {
        block_inputs_all::<L, 1, Q8>(w, [w.row(r)], r, input, m, out);
        1
    }
}

/// `R` Q8_0 (`Q8`) or Q4_1 weight rows from row `r` against every input row, up to
/// [`INPUTS_PER_PASS`] at a time.
///
/// # Safety
/// As [`rows_with`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block_inputs_all<L: x86::Level, const R: usize, const Q8: bool>(
    w: &QuantWeights,
    ws: [WeightRow<'_>; R],
    r: usize,
    input: &QuantizedInput,
    m: usize,
    out: *mut f32,
) {
    let mut i = 0;
    if Q8 {
        // A remainder is split evenly (5 = 3 + 2, not 4 + 1).
        while i < m {
            let n = match m - i {
                5 => 3,
                left => left.min(INPUTS_PER_PASS),
            };
            match n {
                4 => block_inputs::<L, R, 4, Q8>(w, ws, r, input, i, out),
                3 => block_inputs::<L, R, 3, Q8>(w, ws, r, input, i, out),
                2 => block_inputs::<L, R, 2, Q8>(w, ws, r, input, i, out),
                _ => block_inputs::<L, R, 1, Q8>(w, ws, r, input, i, out),
            }
            i += n;
        }
    } else {
        // Q4_1's accumulators fill the registers at two inputs (more spill and run slower).
        while i + 2 <= m {
            block_inputs::<L, R, 2, Q8>(w, ws, r, input, i, out);
            i += 2;
        }
        if i < m {
            block_inputs::<L, R, 1, Q8>(w, ws, r, input, i, out);
        }
    }
}

/// `R` Q8_0 (`Q8`) or Q4_1 weight rows from row `r` against input rows `i..i + N`. The format is
/// a constant, so each instance holds one kernel (a format chosen at run time here, with both
/// kernels in one function, ran Q4_1 markedly slower).
///
/// # Safety
/// As [`rows_with`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn block_inputs<L: x86::Level, const R: usize, const N: usize, const Q8: bool>(
    w: &QuantWeights,
    ws: [WeightRow<'_>; R],
    r: usize,
    input: &QuantizedInput,
    i: usize,
    out: *mut f32,
) {
    let values = if Q8 {
        L::q8_0::<R, N>(ws, std::array::from_fn(|j| input.row(i + j)))
    } else {
        L::q4_1::<R, N>(ws, std::array::from_fn(|j| input.grouped_row(i + j)))
    };
    for (j, v) in values.into_iter().enumerate() {
        write_values(out, w.n_out, i + j, r, v);
    }
}

/// Writes `values` as outputs `r..r + R` of input row `i`.
///
/// # Safety
/// `out` must hold at least `(i + 1) * n_out` values and `r + R <= n_out`.
#[inline(always)]
unsafe fn write_values<const R: usize>(
    out: *mut f32,
    n_out: usize,
    i: usize,
    r: usize,
    values: [f32; R],
) {
    let out_row = out.add(i * n_out + r);
    for (j, v) in values.into_iter().enumerate() {
        *out_row.add(j) = v;
    }
}

/// `R` k-quant weight rows against input row `i`, by the level's kernel for the format.
///
/// # Safety
/// As [`rows_with`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn k_rows<L: x86::Level, const R: usize>(
    format: BlockFormat,
    rows: [WeightRow<'_>; R],
    input: &QuantizedInput,
    i: usize,
) -> [f32; R] {
    match format {
        BlockFormat::Q4K => L::q4k::<R>(rows, input.k_row(i)),
        BlockFormat::Q6K => L::q6k::<R>(rows, input.k_row(i)),
        BlockFormat::Q8_0 | BlockFormat::Q4_1 => unreachable!("block formats go to block_rows"),
    }
}

/// The widest integer-dot instructions this CPU has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Simd {
    Portable,
    Avx2,
    Avx512,
}

fn simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        static LEVEL: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
        *LEVEL.get_or_init(|| {
            if !(has!("avx2") && has!("fma") && has!("f16c")) {
                Simd::Portable
            } else if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni")
            {
                Simd::Avx512
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

/// One output value the portable way.
fn dot_portable(w: &QuantWeights, r: usize, input: &QuantizedInput, i: usize) -> f32 {
    match w.format {
        BlockFormat::Q8_0 => dot_q8_0_portable(w.row(r), input.row(i)),
        BlockFormat::Q4_1 => dot_q4_1_portable(w.row(r), input.grouped_row(i)),
        BlockFormat::Q4K => dot_q4k_portable(w.row(r), input.k_row(i)),
        BlockFormat::Q6K => dot_q6k_portable(w.row(r), input.k_row(i)),
    }
}

/// Output rows `rows` of `w` for every input row, written at `out[i * n_out + r]`.
///
/// # Safety
/// `out` must hold `m * w.n_out()` values, `rows` must lie within `0..w.n_out()` and `input` must
/// hold `m` rows of `w`'s width.
unsafe fn rows_into(
    w: &QuantWeights,
    rows: std::ops::Range<usize>,
    input: &QuantizedInput,
    m: usize,
    out: *mut f32,
) {
    // SAFETY: `simd()` checked the CPU's features; the kernels read whole blocks (groups) of rows
    // of `w` and of `input`, which have the same width.
    match simd() {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { x86::rows_avx512(w, rows, input, m, out) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { x86::rows_avx2(w, rows, input, m, out) },
        _ => {
            for r in rows {
                for i in 0..m {
                    // SAFETY: in bounds by the caller's contract.
                    unsafe { *out.add(i * w.n_out + r) = dot_portable(w, r, input, i) };
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
    let input = QuantizedInput::for_formats(
        x,
        m,
        weights.iter().any(|w| !w.format.is_k_quant()),
        weights.iter().any(|w| w.format.is_k_quant()),
    );
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
        // 22 rows (five passes of four, two single rows), seven input rows (four, two and one
        // per pass); 576 inputs are 18 blocks (four Q4_1 groups and a padded one), 768 are
        // three super-blocks.
        const M: usize = 7;
        for (dtype, n_in) in [
            (GgmlDType::Q8_0, 576),
            (GgmlDType::Q4_1, 576),
            (GgmlDType::Q4K, 768),
            (GgmlDType::Q6K, 768),
        ] {
            // 22 rows: k-quant rows one by one; 24: in interleaved groups of four, read from
            // a group's first row and, for rows 2..24, from inside one.
            for (n_out, first) in [(22, 0), (24, 0), (24, 2)] {
                let (w, _) = weights(dtype, n_out, n_in);
                let x: Vec<f32> = values(M * n_in, 11).iter().map(|v| v * 3.0).collect();
                let input = QuantizedInput::new(&x, M);
                let portable: Vec<f32> = (0..M)
                    .flat_map(|i| (0..n_out).map(move |r| (i, r)))
                    .map(|(i, r)| {
                        if r < first {
                            0.0
                        } else {
                            dot_portable(&w, r, &input, i)
                        }
                    })
                    .collect();
                #[cfg(target_arch = "x86_64")]
                {
                    use std::arch::is_x86_feature_detected as has;
                    let mut checked = 0;
                    if has!("avx2") && has!("fma") && has!("f16c") {
                        let mut out = vec![0f32; M * n_out];
                        // SAFETY: the features are checked; `out` holds M x n_out values.
                        unsafe { x86::rows_avx2(&w, first..n_out, &input, M, out.as_mut_ptr()) };
                        assert_eq!(out, portable, "{dtype:?}, {n_out} rows, AVX2");
                        checked += 1;
                    }
                    if simd() == Simd::Avx512 {
                        let mut out = vec![0f32; M * n_out];
                        // SAFETY: as above.
                        unsafe { x86::rows_avx512(&w, first..n_out, &input, M, out.as_mut_ptr()) };
                        assert_eq!(out, portable, "{dtype:?}, {n_out} rows, AVX-512");
                        checked += 1;
                    }
                    eprintln!("{dtype:?}: {checked} SIMD levels checked against the portable one");
                }
                if first == 0 {
                    assert_eq!(gemv(&[&w], &x, M).remove(0), portable, "{dtype:?}");
                }
            }
        }
    }

    #[test]
    fn regrouped_unpacked_and_interleaved_layouts_keep_every_value() {
        for (dtype, n_in, n_out) in [
            (GgmlDType::Q8_0, 96, 8),
            (GgmlDType::Q4_1, 96 + 256, 5),
            (GgmlDType::Q4_1, 96 + 256, 8),
            (GgmlDType::Q4K, 512, 5),
            (GgmlDType::Q4K, 512, 8),
            (GgmlDType::Q6K, 512, 8),
        ] {
            let (w, dense) = weights(dtype, n_out, n_in);
            let back = w
                .to_qtensor()
                .expect("qtensor")
                .dequantize(&Device::Cpu)
                .expect("dequantize")
                .flatten_all()
                .expect("flat")
                .to_vec1::<f32>()
                .expect("values");
            assert_eq!(back, dense, "{dtype:?}");
        }
    }

    #[test]
    fn products_match_the_dequantized_weights() {
        for (dtype, n_in) in [
            (GgmlDType::Q8_0, 96),
            (GgmlDType::Q4_1, 96),
            (GgmlDType::Q4K, 512),
            (GgmlDType::Q6K, 512),
        ] {
            let n_out = 40;
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
                    // Super-blocks share the bound: their largest magnitude is <= 1 too.
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
        // Formats of both input layouts in one group (as Q, K and V can be).
        let (w, _) = weights(GgmlDType::Q4_1, 48, 256);
        let (v, _) = weights(GgmlDType::Q8_0, 16, 256);
        let (t, _) = weights(GgmlDType::Q4K, 20, 256);
        let (u, _) = weights(GgmlDType::Q6K, 16, 256);
        let group = [&w, &v, &t, &u];
        let x = values(5 * 256, 9);
        let together = gemv(&group, &x, 5);
        for i in 0..5 {
            let alone = gemv(&group, &x[i * 256..(i + 1) * 256], 1);
            for (t, a) in together.iter().zip(&alone) {
                let n = a.len();
                assert_eq!(&t[i * n..(i + 1) * n], a.as_slice());
            }
        }
    }

    #[test]
    fn unsupported_types_and_widths_are_left_to_candle() {
        let w = Tensor::from_vec(values(16 * 256, 1), (16, 256), &Device::Cpu).expect("w");
        for dtype in [GgmlDType::Q5_0, GgmlDType::Q5K, GgmlDType::Q2K] {
            let q = QTensor::quantize(&w, dtype).expect("quantize");
            assert!(
                QuantWeights::from_qtensor(&q).expect("ok").is_none(),
                "{dtype:?}"
            );
        }
    }
}
