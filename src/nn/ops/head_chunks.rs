//! The output projection and weighted NLL computed in row chunks: each chunk's logits (R x V) are
//! made, reduced to the loss and, when asked, turned into dz and multiplied into dx and a dW share
//! while they are still in cache. The whole (M, V) logits buffer never exists: at vocabulary size
//! it went through DRAM between the three head GEMMs and the softmax passes.

use rayon::prelude::*;

use super::{gemm_strided, lanes, simd, transpose_append};

/// Rows per chunk: about 8 MiB of logits, which stay in L3 while the chunk's loss, dz, dx and
/// dW^T share are made from them. On the benchmark head (4096 x 256 -> 8192, 2 threads) chunks of
/// 256 to 1024 rows ran alike, 7-10% faster than the three whole-buffer GEMMs; the smallest of
/// them holds the least.
fn chunk_rows(v: usize) -> usize {
    ((1usize << 21) / v.max(1)).clamp(16, 1024)
}

/// The gradients of the summed loss for an upstream gradient of one on every row.
pub(super) struct UnitGrads {
    /// d/dx, (M, D).
    pub dx: Vec<f32>,
    /// d/dW, (V, D).
    pub dw: Vec<f32>,
    /// d/db, (V,).
    pub db: Vec<f32>,
}

/// One part's share of dW^T (D x V) and db.
struct Share {
    dwt: Vec<f32>,
    db: Vec<f32>,
}

/// Per-row losses `w_i (lse_{v != ex}(z_i) - z_i[t_i])` of `z = x W^T + b`, x (M, D), W (V, D);
/// with `grads`, also the [`UnitGrads`] of their sum (weights g_i w_i give those of sum g_i loss_i).
/// Rows are split into one contiguous part per thread, and each part walks its rows in chunks.
#[allow(clippy::too_many_arguments)]
pub(super) fn head_chunks(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    v: usize,
    targets: &[u32],
    weights: &[f32],
    ex: Option<usize>,
    grads: bool,
) -> (Vec<f32>, Option<UnitGrads>) {
    let r = chunk_rows(v);
    let parts = rayon::current_num_threads().clamp(1, m.div_ceil(r).max(1));
    let per = m.div_ceil(parts).max(1);
    let mut loss = vec![0f32; m];
    let mut dx = if grads { vec![0f32; m * k] } else { Vec::new() };
    let dx_parts: Vec<&mut [f32]> = if grads && k > 0 {
        dx.chunks_mut(per * k).collect()
    } else {
        (0..m.div_ceil(per)).map(|_| &mut [][..]).collect()
    };
    let shares: Vec<Option<Share>> = loss
        .par_chunks_mut(per)
        .zip(dx_parts)
        .enumerate()
        .map(|(p, (loss, dx))| {
            let r0 = p * per;
            simd::dispatch(
                #[inline(always)]
                || {
                    part(
                        x,
                        w,
                        b,
                        r0,
                        loss,
                        dx,
                        k,
                        v,
                        r,
                        (targets, weights),
                        ex,
                        grads,
                    )
                },
            )
        })
        .collect();
    if !grads {
        return (loss, None);
    }
    let mut shares = shares.into_iter().flatten();
    let Some(mut total) = shares.next() else {
        let g = UnitGrads {
            dx,
            dw: vec![0.0; v * k],
            db: vec![0.0; v],
        };
        return (loss, Some(g));
    };
    for s in shares {
        add_into(&mut total.dwt, &s.dwt);
        add_into(&mut total.db, &s.db);
    }
    let mut dw = Vec::new();
    transpose_append(&mut dw, &total.dwt, k, v);
    let g = UnitGrads {
        dx,
        dw,
        db: total.db,
    };
    (loss, Some(g))
}

/// a += b, in parallel blocks.
fn add_into(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(1 << 16)
        .zip(b.par_chunks(1 << 16))
        .for_each(|(a, b)| {
            simd::dispatch(
                #[inline(always)]
                || a.iter_mut().zip(b).for_each(|(a, b)| *a += b),
            )
        });
}

/// One thread's rows `r0..r0 + loss.len()`, chunk by chunk; single-threaded GEMMs.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn part(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    r0: usize,
    loss: &mut [f32],
    dx: &mut [f32],
    k: usize,
    v: usize,
    r: usize,
    (targets, weights): (&[u32], &[f32]),
    ex: Option<usize>,
    grads: bool,
) -> Option<Share> {
    let n = loss.len();
    let mut z = vec![0f32; r.min(n) * v];
    let mut share = grads.then(|| Share {
        dwt: vec![0f32; k * v],
        db: vec![0f32; v],
    });
    for c0 in (0..n).step_by(r) {
        let rr = r.min(n - c0);
        let xc = &x[(r0 + c0) * k..(r0 + c0 + rr) * k];
        let z = &mut z[..rr * v];
        if k == 0 {
            z.fill(0.0);
        } else {
            gemm_strided(rr, v, k, z, false, xc, k, 1, w, 1, k, false);
        }
        for (i, zi) in z.chunks_exact_mut(v).enumerate() {
            let g = r0 + c0 + i;
            let (wi, t) = (weights[g], targets[g] as usize);
            if wi == 0.0 {
                loss[c0 + i] = 0.0;
                if share.is_some() {
                    zi.fill(0.0);
                }
                continue;
            }
            // Three passes, one exp per logit: bias and max, exp in place with its sum, then dz
            // and db. The excluded column is -inf, so it is neither the max nor in the sum.
            let zt = zi[t] + b[t];
            if let Some(e) = ex {
                zi[e] = f32::NEG_INFINITY;
            }
            let m = lanes::add_max(zi, b);
            let Some(s) = share.as_mut() else {
                loss[c0 + i] = wi * (m + lanes::sum_exp(zi, 1.0, m).ln() - zt);
                continue;
            };
            // exp(-inf - m) is exp(-87) after fast_exp's clamp: far below the max's 1 in the sum.
            let total = lanes::exp_in_place(zi, 1.0, m);
            loss[c0 + i] = wi * (m + total.ln() - zt);
            if let Some(e) = ex {
                zi[e] = 0.0;
            }
            // dz = w_i (softmax without the excluded column - onehot(target)), in place.
            lanes::scale_into(zi, wi / total, &mut s.db);
            zi[t] -= wi;
            s.db[t] -= wi;
        }
        if let Some(s) = share.as_mut().filter(|_| k > 0) {
            let dxc = &mut dx[c0 * k..(c0 + rr) * k];
            gemm_strided(rr, k, v, dxc, false, z, v, 1, w, k, 1, false);
            // dW^T (D x V) += x_c^T dz_c: the short side as rows (see gemm_append_short_rows).
            gemm_strided(k, v, rr, &mut s.dwt, true, xc, 1, k, z, v, 1, false);
        }
    }
    share
}
