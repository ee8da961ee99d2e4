//! Process-wide settings: the allocator fix, the thread count and the device (docs/design.md §3).

use std::sync::OnceLock;

use candle_core::Device;

use crate::{Error, Result};

static DEVICE: OnceLock<Device> = OnceLock::new();

/// The device models, training and sampling run on: the CPU unless [`set_device`] chose another.
pub fn device() -> Device {
    DEVICE.get().cloned().unwrap_or(Device::Cpu)
}

/// Choose the device once, at start-up: `cpu`, `cuda` or `cuda:N`.
pub fn set_device(spec: &str) -> Result<()> {
    let dev = parse_device(spec)?;
    if dev.is_cpu() {
        return Ok(());
    }
    DEVICE
        .set(dev)
        .map_err(|_| Error::InvalidArgument("the device can be chosen only once".into()))
}

/// `cpu`, `cuda` or `cuda:N` as a candle device (opening the GPU).
pub fn parse_device(spec: &str) -> Result<Device> {
    let ordinal = match spec.trim() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown device '{spec}': use cpu, cuda or cuda:N"
                )));
            }
        },
    };
    let hint = if cfg!(feature = "cuda") {
        ""
    } else {
        " (this binary was built without CUDA: cargo build --release --features cuda, see README)"
    };
    // cudarc loads libcuda at first use and panics when it is missing: report that as an error.
    match std::panic::catch_unwind(|| Device::new_cuda(ordinal)) {
        Ok(Ok(dev)) => Ok(dev),
        Ok(Err(e)) => Err(Error::InvalidArgument(format!(
            "cannot open {spec}: {e}{hint}"
        ))),
        Err(_) => Err(Error::InvalidArgument(format!(
            "cannot open {spec}: no usable CUDA driver (libcuda.so.1) on this machine"
        ))),
    }
}

/// Stop glibc from returning large buffers to the OS on every free: tensor buffers are
/// reallocated every step, and mmap/munmap of each one costs more than the math (docs/design.md §3).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        let e = parse_device("gpu").unwrap_err().to_string();
        assert!(e.contains("unknown device 'gpu'"), "{e}");
        let e = parse_device("cuda:x").unwrap_err().to_string();
        assert!(e.contains("unknown device"), "{e}");
        if !cfg!(feature = "cuda") {
            let e = parse_device("cuda").unwrap_err().to_string();
            assert!(e.contains("built without CUDA"), "{e}");
        }
    }
}
