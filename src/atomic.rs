//! Writes that a crash never leaves half done: a file through a sibling temp file, fsync and
//! rename; a folder staged beside its destination and renamed into place (an old one moved aside
//! first, then removed). Checkpoints, prepared data, fetched corpora and models, metrics
//! truncation, cached tables and every result file (samples JSONL, eval JSON, reports, run
//! configs) go through here; only `metrics.jsonl` is appended in place (a torn last line is
//! dropped on resume by `run::truncate_metrics`), and plots are rendered to a temp file first.

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
}
