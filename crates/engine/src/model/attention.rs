//! CPU kernels of the attention block on plain f32 slices: rotary position embedding (both GGUF
//! layouts) and causal grouped-query attention of new query rows against a sequence's KV cache.
//! Written on slices rather than candle ops so a decode step costs no per-op tensor overhead and the
//! cache never has to be copied into a padded batch tensor.

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RopeLayout {
    /// Pairs `(x[2i], x[2i+1])`: llama in GGUF (llama.cpp "normal"; the converter permutes Q/K).
    Interleaved,
    /// Pairs `(x[i], x[i + rot/2])`: qwen2 in GGUF (llama.cpp "neox").
    Halves,
}

/// Rotary embedding parameters of a model.
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    /// `base^(-2i/rot_dim)` for `i in 0..rot_dim/2`.
    inv_freq: Vec<f32>,
    /// Number of leading dimensions of each head that are rotated.
    rot_dim: usize,
    layout: RopeLayout,
}

/// `cos`/`sin` rows for the positions of one forward call, `[row][rot_dim/2]`.
pub(crate) struct RopeRows {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    pub(crate) fn new(freq_base: f64, rot_dim: usize, layout: RopeLayout) -> Self {
        let half = rot_dim / 2;
        let inv_freq = (0..half)
            .map(|i| (1.0 / freq_base.powf((2 * i) as f64 / rot_dim as f64)) as f32)
            .collect();
        Self {
            inv_freq,
            rot_dim,
            layout,
        }
    }

    /// Precomputes cos/sin for each position (angles in f64 to stay exact at long positions).
    pub(crate) fn rows(&self, positions: &[usize]) -> RopeRows {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let angle = p as f64 * f64::from(f);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        RopeRows { cos, sin }
    }

    /// Rotates every head of every row of `x` (`rows * n_heads * head_dim` floats) in place.
    pub(crate) fn apply(&self, x: &mut [f32], rows: &RopeRows, n_heads: usize, head_dim: usize) {
        let half = self.rot_dim / 2;
        let row_len = n_heads * head_dim;
        for (r, row) in x.chunks_exact_mut(row_len).enumerate() {
            let cos = &rows.cos[r * half..(r + 1) * half];
            let sin = &rows.sin[r * half..(r + 1) * half];
            for head in row.chunks_exact_mut(head_dim) {
                match self.layout {
                    RopeLayout::Interleaved => {
                        for (i, pair) in head[..self.rot_dim].chunks_exact_mut(2).enumerate() {
                            let (a, b) = (pair[0], pair[1]);
                            pair[0] = a * cos[i] - b * sin[i];
                            pair[1] = a * sin[i] + b * cos[i];
                        }
                    }
                    RopeLayout::Halves => {
                        let (lo, hi) = head[..self.rot_dim].split_at_mut(half);
                        for i in 0..half {
                            let (a, b) = (lo[i], hi[i]);
                            lo[i] = a * cos[i] - b * sin[i];
                            hi[i] = a * sin[i] + b * cos[i];
                        }
                    }
                }
            }
        }
    }
}

/// Head geometry of the attention block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadDims {
    pub(crate) n_heads: usize,
    pub(crate) n_kv_heads: usize,
    pub(crate) head_dim: usize,
}

/// Dot product with four independent 8-lane accumulators: a 64-wide head is then 2 dependent
/// fused multiply-adds per accumulator instead of 8 (the score loop is latency-bound otherwise).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const W: usize = 32;
    let mut acc = [[0f32; 8]; 4];
    let (ca, cb) = (a.chunks_exact(W), b.chunks_exact(W));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for (c, lanes) in acc.iter_mut().enumerate() {
            for (i, lane) in lanes.iter_mut().enumerate() {
                *lane = x[c * 8 + i].mul_add(y[c * 8 + i], *lane);
            }
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail = x.mul_add(*y, tail);
    }
    let lanes: [f32; 8] =
        std::array::from_fn(|i| (acc[0][i] + acc[1][i]) + (acc[2][i] + acc[3][i]));
    lanes.iter().sum::<f32>() + tail
}

#[inline]
fn axpy(out: &mut [f32], alpha: f32, x: &[f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o += alpha * v;
    }
}

/// Causal attention of `n_new` query rows (absolute positions `first_pos..first_pos + n_new`) over
/// cached keys/values that already include those rows (`k`, `v`: `(first_pos + n_new) * kv_dim`).
/// Writes `n_new * n_heads * head_dim` floats into `out`.
#[cfg(test)]
pub(crate) fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    first_pos: usize,
    dims: HeadDims,
    out: &mut [f32],
) {
    let n_rows = q.len() / (dims.n_heads * dims.head_dim);
    let seq = SeqAttention {
        row_offset: 0,
        n_rows,
        first_pos,
        k,
        v,
    };
    attend_all(q, &[seq], dims, out);
}

/// One sequence's part of a batched attention: its rows in the stacked batch and its cache (one
/// layer's keys and values, the new rows' included).
pub(crate) struct SeqAttention<'a> {
    pub(crate) row_offset: usize,
    pub(crate) n_rows: usize,
    /// Position of the sequence's first new row.
    pub(crate) first_pos: usize,
    pub(crate) k: &'a [f32],
    pub(crate) v: &'a [f32],
}

/// An output buffer the workers of [`attend_all`] write into, each at its own heads.
struct SharedOut(*mut f32);
// SAFETY: every (row, head) slice is written by one work item only, and `out` outlives the region.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Query rows of one sequence and head per work item of [`attend_all`]: the rows of a verify step
/// (or a slice of a prompt) read each key and value of the head once for all of them.
const ROWS_PER_ITEM: usize = 8;

/// Causal attention of every new row of every sequence (`q` and `out`: the stacked batch's rows,
/// `n_heads * head_dim` floats each), one work item per (sequence, head, up to
/// [`ROWS_PER_ITEM`] rows) on candle's worker pool. Each (row, head)'s arithmetic does not depend
/// on the others, so results do not depend on the batch or on how rows are grouped.
pub(crate) fn attend_all(q: &[f32], seqs: &[SeqAttention<'_>], dims: HeadDims, out: &mut [f32]) {
    let HeadDims {
        n_heads,
        n_kv_heads,
        head_dim,
    } = dims;
    let q_row = n_heads * head_dim;
    // (sequence, first row within it, rows, head)
    let items: Vec<(usize, usize, usize, usize)> = seqs
        .iter()
        .enumerate()
        .flat_map(|(s, seq)| {
            (0..seq.n_rows).step_by(ROWS_PER_ITEM).flat_map(move |i| {
                let rows = ROWS_PER_ITEM.min(seq.n_rows - i);
                (0..n_heads).map(move |h| (s, i, rows, h))
            })
        })
        .collect();
    let out_ptr = SharedOut(out.as_mut_ptr());
    assert!(
        out.len()
            >= seqs
                .iter()
                .map(|s| (s.row_offset + s.n_rows) * q_row)
                .max()
                .unwrap_or(0)
    );
    let run = |range: std::ops::Range<usize>| {
        let mut scratch = Scratch::default();
        let mut heads: Vec<HeadRow<'_>> = Vec::with_capacity(ROWS_PER_ITEM);
        for &(s, first, rows, h) in &items[range] {
            let seq = &seqs[s];
            heads.clear();
            for i in first..first + rows {
                let at = (seq.row_offset + i) * q_row + h * head_dim;
                heads.push(HeadRow {
                    q: &q[at..at + head_dim],
                    // SAFETY: in bounds (asserted above), and (row, h) belongs to this item only.
                    out: unsafe { std::slice::from_raw_parts_mut(out_ptr.at(at), head_dim) },
                    n_keys: seq.first_pos + i + 1,
                });
            }
            attend_head(
                &mut heads,
                seq,
                h / (n_heads / n_kv_heads),
                dims,
                &mut scratch,
            );
        }
    };
    candle_core::utils::barrier_pool().execute_chunked(items.len(), run);
}

/// A worker's buffers, reused from item to item: per row and key the scores, per row the
/// largest score and the softmax's normalization.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    max: Vec<f32>,
    weight: Vec<f32>,
}

/// One query row of one head: its query, its output, and how many keys it sees (causality).
struct HeadRow<'a> {
    q: &'a [f32],
    out: &'a mut [f32],
    n_keys: usize,
}

/// Query rows of one head (ascending positions) against their first `n_keys` keys of KV head
/// `g`. Keys and values are read once for all rows; each row's scores, softmax and weighted sum
/// are computed key by key in order, as they would be alone.
fn attend_head(
    rows: &mut [HeadRow<'_>],
    seq: &SeqAttention<'_>,
    g: usize,
    dims: HeadDims,
    scratch: &mut Scratch,
) {
    let Scratch {
        scores,
        max,
        weight,
    } = scratch;
    let head_dim = dims.head_dim;
    let kv_row = dims.n_kv_heads * head_dim;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let Some(n_keys) = rows.iter().map(|r| r.n_keys).max() else {
        return;
    };
    scores.clear();
    scores.resize(rows.len() * n_keys, 0.0);
    max.clear();
    max.resize(rows.len(), f32::NEG_INFINITY);
    for j in 0..n_keys {
        let kh = &seq.k[j * kv_row + g * head_dim..j * kv_row + (g + 1) * head_dim];
        for (i, row) in rows.iter().enumerate().filter(|(_, r)| j < r.n_keys) {
            let s = dot(row.q, kh) * scale;
            scores[i * n_keys + j] = s;
            max[i] = max[i].max(s);
        }
    }
    weight.clear();
    weight.resize(rows.len(), 0.0);
    for (i, row) in rows.iter_mut().enumerate() {
        let mut sum = 0f32;
        for s in &mut scores[i * n_keys..i * n_keys + row.n_keys] {
            *s = (*s - max[i]).exp();
            sum += *s;
        }
        weight[i] = 1.0 / sum;
        row.out.fill(0.0);
    }
    for j in 0..n_keys {
        let vh = &seq.v[j * kv_row + g * head_dim..j * kv_row + (g + 1) * head_dim];
        for (i, row) in rows.iter_mut().enumerate().filter(|(_, r)| j < r.n_keys) {
            axpy(row.out, scores[i * n_keys + j] * weight[i], vh);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm_elsewhere() {
        for layout in [RopeLayout::Interleaved, RopeLayout::Halves] {
            let rope = Rope::new(10_000.0, 8, layout);
            let x: Vec<f32> = (0..16).map(|i| i as f32 * 0.1 - 0.5).collect();
            let mut y = x.clone();
            rope.apply(&mut y, &rope.rows(&[0]), 2, 8);
            assert_eq!(x, y);
            let mut z = x.clone();
            rope.apply(&mut z, &rope.rows(&[37]), 2, 8);
            let n = |a: &[f32]| a.iter().map(|v| v * v).sum::<f32>();
            assert!((n(&x[..8]) - n(&z[..8])).abs() < 1e-5);
            assert_ne!(x, z);
        }
    }

    #[test]
    fn rope_interleaved_rotates_adjacent_pairs() {
        let rope = Rope::new(10_000.0, 4, RopeLayout::Interleaved);
        let mut x = vec![1.0, 0.0, 1.0, 0.0];
        rope.apply(&mut x, &rope.rows(&[1]), 1, 4);
        // First pair rotates by 1 rad, second by 1/100 rad.
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[1] - 1f32.sin()).abs() < 1e-6);
        assert!((x[2] - 0.01f32.cos()).abs() < 1e-6 && (x[3] - 0.01f32.sin()).abs() < 1e-6);
    }

    #[test]
    fn single_key_attention_returns_its_value_and_gqa_maps_heads() {
        // 2 query heads share 1 kv head; one cached position: output is that value for both heads.
        let dims = HeadDims {
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 2,
        };
        let q = vec![1.0, 2.0, -3.0, 0.5];
        let k = vec![0.3, -0.2];
        let v = vec![4.0, -1.0];
        let mut out = vec![0.0; 4];
        attend(&q, &k, &v, 0, dims, &mut out);
        assert_eq!(out, vec![4.0, -1.0, 4.0, -1.0]);
    }

    #[test]
    fn rows_attended_together_equal_rows_attended_one_by_one() {
        // 11 new rows after 5 cached ones: two work items per head (8 + 3 rows), 2 query heads
        // per kv head. Each row alone (its own call, with the keys it sees) must give the same
        // bits: a verify step's positions must not depend on each other.
        let dims = HeadDims {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 40,
        };
        let (cached, new) = (5usize, 11usize);
        let kv = dims.n_kv_heads * dims.head_dim;
        let q_row = dims.n_heads * dims.head_dim;
        let val = |i: usize, m: usize| ((i * m % 97) as f32) / 40.0 - 1.2;
        let k: Vec<f32> = (0..(cached + new) * kv).map(|i| val(i, 31)).collect();
        let v: Vec<f32> = (0..(cached + new) * kv).map(|i| val(i, 53)).collect();
        let q: Vec<f32> = (0..new * q_row).map(|i| val(i, 17)).collect();
        let mut together = vec![0f32; new * q_row];
        attend(&q, &k, &v, cached, dims, &mut together);
        for i in 0..new {
            let n_keys = cached + i + 1;
            let mut alone = vec![0f32; q_row];
            attend(
                &q[i * q_row..(i + 1) * q_row],
                &k[..n_keys * kv],
                &v[..n_keys * kv],
                cached + i,
                dims,
                &mut alone,
            );
            assert_eq!(&together[i * q_row..(i + 1) * q_row], &alone[..], "row {i}");
        }
    }

    #[test]
    fn attention_weights_follow_softmax_and_causality() {
        let dims = HeadDims {
            n_heads: 1,
            n_kv_heads: 1,
            head_dim: 1,
        };
        // Two new rows at positions 0 and 1: row 0 sees only key 0.
        let q = vec![1.0, 2.0];
        let k = vec![0.5, 1.5];
        let v = vec![10.0, 20.0];
        let mut out = vec![0.0; 2];
        attend(&q, &k, &v, 0, dims, &mut out);
        assert!((out[0] - 10.0).abs() < 1e-6);
        let (s0, s1) = ((2.0f32 * 0.5).exp(), (2.0f32 * 1.5).exp());
        let expected = (10.0 * s0 + 20.0 * s1) / (s0 + s1);
        assert!((out[1] - expected).abs() < 1e-4, "{} vs {expected}", out[1]);
    }
}

#[cfg(test)]
mod candle_parity {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn rope_matches_candle_kernels() {
        let (h, t, d) = (3usize, 5usize, 8usize);
        let x: Vec<f32> = (0..h * t * d)
            .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
            .collect();
        for (layout, interleaved) in [(RopeLayout::Interleaved, true), (RopeLayout::Halves, false)]
        {
            let rope = Rope::new(100_000.0, d, layout);
            let positions: Vec<usize> = (0..t).collect();
            let rows = rope.rows(&positions);
            // ours: rows of [t][h][d]
            let mut ours = vec![0f32; h * t * d];
            for ti in 0..t {
                for hi in 0..h {
                    for di in 0..d {
                        ours[(ti * h + hi) * d + di] = x[(hi * t + ti) * d + di];
                    }
                }
            }
            rope.apply(&mut ours, &rows, h, d);
            let xt = Tensor::from_vec(x.clone(), (1, h, t, d), &Device::Cpu).unwrap();
            let cos = Tensor::from_vec(rows.cos.clone(), (t, d / 2), &Device::Cpu).unwrap();
            let sin = Tensor::from_vec(rows.sin.clone(), (t, d / 2), &Device::Cpu).unwrap();
            let theirs = if interleaved {
                candle_nn::rotary_emb::rope_i(&xt, &cos, &sin).unwrap()
            } else {
                candle_nn::rotary_emb::rope(&xt, &cos, &sin).unwrap()
            };
            let theirs: Vec<f32> = theirs.flatten_all().unwrap().to_vec1().unwrap();
            for ti in 0..t {
                for hi in 0..h {
                    for di in 0..d {
                        let a = ours[(ti * h + hi) * d + di];
                        let b = theirs[(hi * t + ti) * d + di];
                        assert!(
                            (a - b).abs() < 1e-5,
                            "{layout:?} t{ti} h{hi} d{di}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn gqa_attention_matches_candle_ops() {
        let (h, kvh, t, d) = (9usize, 3usize, 4usize, 8usize);
        let val = |i: usize| ((i * 53 % 97) as f32) / 40.0 - 1.2;
        let q: Vec<f32> = (0..t * h * d).map(val).collect();
        let k: Vec<f32> = (0..t * kvh * d).map(|i| val(i + 7)).collect();
        let v: Vec<f32> = (0..t * kvh * d).map(|i| val(i + 13)).collect();
        let dims = HeadDims {
            n_heads: h,
            n_kv_heads: kvh,
            head_dim: d,
        };
        let mut ours = vec![0f32; t * h * d];
        attend(&q, &k, &v, 0, dims, &mut ours);
        let dev = Device::Cpu;
        let qt = Tensor::from_vec(q, (t, h, d), &dev)
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .contiguous()
            .unwrap();
        let kt = Tensor::from_vec(k, (t, kvh, d), &dev)
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .contiguous()
            .unwrap();
        let vt = Tensor::from_vec(v, (t, kvh, d), &dev)
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .contiguous()
            .unwrap();
        // head hh uses kv head hh / (h / kvh)
        let idx = Tensor::from_vec(
            (0..h as u32)
                .map(|x| x / (h / kvh) as u32)
                .collect::<Vec<_>>(),
            h,
            &dev,
        )
        .unwrap();
        let kt = kt.index_select(&idx, 0).unwrap();
        let vt = vt.index_select(&idx, 0).unwrap();
        let att = (qt.matmul(&kt.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
        let mask: Vec<f32> = (0..t * t)
            .map(|i| {
                if i % t > i / t {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), &dev).unwrap();
        let att = att.broadcast_add(&mask).unwrap();
        let att = candle_nn::ops::softmax_last_dim(&att).unwrap();
        let y = att
            .matmul(&vt)
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .contiguous()
            .unwrap();
        let theirs: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!((a - b).abs() < 1e-5, "{i}: {a} vs {b}");
        }
    }
}
