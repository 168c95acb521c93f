//! The k-quant formats of [`super::qgemv`]: Q4_K and Q6_K weights (super-blocks of 256 values)
//! against input rows quantized to 8 bits per super-block (ggml's Q8_K: one f32 scale per 256
//! values, plus the exact sums of the quants per 16 and per 32 values).
//!
//! Arithmetic, per super-block of a weight row and an input row (ggml's `vec_dot_q4_K_q8_K` /
//! `vec_dot_q6_K_q8_K`): every sub-block's integer dot product, times its integer scale, summed
//! exactly in 32-bit lanes; then one fused multiply-add of `d_weight * d_input` per lane. Q4_K's
//! minimums (`dmin * m_j` times the input's sum over sub-block `j`) and Q6_K's offset of 32
//! (`32 * scale_j` times the input's sum over 16 values) come from the input's exact sums, so
//! the weights' quants are multiplied as unsigned bytes (VNNI's `vpdpbusd`).
//!
//! Layouts: Q6_K stays in its GGUF blocks (low 4 bits, high 2 bits, 16 signed scales, f16 `d`).
//! Q4_K is unpacked at load from 144 to 148 bytes per super-block: the 128 bytes of quants as
//! they are, the eight 6-bit scales and eight 6-bit minimums as bytes (scales in sub-block order
//! 0, 2, 1, 3, 4, 6, 5, 7: the order a 512-bit load of two 32-byte chunks meets them), `d` and
//! `dmin`. The input's quants for Q4_K are stored in the same sub-block order.
//!
//! As in `super::qgemv`, the AVX-512, AVX2 and portable kernels give bit-identical results
//! (tested): lane `l` of a super-block's integer accumulator holds the same products in each.
use super::qgemv::{f16_at, hsum16, hsum4, quantize_block, WeightRow};

/// Values per super-block.
pub(super) const SUPER: usize = 256;
/// Bytes of a Q4_K super-block in a GGUF file.
pub(super) const Q4K_GGUF_BYTES: usize = 144;
/// Bytes of an unpacked Q4_K super-block: 128 quants, 8 scales, 8 minimums, `d`, `dmin`.
pub(super) const Q4K_BYTES: usize = 148;
/// Bytes of a Q6_K super-block (GGUF layout): 128 low, 64 high, 16 scales, `d`.
pub(super) const Q6K_BYTES: usize = 210;
/// Integer lanes of a super-block's accumulator (one AVX-512 register).
const LANES: usize = 16;
/// Where the scales of sub-blocks 0..8 sit in an unpacked Q4_K super-block (and where the input's
/// sub-blocks sit in its Q4_K order).
const Q4K_ORDER: [usize; 8] = [0, 2, 1, 3, 4, 6, 5, 7];

/// GGUF Q4_K rows unpacked (see the module documentation).
pub(super) fn unpack_q4k(gguf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(gguf.len() / Q4K_GGUF_BYTES * Q4K_BYTES);
    for b in gguf.chunks_exact(Q4K_GGUF_BYTES) {
        let (d, dmin, scales, qs) = (&b[0..2], &b[2..4], &b[4..16], &b[16..144]);
        // ggml's `get_scale_min_k4`: 6-bit scales and minimums packed into 12 bytes.
        let scale_min = |j: usize| -> (u8, u8) {
            if j < 4 {
                (scales[j] & 63, scales[j + 4] & 63)
            } else {
                (
                    (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4),
                    (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
                )
            }
        };
        out.extend_from_slice(qs);
        out.extend(Q4K_ORDER.iter().map(|&j| scale_min(j).0));
        out.extend((0..8).map(|j| scale_min(j).1));
        out.extend_from_slice(d);
        out.extend_from_slice(dmin);
    }
    out
}

/// Unpacked Q4_K rows back in GGUF blocks (the 6-bit fields packed again).
#[cfg(test)]
pub(super) fn repack_q4k(unpacked: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(unpacked.len() / Q4K_BYTES * Q4K_GGUF_BYTES);
    for b in unpacked.chunks_exact(Q4K_BYTES) {
        let mut sc = [0u8; 8];
        for (i, &j) in Q4K_ORDER.iter().enumerate() {
            sc[j] = b[128 + i];
        }
        let m = &b[136..144];
        let mut packed = [0u8; 12];
        for j in 0..4 {
            packed[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            packed[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
            packed[j + 8] = (sc[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4);
        }
        out.extend_from_slice(&b[144..148]);
        out.extend_from_slice(&packed);
        out.extend_from_slice(&b[..128]);
    }
    out
}

/// Input rows quantized per super-block of 256 (ggml's Q8_K).
pub(super) struct KInput {
    /// Per super-block, the scale.
    d: Vec<f32>,
    /// Per super-block, the 256 quants in their own order (for Q6_K).
    qs: Vec<i8>,
    /// Per super-block, the quants in Q4_K's sub-block order.
    qs_q4k: Vec<i8>,
    /// Per super-block, the sums of the quants over each 16 values.
    sums16: Vec<i16>,
    /// Per super-block, the sums over each 32 values (sub-blocks in their own order).
    sums32: Vec<i16>,
    supers_per_row: usize,
}

impl KInput {
    /// Quantizes `rows` rows of `x` (`x.len() / rows` values each, a multiple of 256).
    pub(super) fn new(x: &[f32], rows: usize) -> Self {
        let n_in = x.len() / rows.max(1);
        let supers_per_row = n_in / SUPER;
        let n = rows * supers_per_row;
        let mut d = Vec::with_capacity(n);
        let mut qs = vec![0i8; n * SUPER];
        let mut qs_q4k = vec![0i8; n * SUPER];
        let mut sums16 = vec![0i16; n * 16];
        let mut sums32 = vec![0i16; n * 8];
        for (s, block) in x.chunks_exact(SUPER).enumerate() {
            let q = &mut qs[s * SUPER..(s + 1) * SUPER];
            let scale = quantize_block(block, q);
            for (i, chunk) in q.chunks_exact(16).enumerate() {
                sums16[s * 16 + i] = chunk.iter().map(|&v| i16::from(v)).sum();
            }
            for j in 0..8 {
                sums32[s * 8 + j] = sums16[s * 16 + 2 * j] + sums16[s * 16 + 2 * j + 1];
            }
            let reordered = &mut qs_q4k[s * SUPER..(s + 1) * SUPER];
            for (i, &j) in Q4K_ORDER.iter().enumerate() {
                reordered[32 * i..32 * i + 32].copy_from_slice(&q[32 * j..32 * j + 32]);
            }
            d.push(scale);
        }
        Self {
            d,
            qs,
            qs_q4k,
            sums16,
            sums32,
            supers_per_row,
        }
    }

    pub(super) fn row(&self, r: usize) -> KRow<'_> {
        let s = r * self.supers_per_row..(r + 1) * self.supers_per_row;
        KRow {
            d: &self.d[s.clone()],
            qs: &self.qs[s.start * SUPER..s.end * SUPER],
            qs_q4k: &self.qs_q4k[s.start * SUPER..s.end * SUPER],
            sums16: &self.sums16[s.start * 16..s.end * 16],
            sums32: &self.sums32[s.start * 8..s.end * 8],
        }
    }
}

/// One input row of a [`KInput`].
#[derive(Clone, Copy)]
pub(super) struct KRow<'a> {
    d: &'a [f32],
    qs: &'a [i8],
    qs_q4k: &'a [i8],
    sums16: &'a [i16],
    sums32: &'a [i16],
}

/// Portable Q4_K dot product of one unpacked weight row with one input row, lane by lane as the
/// AVX-512 kernel: in the half `p` of a super-block, lane `l` holds bytes `4(l % 8)..+4` of quant
/// chunk `2p + l / 8`: low nibbles (sub-block `4p + 2(l / 8)`) and high nibbles (the next one).
pub(super) fn dot_q4k_portable(w: WeightRow<'_>, x: KRow<'_>) -> f32 {
    let mut acc = [0f32; LANES];
    let mut acc_min = [0f32; 4];
    for s in 0..x.d.len() {
        let wb = &w.bytes[s * w.stride..s * w.stride + Q4K_BYTES];
        let xq = &x.qs_q4k[s * SUPER..(s + 1) * SUPER];
        for (l, a) in acc.iter_mut().enumerate() {
            let mut isum = 0i32;
            for p in 0..2 {
                let (mut lo, mut hi) = (0i32, 0i32);
                for t in 4 * l..4 * l + 4 {
                    let q = wb[64 * p + t];
                    lo += i32::from(q & 0x0F) * i32::from(xq[128 * p + t]);
                    hi += i32::from(q >> 4) * i32::from(xq[128 * p + 64 + t]);
                }
                isum += lo * i32::from(wb[128 + 4 * p + l / 8])
                    + hi * i32::from(wb[128 + 4 * p + 2 + l / 8]);
            }
            let scale = f16_at(wb, 144) * x.d[s];
            *a = scale.mul_add(isum as f32, *a);
        }
        let min_scale = f16_at(wb, 146) * x.d[s];
        for (q, a) in acc_min.iter_mut().enumerate() {
            let m: i32 = (2 * q..2 * q + 2)
                .map(|j| i32::from(wb[136 + j]) * i32::from(x.sums32[s * 8 + j]))
                .sum();
            *a = min_scale.mul_add(m as f32, *a);
        }
    }
    hsum16(&acc) - hsum4(&acc_min)
}

/// Portable Q6_K dot product, lane by lane as the AVX-512 kernel: in the half `n` of a
/// super-block, lane `l` holds bytes `4(l % 8)..+4` of the 32-byte run `l / 8` of the half's 64
/// low-bit bytes (values `128n + 32(l / 8) + ..`, and 64 further on for the high nibbles).
pub(super) fn dot_q6k_portable(w: WeightRow<'_>, x: KRow<'_>) -> f32 {
    let mut acc = [0f32; LANES];
    for s in 0..x.d.len() {
        let wb = &w.bytes[s * w.stride..s * w.stride + Q6K_BYTES];
        let xq = &x.qs[s * SUPER..(s + 1) * SUPER];
        let scale_at = |i: usize| i32::from(wb[192 + i] as i8);
        for (l, a) in acc.iter_mut().enumerate() {
            let mut isum = 0i32;
            for n in 0..2 {
                let (mut lo, mut hi) = (0i32, 0i32);
                for t in 4 * l..4 * l + 4 {
                    let ql = wb[64 * n + t];
                    let qh = wb[128 + 32 * n + t % 32];
                    let shift = if t < 32 { 0 } else { 2 };
                    let q_lo = (ql & 0x0F) | (((qh >> shift) & 3) << 4);
                    let q_hi = (ql >> 4) | (((qh >> (shift + 4)) & 3) << 4);
                    lo += i32::from(q_lo) * i32::from(xq[128 * n + t]);
                    hi += i32::from(q_hi) * i32::from(xq[128 * n + 64 + t]);
                }
                isum += lo * scale_at(8 * n + l / 4) + hi * scale_at(8 * n + 4 + l / 4);
            }
            if l < 8 {
                let offset: i32 = (2 * l..2 * l + 2)
                    .map(|i| scale_at(i) * i32::from(x.sums16[s * 16 + i]))
                    .sum();
                isum -= 32 * offset;
            }
            let scale = f16_at(wb, 208) * x.d[s];
            *a = scale.mul_add(isum as f32, *a);
        }
    }
    hsum16(&acc)
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::super::qgemv::x86::{f16_at_ptr, store4 as lanes4};
    use super::{hsum16, hsum4, KRow, WeightRow, SUPER};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn lanes16(v: __m512) -> [f32; 16] {
        let mut out = [0f32; 16];
        _mm512_storeu_ps(out.as_mut_ptr(), v);
        out
    }

    /// Index vector repeating lane `a` 8 times, then lane `b` 8 times.
    #[inline(always)]
    unsafe fn pair_index(a: i32, b: i32) -> __m512i {
        _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
    }

    /// Index vector repeating lanes `a..a + 4` 4 times each.
    #[inline(always)]
    unsafe fn quad_index(a: i32) -> __m512i {
        let (b, c, d) = (a + 1, a + 2, a + 3);
        _mm512_setr_epi32(a, a, a, a, b, b, b, b, c, c, c, c, d, d, d, d)
    }

    /// Q4_K, `R` rows at a time, 512 bits per step.
    #[inline(always)]
    pub(in super::super) unsafe fn dot_q4k_avx512<const R: usize>(
        rows: [WeightRow<'_>; R],
        x: KRow<'_>,
    ) -> [f32; R] {
        let mut acc = [_mm512_setzero_ps(); R];
        let mut acc_min = [_mm_setzero_ps(); R];
        let low = _mm512_set1_epi8(0x0F);
        let index = [
            pair_index(0, 1),
            pair_index(2, 3),
            pair_index(4, 5),
            pair_index(6, 7),
        ];
        for s in 0..x.d.len() {
            let xq = x.qs_q4k.as_ptr().add(s * SUPER);
            let xv: [__m512i; 4] =
                std::array::from_fn(|i| _mm512_loadu_si512(xq.add(64 * i) as *const __m512i));
            let sums = _mm_loadu_si128(x.sums32.as_ptr().add(s * 8) as *const __m128i);
            let xd = x.d[s];
            for r in 0..R {
                let wb = rows[r].bytes.as_ptr().add(s * rows[r].stride);
                let scales = _mm512_cvtepu8_epi32(_mm_loadl_epi64(wb.add(128) as *const __m128i));
                let mut isum = _mm512_setzero_si512();
                for p in 0..2 {
                    let packed = _mm512_loadu_si512(wb.add(64 * p) as *const __m512i);
                    let lo = _mm512_and_si512(packed, low);
                    let hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low);
                    let dlo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xv[2 * p]);
                    let dhi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi, xv[2 * p + 1]);
                    let slo = _mm512_permutexvar_epi32(index[2 * p], scales);
                    let shi = _mm512_permutexvar_epi32(index[2 * p + 1], scales);
                    isum = _mm512_add_epi32(isum, _mm512_madd_epi16(dlo, slo));
                    isum = _mm512_add_epi32(isum, _mm512_madd_epi16(dhi, shi));
                }
                let scale = _mm512_set1_ps(f16_at_ptr(wb.add(144)) * xd);
                acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(isum), acc[r]);
                let mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(wb.add(136) as *const __m128i));
                let m = _mm_cvtepi32_ps(_mm_madd_epi16(mins, sums));
                let min_scale = _mm_set1_ps(f16_at_ptr(wb.add(146)) * xd);
                acc_min[r] = _mm_fmadd_ps(min_scale, m, acc_min[r]);
            }
        }
        std::array::from_fn(|r| hsum16(&lanes16(acc[r])) - hsum4(&lanes4(acc_min[r])))
    }

    /// Q6_K, `R` rows at a time, 512 bits per step.
    #[inline(always)]
    pub(in super::super) unsafe fn dot_q6k_avx512<const R: usize>(
        rows: [WeightRow<'_>; R],
        x: KRow<'_>,
    ) -> [f32; R] {
        let mut acc = [_mm512_setzero_ps(); R];
        let low = _mm512_set1_epi8(0x0F);
        let two_bits = _mm512_set1_epi8(0x03);
        // Per 16-bit word: shift 0 (2) for the first (second) 32 bytes of the low nibbles, 4 (6)
        // for the high nibbles.
        let shift_lo = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);
        let shift_hi = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(6), 1);
        let index = [quad_index(0), quad_index(4), quad_index(8), quad_index(12)];
        for s in 0..x.d.len() {
            let xq = x.qs.as_ptr().add(s * SUPER);
            let xv: [__m512i; 4] =
                std::array::from_fn(|i| _mm512_loadu_si512(xq.add(64 * i) as *const __m512i));
            let sums = _mm256_loadu_si256(x.sums16.as_ptr().add(s * 16) as *const __m256i);
            let xd = x.d[s];
            for r in 0..R {
                let wb = rows[r].bytes.as_ptr().add(s * rows[r].stride);
                let scales8 = _mm_loadu_si128(wb.add(192) as *const __m128i);
                let scales16 = _mm256_cvtepi8_epi16(scales8);
                // (scale, 0) word pairs: `madd` then multiplies a lane's low word only.
                let scales = _mm512_cvtepu16_epi32(scales16);
                let offset = _mm256_madd_epi16(scales16, sums);
                let mut isum = _mm512_sub_epi32(
                    _mm512_setzero_si512(),
                    _mm512_slli_epi32(_mm512_zextsi256_si512(offset), 5),
                );
                for n in 0..2 {
                    let packed = _mm512_loadu_si512(wb.add(64 * n) as *const __m512i);
                    let high = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                        wb.add(128 + 32 * n) as *const __m256i
                    ));
                    let top = |shift: __m512i| {
                        _mm512_slli_epi16(
                            _mm512_and_si512(_mm512_srlv_epi16(high, shift), two_bits),
                            4,
                        )
                    };
                    let lo = _mm512_or_si512(_mm512_and_si512(packed, low), top(shift_lo));
                    let hi = _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16(packed, 4), low),
                        top(shift_hi),
                    );
                    let dlo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xv[2 * n]);
                    let dhi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi, xv[2 * n + 1]);
                    let slo = _mm512_permutexvar_epi32(index[2 * n], scales);
                    let shi = _mm512_permutexvar_epi32(index[2 * n + 1], scales);
                    isum = _mm512_add_epi32(isum, _mm512_madd_epi16(dlo, slo));
                    isum = _mm512_add_epi32(isum, _mm512_madd_epi16(dhi, shi));
                }
                let scale = _mm512_set1_ps(f16_at_ptr(wb.add(208)) * xd);
                acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(isum), acc[r]);
            }
        }
        std::array::from_fn(|r| hsum16(&lanes16(acc[r])))
    }

    /// 8 lanes of `sum over 4 bytes of u8 * i8` (exact: the products of 6-bit weights and 8-bit
    /// inputs cannot saturate `maddubs`'s 16-bit pair sums).
    #[inline(always)]
    unsafe fn dot_u8_i8<const VNNI: bool>(u: __m256i, s: __m256i) -> __m256i {
        if VNNI {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
        } else {
            _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
        }
    }

    /// The 16 integer lanes of the AVX-512 kernels, as two 8-lane halves.
    #[inline(always)]
    unsafe fn lanes_of_halves(acc: [__m256; 2]) -> [f32; 16] {
        let mut out = [0f32; 16];
        _mm256_storeu_ps(out.as_mut_ptr(), acc[0]);
        _mm256_storeu_ps(out.as_mut_ptr().add(8), acc[1]);
        out
    }

    /// Lane `i` of `v` in all 8 lanes.
    #[inline(always)]
    unsafe fn spread(v: __m256i, i: i32) -> __m256i {
        _mm256_permutevar8x32_epi32(v, _mm256_set1_epi32(i))
    }

    /// Q4_K, `R` rows at a time, as two 256-bit halves of the AVX-512 kernel's lanes.
    #[inline(always)]
    pub(in super::super) unsafe fn dot_q4k_avx2<const VNNI: bool, const R: usize>(
        rows: [WeightRow<'_>; R],
        x: KRow<'_>,
    ) -> [f32; R] {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let mut acc_min = [_mm_setzero_ps(); R];
        let low = _mm256_set1_epi8(0x0F);
        for s in 0..x.d.len() {
            let xq = x.qs_q4k.as_ptr().add(s * SUPER);
            let xv: [__m256i; 8] =
                std::array::from_fn(|i| _mm256_loadu_si256(xq.add(32 * i) as *const __m256i));
            let sums = _mm_loadu_si128(x.sums32.as_ptr().add(s * 8) as *const __m128i);
            let xd = x.d[s];
            for r in 0..R {
                let wb = rows[r].bytes.as_ptr().add(s * rows[r].stride);
                let scales = _mm256_cvtepu8_epi32(_mm_loadl_epi64(wb.add(128) as *const __m128i));
                let mut isum = [_mm256_setzero_si256(); 2];
                for p in 0..2 {
                    for h in 0..2 {
                        let packed = _mm256_loadu_si256(wb.add(64 * p + 32 * h) as *const __m256i);
                        let lo = _mm256_and_si256(packed, low);
                        let hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low);
                        let dlo = dot_u8_i8::<VNNI>(lo, xv[4 * p + h]);
                        let dhi = dot_u8_i8::<VNNI>(hi, xv[4 * p + 2 + h]);
                        let slo = spread(scales, (4 * p + h) as i32);
                        let shi = spread(scales, (4 * p + 2 + h) as i32);
                        isum[h] = _mm256_add_epi32(isum[h], _mm256_madd_epi16(dlo, slo));
                        isum[h] = _mm256_add_epi32(isum[h], _mm256_madd_epi16(dhi, shi));
                    }
                }
                let scale = _mm256_set1_ps(f16_at_ptr(wb.add(144)) * xd);
                for h in 0..2 {
                    acc[r][h] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(isum[h]), acc[r][h]);
                }
                let mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(wb.add(136) as *const __m128i));
                let m = _mm_cvtepi32_ps(_mm_madd_epi16(mins, sums));
                let min_scale = _mm_set1_ps(f16_at_ptr(wb.add(146)) * xd);
                acc_min[r] = _mm_fmadd_ps(min_scale, m, acc_min[r]);
            }
        }
        std::array::from_fn(|r| hsum16(&lanes_of_halves(acc[r])) - hsum4(&lanes4(acc_min[r])))
    }

    /// Q6_K, `R` rows at a time, as two 256-bit halves of the AVX-512 kernel's lanes.
    #[inline(always)]
    pub(in super::super) unsafe fn dot_q6k_avx2<const VNNI: bool, const R: usize>(
        rows: [WeightRow<'_>; R],
        x: KRow<'_>,
    ) -> [f32; R] {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let low = _mm256_set1_epi8(0x0F);
        let two_bits = _mm256_set1_epi8(0x03);
        for s in 0..x.d.len() {
            let xq = x.qs.as_ptr().add(s * SUPER);
            let xv: [__m256i; 8] =
                std::array::from_fn(|i| _mm256_loadu_si256(xq.add(32 * i) as *const __m256i));
            let sums = _mm256_loadu_si256(x.sums16.as_ptr().add(s * 16) as *const __m256i);
            let xd = x.d[s];
            for r in 0..R {
                let wb = rows[r].bytes.as_ptr().add(s * rows[r].stride);
                let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.add(192) as *const __m128i));
                let scales = [
                    _mm256_cvtepu16_epi32(_mm256_castsi256_si128(scales16)),
                    _mm256_cvtepu16_epi32(_mm256_extracti128_si256(scales16, 1)),
                ];
                let offset = _mm256_madd_epi16(scales16, sums);
                let mut isum = [
                    _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(offset, 5)),
                    _mm256_setzero_si256(),
                ];
                for n in 0..2 {
                    let high = _mm256_loadu_si256(wb.add(128 + 32 * n) as *const __m256i);
                    for h in 0..2 {
                        let packed = _mm256_loadu_si256(wb.add(64 * n + 32 * h) as *const __m256i);
                        let (top_lo, top_hi) = if h == 0 {
                            (high, _mm256_srli_epi16(high, 4))
                        } else {
                            (_mm256_srli_epi16(high, 2), _mm256_srli_epi16(high, 6))
                        };
                        let top = |t: __m256i| _mm256_slli_epi16(_mm256_and_si256(t, two_bits), 4);
                        let lo = _mm256_or_si256(_mm256_and_si256(packed, low), top(top_lo));
                        let hi = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(packed, 4), low),
                            top(top_hi),
                        );
                        let dlo = dot_u8_i8::<VNNI>(lo, xv[4 * n + h]);
                        let dhi = dot_u8_i8::<VNNI>(hi, xv[4 * n + 2 + h]);
                        // Lanes 0..8 of this half: scales (8n + 2h, 8n + 2h + 1) for the low
                        // nibbles, 4 further on for the high ones, 4 lanes each.
                        let pick = |first: usize| {
                            let v = scales[first / 8];
                            let i = (first % 8) as i32;
                            _mm256_permutevar8x32_epi32(
                                v,
                                _mm256_setr_epi32(i, i, i, i, i + 1, i + 1, i + 1, i + 1),
                            )
                        };
                        let slo = pick(8 * n + 2 * h);
                        let shi = pick(8 * n + 4 + 2 * h);
                        isum[h] = _mm256_add_epi32(isum[h], _mm256_madd_epi16(dlo, slo));
                        isum[h] = _mm256_add_epi32(isum[h], _mm256_madd_epi16(dhi, shi));
                    }
                }
                let scale = _mm256_set1_ps(f16_at_ptr(wb.add(208)) * xd);
                for h in 0..2 {
                    acc[r][h] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(isum[h]), acc[r][h]);
                }
            }
        }
        std::array::from_fn(|r| hsum16(&lanes_of_halves(acc[r])))
    }
}
