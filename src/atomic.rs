//! Writes that a crash never leaves half done: a file through a sibling temp file, fsync and
//! rename; a folder staged beside its destination and renamed into place (an old one moved aside
//! first, then removed). Checkpoints, prepared data, fetched corpora and models, metrics
//! truncation, cached tables and every result file (samples JSONL, eval JSON, reports, run
//! configs) go through here; only `metrics.jsonl` is appended in place (a torn last line is
//! dropped on resume by `run::truncate_metrics`), and plots are rendered to a temp file first.
//! What a killed writer leaves in a run folder is cleared by [`recover_dir`] when the next
//! process takes the run's lock.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A name no other writer uses at the same time: the process id and the clock's nanoseconds.
fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// Best effort: a directory fsync makes a rename durable on Linux.
pub fn sync_dir(path: &Path) {
    if let Ok(f) = fs::File::open(path) {
        let _ = f.sync_all();
    }
}

/// Write `bytes` to `path` through `path.tmp-<pid>-<nanos>` + fsync + rename; the temp file is
/// removed if anything fails (a full disk, a read-only folder), and `path` is either the old file
/// or the new one. Errors name `path`, not the transient temp file.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", unique_suffix()));
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut f = fs::File::create(&tmp).map_err(|e| Error::io("creating", path, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("writing", path, e))?;
        f.sync_all().map_err(|e| Error::io("syncing", path, e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| Error::io("renaming into place", path, e))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp); // best effort: the error returned matters more
    }
    written?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent);
    }
    Ok(())
}

/// A temp folder inside `parent` (so the final rename stays on one file system), removed when
/// dropped unless [`Staging::publish`] renamed it into place.
pub struct Staging {
    path: PathBuf,
}

impl Staging {
    /// Create `parent/.<tag>.tmp-<pid>-<nanos>` (and `parent` if needed).
    pub fn new(parent: &Path, tag: &str) -> Result<Self> {
        fs::create_dir_all(parent).map_err(|e| Error::io("creating", parent, e))?;
        let path = parent.join(format!(".{tag}.tmp-{}", unique_suffix()));
        fs::create_dir_all(&path).map_err(|e| Error::io("creating", &path, e))?;
        Ok(Self { path })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rename the folder to `dest`, replacing an existing `dest` (see [`replace_dir`]).
    pub fn publish(self, dest: &Path) -> Result<()> {
        replace_dir(&self.path, dest)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // A no-op once published: the folder has moved.
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Rename the folder `src` to `dest`. An existing `dest` is first moved aside (so at every
/// moment `dest` is the old folder or the new one) and removed after.
pub fn replace_dir(src: &Path, dest: &Path) -> Result<()> {
    let mut old = dest.as_os_str().to_owned();
    old.push(format!(".old-{}", unique_suffix()));
    let old = PathBuf::from(old);
    let had_old = dest.exists();
    if had_old {
        fs::rename(dest, &old).map_err(|e| Error::io("moving aside", dest, e))?;
    }
    if let Err(e) = fs::rename(src, dest) {
        if had_old {
            let _ = fs::rename(&old, dest); // put the old one back
        }
        return Err(Error::io("renaming into place", dest, e));
    }
    if had_old {
        let _ = if old.is_dir() {
            fs::remove_dir_all(&old)
        } else {
            fs::remove_file(&old)
        };
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent);
    }
    Ok(())
}

/// What a writer's temporary is: the name it stands for, whether it is a folder moved aside by
/// [`replace_dir`] (`X.old-<pid>-<nanos>`) rather than a temp file or staged folder
/// (`X.tmp-<pid>-<nanos>`, `.X.tmp-...`), and the writer's pid; None for any other name.
fn leftover_of(name: &str) -> Option<(&str, bool, &str)> {
    let (i, moved) = match name.rfind(".old-") {
        Some(i) => (i, true),
        None => (name.rfind(".tmp-")?, false),
    };
    let (base, suffix) = (&name[..i], &name[i + 5..]);
    let (pid, nanos) = suffix.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(nanos) && !base.is_empty()).then_some((base, moved, pid))
}

/// Whether the process `pid` (as a temp's name gives it) is running, other than this one.
fn other_live_process(pid: &str) -> bool {
    let Ok(pid) = pid.parse::<i32>() else {
        return false; // beyond any pid: no process
    };
    if pid <= 0 || pid as u32 == std::process::id() {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Put `dir` back in order after a writer was killed mid-write (kill -9, power loss): its temp
/// files and staged folders are removed (they would otherwise stay forever: a checkpoint's
/// staged folder is as large as the checkpoint), and a folder [`replace_dir`] had moved aside is
/// put back when its replacement never arrived, removed otherwise. A temporary whose writer (the
/// pid in its name) is still running is left alone: meant for a folder no other process writes
/// in (a run folder under its lock), where that is only a reused pid. Returns the names handled,
/// sorted.
pub fn recover_dir(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| leftover_of(n).is_some_and(|(_, _, pid)| !other_live_process(pid)))
        .collect();
    names.sort();
    for name in &names {
        let Some((base, moved, _)) = leftover_of(name) else {
            continue;
        };
        let path = dir.join(name);
        let original = dir.join(base);
        if moved && !original.exists() {
            // Killed between the two renames of `replace_dir`: the old folder is the one to keep.
            fs::rename(&path, &original).map_err(|e| Error::io("putting back", &original, e))?;
            continue;
        }
        let removed = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(|e| Error::io("removing the leftover", &path, e))?;
    }
    if !names.is_empty() {
        sync_dir(dir);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_folders_are_replaced_whole_and_temps_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.json");
        write_file(&f, b"one").unwrap();
        write_file(&f, b"two").unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        // A write into a missing folder fails and leaves nothing behind.
        assert!(write_file(&dir.path().join("no/such/file"), b"x").is_err());
        let dest = dir.path().join("out");
        for round in 0..2 {
            let s = Staging::new(dir.path(), "out").unwrap();
            fs::write(s.path().join("x"), format!("{round}")).unwrap();
            s.publish(&dest).unwrap();
            assert_eq!(
                fs::read_to_string(dest.join("x")).unwrap(),
                format!("{round}")
            );
        }
        // Dropped unpublished: removed.
        let s = Staging::new(dir.path(), "gone").unwrap();
        let p = s.path().to_path_buf();
        drop(s);
        assert!(!p.exists());
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, ["a.json", "out"]);
    }

    #[test]
    fn recover_dir_removes_temps_and_puts_back_a_folder_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // What writers killed at various points leave: a staged checkpoint, a temp file, a
        // folder moved aside whose replacement arrived, and one whose replacement never did.
        fs::create_dir_all(d.join(".step-00000040.tmp-2000000001-345")).unwrap();
        fs::write(
            d.join(".step-00000040.tmp-2000000001-345/model.safetensors"),
            b"x",
        )
        .unwrap();
        fs::write(d.join("latest.tmp-2000000001-346"), b"step-").unwrap();
        fs::create_dir_all(d.join("step-00000020")).unwrap();
        fs::create_dir_all(d.join("step-00000020.old-2000000002-8")).unwrap();
        fs::create_dir_all(d.join("best.old-99999999999-10")).unwrap();
        fs::write(d.join("best.old-99999999999-10/meta.json"), b"{}").unwrap();
        // A live writer's temp (pid 1, init, always runs) stays, as
        // do names that only look alike.
        fs::write(d.join("samples.jsonl.tmp-1-5"), b"live").unwrap();
        for keep in ["notes.tmp-1", "a.tmp-x-1", "plain.json", ".tmp-1-2"] {
            fs::write(d.join(keep), b"keep").unwrap();
        }
        let handled = recover_dir(d).unwrap();
        assert_eq!(
            handled,
            [
                ".step-00000040.tmp-2000000001-345",
                "best.old-99999999999-10",
                "latest.tmp-2000000001-346",
                "step-00000020.old-2000000002-8"
            ]
        );
        let mut left: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".tmp-1-2",
                "a.tmp-x-1",
                "best",
                "notes.tmp-1",
                "plain.json",
                "samples.jsonl.tmp-1-5",
                "step-00000020"
            ]
        );
        assert_eq!(fs::read(d.join("best/meta.json")).unwrap(), b"{}");
        assert!(recover_dir(d).unwrap().is_empty());
        assert!(recover_dir(&d.join("missing")).unwrap().is_empty());
    }
}
