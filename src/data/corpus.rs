//! Documents from a source (folder of `.txt`, one `.txt`, or `.jsonl`) and the named corpora.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One document: a stable name (used for the train/validation split) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Machine-independent name: `<folder>/<relative path>`, `<file>` or `<file>:<line>`.
    pub name: String,
    /// The document's text.
    pub text: String,
}

/// Named corpora and the sub-folders of `text/` that make them up.
pub const NAMED_CORPORA: &[(&str, &[&str])] = &[
    // Tiny Shakespeare is left out of "english": it duplicates the Shakespeare texts.
    ("english", &["sotu", "shakespeare", "moby_dick"]),
    ("sotu", &["sotu"]),
    ("shakespeare", &["shakespeare"]),
    ("moby_dick", &["moby_dick"]),
    ("tinyshakespeare", &["tinyshakespeare"]),
];

/// The sub-corpora `name` stands for, or `None` if it is not a corpus name.
pub fn named_corpus(name: &str) -> Option<&'static [&'static str]> {
    NAMED_CORPORA
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, parts)| *parts)
}

/// The shared data folder: `$IDLM_SHARED_DATA` if set, else `../shared/data` if it exists.
pub fn shared_data_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("IDLM_SHARED_DATA") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from("../shared/data");
    p.is_dir().then_some(p)
}

/// Resolve a corpus name (english, sotu, ...) or a path to the folders/files to read.
///
/// Each named sub-corpus is looked up as `text/<name>` in the shared data folder first, then in
/// `cache_dir` (where `idlm data fetch` puts it). A folder in the cache is complete by construction:
/// fetch renames it into place only after every file's hash was checked.
pub fn resolve_corpus(name_or_path: &str, cache_dir: &Path) -> Result<Vec<PathBuf>> {
    let Some(parts) = named_corpus(name_or_path) else {
        let p = PathBuf::from(name_or_path);
        if !p.exists() {
            let names: Vec<&str> = NAMED_CORPORA.iter().map(|(n, _)| *n).collect();
            return Err(Error::Data(format!(
                "corpus {name_or_path:?} is neither a corpus name ({}) nor an existing path",
                names.join(", ")
            )));
        }
        return Ok(vec![p]);
    };
    let mut roots = Vec::new();
    if let Some(s) = shared_data_dir() {
        roots.push(s);
    }
    roots.push(cache_dir.to_path_buf());
    find_parts(parts, &roots)
}

/// Each part as `<root>/text/<part>`, from the first root that has it.
fn find_parts(parts: &[&str], roots: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for part in parts {
        let found = roots
            .iter()
            .map(|r| r.join("text").join(part))
            .find(|p| dir_has_txt(p));
        match found {
            Some(p) => out.push(p),
            None => {
                let looked: Vec<String> = roots
                    .iter()
                    .map(|r| r.join("text").join(part).display().to_string())
                    .collect();
                let hint = if *part == "tinyshakespeare" {
                    " (no registry package ships Tiny Shakespeare: it is only in the shared data folder)"
                } else {
                    ""
                };
                return Err(Error::Data(format!(
                    "corpus {part:?} not found (looked in {}): run `idlm data fetch`{hint}",
                    looked.join(", ")
                )));
            }
        }
    }
    Ok(out)
}

/// True when `dir` is a folder holding at least one `.txt` file directly.
fn dir_has_txt(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().any(|e| is_txt(&e.path())))
        .unwrap_or(false)
}

/// `.txt` extension, any case.
fn is_txt(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("txt"))
}

/// Read every document under each source, in order, and refuse an empty corpus.
pub fn read_sources(sources: &[PathBuf]) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for s in sources {
        docs.extend(read_documents(s)?);
    }
    Ok(docs)
}

/// Documents from a folder (every `*.txt`, recursively, sorted by relative path), a `.txt` file
/// or a `.jsonl` file (`{"text": ...}` per line). Whitespace-only documents are dropped.
pub fn read_documents(path: &Path) -> Result<Vec<Document>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("read corpus", path, e))?;
    let docs = if meta.is_dir() {
        read_folder(path)?
    } else if path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"))
    {
        read_jsonl(path)?
    } else {
        vec![Document {
            name: file_name(path),
            text: read_utf8(path)?,
        }]
    };
    let docs: Vec<Document> = docs
        .into_iter()
        .filter(|d| !d.text.trim().is_empty())
        .collect();
    if docs.is_empty() {
        return Err(Error::Data(format!(
            "corpus {} is empty (no .txt files or only empty texts)",
            path.display()
        )));
    }
    Ok(docs)
}

/// The last path component as a string (lossy only for non-UTF-8 names).
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// A whole file as UTF-8; the error names the file and the byte where decoding failed.
fn read_utf8(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        Error::Data(format!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Every `.txt` below `root`, named `<root name>/<relative path>` with `/` separators.
fn read_folder(root: &Path) -> Result<Vec<Document>> {
    let mut files = Vec::new();
    collect_txt(root, &mut files)?;
    let prefix = file_name(root);
    let mut named: Vec<(String, PathBuf)> = files
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(root).unwrap_or(&f);
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            (format!("{prefix}/{}", parts.join("/")), f)
        })
        .collect();
    // Sorting by the relative name makes the order independent of the file system's listing order.
    named.sort();
    named
        .into_iter()
        .map(|(name, f)| {
            Ok(Document {
                name,
                text: read_utf8(&f)?,
            })
        })
        .collect()
}

/// Recursively gather `.txt` files, skipping hidden entries (editor and VCS droppings).
fn collect_txt(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let p = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        // metadata() follows symlinks, so a linked folder or file is read like a real one.
        let meta = std::fs::metadata(&p).map_err(|e| Error::io("stat", &p, e))?;
        if meta.is_dir() {
            collect_txt(&p, out)?;
        } else if meta.is_file() && is_txt(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// One document per non-blank line of a JSONL file, named `<file>:<line>`.
fn read_jsonl(path: &Path) -> Result<Vec<Document>> {
    let text = read_utf8(path)?;
    let base = file_name(path);
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| Error::Data(format!("{} line {lineno}: {why}", path.display()));
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not valid JSON ({e})")))?;
        let Some(t) = value.get("text") else {
            return Err(bad("no \"text\" field".into()));
        };
        let Some(t) = t.as_str() else {
            return Err(bad("\"text\" is not a string".into()));
        };
        docs.push(Document {
            name: format!("{base}:{lineno}"),
            text: t.to_string(),
        });
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_is_recursive_sorted_and_skips_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("corp");
        std::fs::create_dir_all(root.join("b/sub")).unwrap();
        std::fs::write(root.join("z.txt"), "zed").unwrap();
        std::fs::write(root.join("a.TXT"), "ay").unwrap();
        std::fs::write(root.join("b/sub/c.txt"), "see").unwrap();
        std::fs::write(root.join("b/empty.txt"), " \n\t").unwrap();
        std::fs::write(root.join("notes.md"), "ignored").unwrap();
        std::fs::write(root.join(".hidden.txt"), "ignored").unwrap();
        let docs = read_documents(&root).unwrap();
        let names: Vec<&str> = docs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["corp/a.TXT", "corp/b/sub/c.txt", "corp/z.txt"]);
        assert_eq!(docs[1].text, "see");
    }

    #[test]
    fn jsonl_documents_and_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(
            &p,
            "{\"text\": \"one\"}\n\n{\"text\": \"two\", \"id\": 3}\n",
        )
        .unwrap();
        let docs = read_documents(&p).unwrap();
        assert_eq!(
            docs,
            vec![
                Document {
                    name: "d.jsonl:1".into(),
                    text: "one".into()
                },
                Document {
                    name: "d.jsonl:3".into(),
                    text: "two".into()
                },
            ]
        );
        std::fs::write(&p, "{\"text\": \"one\"}\n{\"text\": oops}\n").unwrap();
        let e = read_documents(&p).unwrap_err().to_string();
        assert!(
            e.contains("d.jsonl line 2") && e.contains("not valid JSON"),
            "{e}"
        );
        std::fs::write(&p, "{\"text\": \"one\"}\n{\"body\": \"x\"}\n").unwrap();
        let e = read_documents(&p).unwrap_err().to_string();
        assert!(
            e.contains("d.jsonl line 2") && e.contains("no \"text\" field"),
            "{e}"
        );
        std::fs::write(&p, "{\"text\": 5}\n").unwrap();
        let e = read_documents(&p).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("not a string"), "{e}");
    }

    #[test]
    fn empty_corpus_and_non_utf8_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("empty");
        std::fs::create_dir(&root).unwrap();
        let e = read_documents(&root).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        std::fs::write(root.join("blank.txt"), "  \n").unwrap();
        let e = read_documents(&root).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        std::fs::write(root.join("bad.txt"), b"ok \xff\xfe").unwrap();
        let e = read_documents(&root).unwrap_err().to_string();
        assert!(e.contains("bad.txt") && e.contains("not UTF-8"), "{e}");
        let single = dir.path().join("one.txt");
        std::fs::write(&single, "hello").unwrap();
        let docs = read_documents(&single).unwrap();
        assert_eq!(
            docs,
            vec![Document {
                name: "one.txt".into(),
                text: "hello".into()
            }]
        );
    }

    #[test]
    fn resolve_names_and_paths() {
        let cache = tempfile::tempdir().unwrap();
        let e = resolve_corpus("no/such/corpus", cache.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither a corpus name"), "{e}");
        let p = cache.path().join("x.txt");
        std::fs::write(&p, "x").unwrap();
        let p_str = p.to_str().unwrap();
        assert_eq!(
            resolve_corpus(p_str, cache.path()).unwrap(),
            vec![p.clone()]
        );
        // The shared copy (present in this repo's layout) is found for every named part of "english".
        if shared_data_dir().is_some_and(|s| s.join("text/sotu").is_dir()) {
            let parts = resolve_corpus("english", cache.path()).unwrap();
            let ends: Vec<String> = parts
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            assert_eq!(ends, ["sotu", "shakespeare", "moby_dick"]);
        }
    }

    #[test]
    fn parts_come_from_the_first_root_that_has_them() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(a.path().join("text/sotu")).unwrap();
        std::fs::write(a.path().join("text/sotu/1.txt"), "x").unwrap();
        // An empty folder in the first root does not hide a full one in the second.
        std::fs::create_dir_all(a.path().join("text/moby_dick")).unwrap();
        std::fs::create_dir_all(b.path().join("text/moby_dick")).unwrap();
        std::fs::write(b.path().join("text/moby_dick/c.txt"), "x").unwrap();
        let roots = [a.path().to_path_buf(), b.path().to_path_buf()];
        let got = find_parts(&["sotu", "moby_dick"], &roots).unwrap();
        assert_eq!(
            got,
            vec![a.path().join("text/sotu"), b.path().join("text/moby_dick")]
        );
        let e = find_parts(&["shakespeare"], &roots)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"shakespeare\" not found") && e.contains("idlm data fetch"),
            "{e}"
        );
    }
}
