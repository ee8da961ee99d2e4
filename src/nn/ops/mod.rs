//! Fused CPU kernels with hand-written backward, as candle custom ops. Each keeps the composed
//! version as its test oracle (`tests` in each file). On other devices they fall back to the
//! composed ops, never to a wrong answer.

pub mod attention;
pub mod gelu;
pub mod head_chunks;
pub mod head_nll;
pub mod lanes;
pub mod layer_norm;
pub mod linear;
pub mod modulate;
pub mod nll;
pub mod norm_modulate;
pub mod simd;
pub mod soft_nll;
pub mod softmax;

use std::mem::MaybeUninit;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout};
use rayon::prelude::*;

/// The contiguous f32 data of a CPU tensor argument.
pub(crate) fn f32_data<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &'static str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: expected f32 input, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// The contiguous u32 data of a CPU tensor argument.
pub(crate) fn u32_data<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &'static str,
) -> candle_core::Result<&'a [u32]> {
    let CpuStorage::U32(v) = s else {
        candle_core::bail!("{op}: expected u32 input, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// C (m x n, dense row-major) = A (m x k) B (k x n) (or += when `accumulate`), A and B given by
/// row / column strides; multi-threaded when the product is large and we are not inside a task.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    accumulate: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    parallel: bool,
) {
    assert!(c.len() >= m * n);
    // SAFETY: c holds m x n initialised elements.
    unsafe {
        gemm_raw(
            m,
            n,
            k,
            c.as_mut_ptr(),
            accumulate,
            a,
            a_rs,
            a_cs,
            b,
            b_rs,
            b_cs,
            parallel,
        )
    }
}

/// C = A B into fresh memory: no zero pass first (glibc's calloc zeroes recycled memory, a
/// whole extra write over buffers as large as the logits).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_new(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
) -> Vec<f32> {
    let mut c = Vec::new();
    gemm_append(&mut c, m, n, k, a, a_rs, a_cs, b, b_rs, b_cs);
    c
}

/// Append C = A B (m x n, row-major) to `c` without zeroing the new elements first.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_append(
    c: &mut Vec<f32>,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
) {
    let len = c.len();
    if k == 0 {
        c.resize(len + m * n, 0.0);
        return;
    }
    c.reserve(m * n);
    // SAFETY: after `reserve` the m x n elements past `len` are allocated; with accumulate =
    // false (gemm's read_dst) and k > 0 the kernel writes every one of them and reads none, so
    // they are all initialised when the length is extended over them.
    unsafe {
        gemm_raw(
            m,
            n,
            k,
            c.as_mut_ptr().add(len),
            false,
            a,
            a_rs,
            a_cs,
            b,
            b_rs,
            b_cs,
            true,
        );
        c.set_len(len + m * n);
    }
}

/// Append C = A B like [`gemm_append`], computed as (B^T A^T)^T when C has more rows than
/// columns. The `gemm` crate runs the weight-gradient shapes (depth = tokens) much faster with
/// the short side as rows: on 2 threads 188 vs 128 GFLOP/s for the head's 8192 x 256 (depth
/// 4096) alone, 124 vs 105 inside the train step; the transpose back costs ~2% of the product.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_append_short_rows(
    c: &mut Vec<f32>,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
) {
    if m <= n || k == 0 {
        return gemm_append(c, m, n, k, a, a_rs, a_cs, b, b_rs, b_cs);
    }
    let ct = gemm_new(n, m, k, b, b_cs, b_rs, a, a_cs, a_rs);
    transpose_append(c, &ct, n, m);
}

/// Append the transpose of `t` (rows x cols, row-major) to `c`, in parallel tiles.
pub(crate) fn transpose_append(c: &mut Vec<f32>, t: &[f32], rows: usize, cols: usize) {
    const TILE: usize = 32;
    let len = c.len();
    c.reserve(rows * cols);
    c.spare_capacity_mut()[..rows * cols]
        .par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(bi, out)| {
            let r0 = bi * TILE;
            let nr = out.len() / rows;
            for j0 in (0..rows).step_by(TILE) {
                for r in 0..nr {
                    for j in j0..(j0 + TILE).min(rows) {
                        out[r * rows + j].write(t[j * cols + r0 + r]);
                    }
                }
            }
        });
    // SAFETY: the chunks cover all rows x cols new elements and every one was written.
    unsafe { c.set_len(len + rows * cols) };
}

/// A new vector of `n` f32 written in parallel chunks of `chunk` elements (the last may be
/// shorter) by `fill(chunk_index, chunk)`, without the zero pass `vec![0.0; n]` makes first.
/// `fill` runs under [`simd::dispatch`]: mark it `#[inline(always)]` to have it vectorised wide.
///
/// # Safety
/// `fill` must write every element of each chunk it is given.
pub(crate) unsafe fn par_new<F>(n: usize, chunk: usize, fill: F) -> Vec<f32>
where
    F: Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
{
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| {
            simd::dispatch(
                #[inline(always)]
                || fill(i, c),
            )
        });
    // SAFETY: the caller's `fill` initialised all n elements.
    unsafe { v.set_len(n) };
    v
}

/// An output buffer that parallel tasks fill at disjoint places (see [`par_fill`]).
pub(crate) struct Disjoint {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: tasks only write through `Disjoint`, each at places no other task touches (the
// contract of `par_fill` and of the methods below).
unsafe impl Send for Disjoint {}
// SAFETY: as above.
unsafe impl Sync for Disjoint {}

impl Disjoint {
    /// The elements `start..start + n`, to be written.
    ///
    /// # Safety
    /// No other task touches these elements while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, start: usize, n: usize) -> &mut [MaybeUninit<f32>] {
        assert!(start + n <= self.len, "disjoint write out of bounds");
        // SAFETY: in bounds (checked); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start).cast(), n) }
    }

    /// Copy `src` to the elements from `start`.
    ///
    /// # Safety
    /// No other task touches these elements meanwhile.
    pub(crate) unsafe fn put(&self, start: usize, src: &[f32]) {
        assert!(
            start + src.len() <= self.len,
            "disjoint write out of bounds"
        );
        // SAFETY: in bounds (checked); exclusive by the caller's contract; src is another buffer.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(start), src.len()) }
    }
}

/// A new vector of `n` f32 filled by `fill(task, out)` for tasks 0..`tasks` in parallel, without
/// a zero pass: for outputs whose parts are scattered (heads inside rows, several regions).
/// `fill` runs under [`simd::dispatch`] (mark it `#[inline(always)]`).
///
/// # Safety
/// The tasks together must write every element, and no two tasks the same element.
pub(crate) unsafe fn par_fill<F>(n: usize, tasks: usize, fill: F) -> Vec<f32>
where
    F: Fn(usize, &Disjoint) + Sync + Send,
{
    let mut v: Vec<f32> = Vec::with_capacity(n);
    let out = Disjoint {
        ptr: v.as_mut_ptr(),
        len: n,
    };
    (0..tasks).into_par_iter().for_each(|i| {
        simd::dispatch(
            #[inline(always)]
            || fill(i, &out),
        )
    });
    // SAFETY: the caller's tasks initialised all n elements.
    unsafe { v.set_len(n) };
    v
}

/// The GEMM behind both: C is m x n dense row-major at `c`.
///
/// # Safety
/// `c` must be valid for m x n writes, and for reads when `accumulate`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    accumulate: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
    parallel: bool,
) {
    assert!(m == 0 || k == 0 || (m - 1) * a_rs + (k - 1) * a_cs < a.len());
    assert!(k == 0 || n == 0 || (k - 1) * b_rs + (n - 1) * b_cs < b.len());
    let threads = rayon::current_num_threads();
    let par = if parallel && threads > 1 && m * n * k > 1 << 15 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above bound every index the kernel reads; the caller vouches for c.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// C = A B (or += when `accumulate`) with strides, using all threads.
#[allow(clippy::too_many_arguments)]
pub fn gemm_par(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    accumulate: bool,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
) {
    gemm_strided(m, n, k, c, accumulate, a, a_rs, a_cs, b, b_rs, b_cs, true)
}

/// Column sums of a row-major (rows, n) matrix, in parallel blocks of rows added at the end (a
/// bias gradient).
pub(crate) fn column_sums(g: &[f32], n: usize) -> Vec<f32> {
    let rows = g.len() / n.max(1);
    let chunk = (rows / (4 * rayon::current_num_threads()).max(1)).max(64);
    let parts: Vec<Vec<f32>> = g
        .par_chunks(n.max(1) * chunk)
        .map(|c| {
            simd::dispatch(
                #[inline(always)]
                || {
                    let mut s = vec![0f32; n];
                    for r in c.chunks_exact(n.max(1)) {
                        s.iter_mut().zip(r).for_each(|(a, b)| *a += b);
                    }
                    s
                },
            )
        })
        .collect();
    let mut out = vec![0f32; n];
    for p in parts {
        out.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    out
}

/// Rows per parallel task, so that each task does at least ~32k elements of work.
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (32768 / row_len.max(1)).max(1)
}

/// exp for f32 accurate to ~2 ulp on the range used here, written so that loops over slices
/// vectorise (libm's expf is a call per element).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    // exp(x) = 2^k * exp(r), r in [-ln2/2, ln2/2]; degree-6 polynomial for exp(r).
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5 * 2^23 trick: no libm call, so loops vectorise. The low bits of
    // `kb` hold k itself, so 2^k is made from them: a float-to-int cast (`k as i32`) saturates,
    // which LLVM does one element at a time (perf: exp at 3.6 ns instead of 0.7).
    let kb = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let k = kb - 12_582_912.0;
    let r = x - k * 0.693_145_75 - k * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    let bits = kb.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23;
    p * f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::{fast_exp, gemm_append, gemm_append_short_rows};

    #[test]
    fn short_rows_gemm_is_the_same_product() {
        // Tall outputs (m > n) go through the transposed product; odd sizes cross the 32-tiles.
        for (m, n, k) in [(70, 33, 45), (33, 70, 9), (257, 31, 1), (5, 5, 0)] {
            let a: Vec<f32> = (0..k * m).map(|i| ((i * 37) % 17) as f32 - 8.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 11) % 13) as f32 - 6.0).collect();
            // A = a^T (a is k x m row-major), B = b (k x n row-major), as in a weight gradient.
            let (mut want, mut got) = (vec![7.0f32], vec![7.0f32]);
            gemm_append(&mut want, m, n, k, &a, 1, m, &b, n, 1);
            gemm_append_short_rows(&mut got, m, n, k, &a, 1, m, &b, n, 1);
            // Small integers: every partial sum is exact, so the two orders agree exactly.
            assert_eq!(want, got, "{m}x{n}x{k}");
            assert_eq!(got.len(), 1 + m * n);
        }
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((fast_exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
    }
}
