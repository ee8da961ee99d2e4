//! The package registries' clients, run as external programs: `pip download` (sdists and wheels),
//! `npm pack`, `tar`; a missing program is a named error with the way to install it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::error::{Error, Result};

/// `pip download --no-deps --no-binary :all: <spec>` (an sdist), or `--only-binary :all:` (a wheel)
/// when `wheel`, trying `pip`, `pip3`, then `python3 -m pip`.
pub(crate) fn pip_download(spec: &str, dest: &Path, wheel: bool) -> Result<()> {
    let hint = "install Python's pip (Debian: apt-get install python3-pip)";
    let args = [
        "download",
        "--no-deps",
        if wheel {
            "--only-binary"
        } else {
            "--no-binary"
        },
        ":all:",
        "--disable-pip-version-check",
        spec,
        "-d",
    ];
    let candidates: [(&str, &[&str]); 3] =
        [("pip", &[]), ("pip3", &[]), ("python3", &["-m", "pip"])];
    for (prog, pre) in candidates {
        let mut c = Command::new(prog);
        c.args(pre).args(args).arg(dest);
        match run(&mut c, prog, hint) {
            Err(Error::External(m)) if m.starts_with(&format!("{prog} not found")) => continue,
            other => return other.map(|_| ()),
        }
    }
    Err(Error::External(format!("pip not found: {hint}")))
}

/// `npm pack <spec>` into `dest` (a .tgz of the package).
pub(crate) fn npm_pack(spec: &str, dest: &Path) -> Result<()> {
    let mut c = Command::new("npm");
    c.args(["pack", spec, "--silent"]).current_dir(dest);
    run(
        &mut c,
        "npm",
        "install Node.js and npm (Debian: apt-get install npm)",
    )
    .map(|_| ())
}

/// Unpack the single archive downloaded into `dl` (see [`find_archive`]) into `dest`.
pub(crate) fn unpack_archive(dl: &Path, dest: &Path) -> Result<()> {
    let archive = find_archive(dl)?;
    std::fs::create_dir_all(dest).map_err(|e| Error::io("create", dest, e))?;
    let mut c = Command::new("tar");
    c.arg("-xzf").arg(&archive).arg("-C").arg(dest);
    run(
        &mut c,
        "tar",
        "install tar and gzip (Debian: apt-get install tar gzip)",
    )
    .map(|_| ())
}

/// The single downloaded archive (.tgz or .tar.gz) in `dir`.
pub(crate) fn find_archive(dir: &Path) -> Result<PathBuf> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut found: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.to_string_lossy();
            n.ends_with(".tgz") || n.ends_with(".tar.gz")
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::External(format!(
            "{}: the download produced no .tgz / .tar.gz",
            dir.display()
        ))),
        _ => Err(Error::External(format!(
            "{}: expected one archive, found {found:?}",
            dir.display()
        ))),
    }
}

/// Run an external program; a missing program gives "<prog> not found: <hint>", a failure its stderr.
pub(crate) fn run(cmd: &mut Command, prog: &str, hint: &str) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::External(format!("{prog} not found: {hint}"))
        } else {
            Error::External(format!("could not run {shown}: {e}"))
        }
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(Error::External(format!(
            "{shown} failed ({}):\n{tail}",
            out.status
        )));
    }
    Ok(out)
}
