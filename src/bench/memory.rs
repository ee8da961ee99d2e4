//! Resident memory of this process from /proc/self/status, and resetting its high-water mark so a
//! phase's peak can be read on its own (VmHWM is otherwise monotone over the process's life).

/// (VmRSS, VmHWM) in MiB (None off Linux).
pub fn rss_mib() -> Option<(f64, f64)> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = s.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Give freed heap back to the OS and reset VmHWM to the current VmRSS; whether the reset worked.
/// The allocator keeps freed memory (see `runtime::tune_malloc`), so without the trim the mark
/// would start above the live set.
pub fn reset_peak() -> bool {
    // SAFETY: malloc_trim only returns free heap memory to the OS.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::malloc_trim(0);
    }
    // Writing 5 resets VmHWM to the current RSS (Linux >= 4.0).
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
