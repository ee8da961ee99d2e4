//! Runtime CPU dispatch for the element-wise and row kernels: the binary is built for baseline
//! x86-64 (SSE2, no FMA) so that it runs anywhere, and a hot loop handed to [`dispatch`] is
//! compiled again for AVX-512 and for AVX2 + FMA and run in the widest form this CPU has.
//! (The GEMM crate dispatches on its own.) `IDLM_SIMD=plain|avx2|avx512` caps the level, so each
//! path can be timed and checked against the plain one.

use std::sync::atomic::{AtomicU8, Ordering};

/// The instruction sets a dispatched loop can be compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Baseline: what the binary is built for.
    Plain = 1,
    /// AVX2 and FMA (x86-64-v3).
    Avx2 = 2,
    /// AVX-512 F/BW/DQ/VL with AVX2 and FMA (x86-64-v4).
    Avx512 = 3,
}

static LEVEL: AtomicU8 = AtomicU8::new(0);

/// The widest level this CPU supports, capped by `IDLM_SIMD` (read once).
pub fn level() -> Level {
    cached(&LEVEL, || cpu().min(cap_from_env()))
}

/// What the CPU has, not capped by the environment (so tests can pin a level); detected once.
#[inline(always)]
fn cpu() -> Level {
    static CPU: AtomicU8 = AtomicU8::new(0);
    cached(&CPU, detect)
}

/// The level stored in `cell`, or `init()` stored there on first use.
#[inline(always)]
fn cached(cell: &AtomicU8, init: impl FnOnce() -> Level) -> Level {
    match cell.load(Ordering::Relaxed) {
        1 => Level::Plain,
        2 => Level::Avx2,
        3 => Level::Avx512,
        _ => {
            let l = init();
            cell.store(l as u8, Ordering::Relaxed);
            l
        }
    }
}

/// Use `at` from now on (or the widest level below it this CPU has): for benchmarks and for tests
/// that run the same computation at every level.
pub fn set_level(at: Level) {
    LEVEL.store(at.min(cpu()) as u8, Ordering::Relaxed);
}

/// The levels this CPU can run, narrowest first.
pub fn available() -> Vec<Level> {
    [Level::Plain, Level::Avx2, Level::Avx512]
        .into_iter()
        .filter(|&l| l <= cpu())
        .collect()
}

fn cap_from_env() -> Level {
    match std::env::var("IDLM_SIMD").as_deref() {
        Ok("plain") => Level::Plain,
        Ok("avx2") => Level::Avx2,
        _ => Level::Avx512,
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    use std::arch::is_x86_feature_detected as has;
    // Everything the functions below are compiled with (a VM may hide any one of them).
    let v3 = has!("avx2")
        && has!("fma")
        && has!("bmi1")
        && has!("bmi2")
        && has!("lzcnt")
        && has!("popcnt");
    if v3 && has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
        Level::Avx512
    } else if v3 {
        Level::Avx2
    } else {
        Level::Plain
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Plain
}

/// Run `f` compiled for the widest level available. Pass a closure marked
/// `#[inline(always)]`, and keep the helpers it calls `#[inline(always)]`: the body must be inlined
/// into the target-feature function to be compiled for it.
#[inline(always)]
pub fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    dispatch_at(level(), f)
}

/// Run `f` compiled for `at` (or the plain build when the CPU lacks it).
#[inline(always)]
pub fn dispatch_at<R>(at: Level, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        let at = at.min(cpu());
        // SAFETY: `cpu` confirmed the CPU has the features the function is built for.
        match at {
            Level::Avx512 => return unsafe { avx512(f) },
            Level::Avx2 => return unsafe { avx2(f) },
            Level::Plain => {}
        }
    }
    let _ = at;
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ops::fast_exp;

    #[test]
    fn every_level_computes_the_same_exp() {
        let x: Vec<f32> = (0..4099).map(|i| (i as f32 - 2000.0) * 0.0431).collect();
        let run = |at| {
            dispatch_at(
                at,
                #[inline(always)]
                || x.iter().map(|&v| fast_exp(v)).collect::<Vec<f32>>(),
            )
        };
        let plain = run(Level::Plain);
        for at in [Level::Avx2, Level::Avx512] {
            // The same operations in the same order: bit-identical whatever the vector width.
            assert_eq!(run(at), plain, "{at:?}");
        }
        assert!(level() <= Level::Avx512);
    }
}
