//! Process-wide settings: the allocator fix and the thread count (design.md §3).

use crate::{Error, Result};

/// Stop glibc from returning large buffers to the OS on every free: tensor buffers are
/// reallocated every step, and mmap/munmap of each one costs more than the math (design.md §3).
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Use `n` threads (or all cores) in every parallel part: rayon's pool and candle's GEMM.
pub fn set_threads(n: Option<usize>) -> Result<()> {
    let Some(n) = n else {
        return Ok(());
    };
    if n == 0 {
        return Err(Error::InvalidArgument(
            "--threads must be at least 1".into(),
        ));
    }
    // candle reads RAYON_NUM_THREADS for its GEMM parallelism; set it before the first use.
    // SAFETY: called at start-up before any other thread exists.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| Error::InvalidArgument(format!("cannot set {n} threads: {e}")))
}
