//! One writer per run folder: `RUN/lock` holds the pid of the process training or distilling
//! there, under an OS advisory lock (`flock`). The kernel drops the lock when the process ends,
//! however it ends (kill -9 included), so a stale file never blocks a resume; a second process
//! pointed at the same folder is refused with the first one's pid. Once it holds the lock, a
//! process clears what a killed holder left half-written (`atomic::recover_dir`).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Name of the lock file inside a run folder.
pub const LOCK_FILE: &str = "lock";

/// The lock of a run folder, held until dropped (or the process ends).
#[derive(Debug)]
pub struct RunLock {
    // Closing the file releases the lock; the file itself stays (removing it would race a
    // process that has just opened it).
    _file: fs::File,
    path: PathBuf,
}

impl RunLock {
    /// Take the lock of `run_dir` (created if missing), writing this process's pid into it; an
    /// [`Error::RunLocked`] naming the holder's pid when another process holds it.
    pub fn acquire(run_dir: &Path) -> Result<Self> {
        fs::create_dir_all(run_dir).map_err(|e| Error::io("creating", run_dir, e))?;
        let path = run_dir.join(LOCK_FILE);
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("opening", &path, e))?;
        // SAFETY: flock(2) on a descriptor this function owns.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        let locked = rc == 0;
        if !locked {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let pid = text.trim().parse::<u32>().ok();
                return Err(Error::RunLocked {
                    dir: run_dir.to_path_buf(),
                    pid,
                });
            }
            // A file system without flock (some network mounts): run unlocked, and say so.
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS)
            ) {
                tracing::warn!(
                    "cannot lock {} ({e}): running without the run lock; do not start a second \
                     process on this folder",
                    path.display()
                );
            } else {
                return Err(Error::io("locking", &path, e));
            }
        }
        let mut write_pid = || -> std::io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "{}", std::process::id())?;
            file.flush()
        };
        write_pid().map_err(|e| Error::io("writing", &path, e))?;
        // Only under the lock: unlocked, a temp here may be another live process's.
        if locked {
            for dir in [run_dir.to_path_buf(), run_dir.join("checkpoints")] {
                let handled = crate::atomic::recover_dir(&dir)?;
                if !handled.is_empty() {
                    tracing::info!(
                        "{}: cleared what an interrupted write left: {}",
                        dir.display(),
                        handled.join(", ")
                    );
                }
            }
        }
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_pid_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = RunLock::acquire(&run).unwrap();
        assert_eq!(
            fs::read_to_string(first.path()).unwrap().trim(),
            std::process::id().to_string()
        );
        // flock locks belong to the open file, so a second open in this process conflicts too.
        let err = RunLock::acquire(&run).unwrap_err();
        assert!(matches!(err, Error::RunLocked { pid: Some(p), .. } if p == std::process::id()));
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())) && msg.contains("run"),
            "{msg}"
        );
        drop(first);
        // The stale file (pid still in it) does not block the next holder.
        let again = RunLock::acquire(&run).unwrap();
        drop(again);
    }
}
