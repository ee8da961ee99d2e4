//! Writing a packed token file (layout: `packed.rs`): rows appended to `path.tmp`, the final header
//! written and the file renamed into place by `finish`; dropped unfinished, the temp file goes.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::packed::{FORMAT_VERSION, PackedHeader, bytes_per_token_for};
use crate::error::{Error, Result};

/// Writes a packed token file row by row; the file appears under its name only after [`finish`](Self::finish).
pub struct PackedWriter {
    path: PathBuf,
    tmp_path: PathBuf,
    out: Option<BufWriter<File>>,
    header: PackedHeader,
    buf: Vec<u8>,
}

impl PackedWriter {
    /// Start writing `path` (through `path.tmp`) with the given header; its row count is ignored.
    pub fn create(path: &Path, header: PackedHeader) -> Result<Self> {
        let mut header = header;
        header.n_rows = 0;
        header.version = FORMAT_VERSION;
        header.bytes_per_token = bytes_per_token_for(header.vocab_size);
        header
            .validate()
            .map_err(|msg| Error::Data(format!("{}: invalid header: {msg}", path.display())))?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp_path = PathBuf::from(tmp);
        let file = File::create(&tmp_path).map_err(|e| Error::io("create", &tmp_path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // Placeholder; the real header (with the row count) is written by `finish`.
        out.write_all(&header.to_bytes())
            .map_err(|e| Error::io("write", &tmp_path, e))?;
        Ok(PackedWriter {
            path: path.to_path_buf(),
            tmp_path,
            out: Some(out),
            header,
            buf: Vec::new(),
        })
    }

    /// Rows written so far.
    pub fn n_rows(&self) -> u64 {
        self.header.n_rows
    }

    /// Append one row; refuses a wrong length, an id outside the vocabulary, or the mask id.
    pub fn push_row(&mut self, row: &[u32]) -> Result<()> {
        let h = &self.header;
        if row.len() != h.row_len as usize {
            return Err(Error::Data(format!(
                "{}: row {} has {} tokens, expected {}",
                self.path.display(),
                h.n_rows,
                row.len(),
                h.row_len
            )));
        }
        if let Some(&bad) = row.iter().find(|&&t| t >= h.vocab_size || t == h.mask_id) {
            let why = if bad == h.mask_id {
                "is the mask id".to_string()
            } else {
                format!("is outside the vocabulary of {}", h.vocab_size)
            };
            return Err(Error::Data(format!(
                "{}: row {}: token {bad} {why}",
                self.path.display(),
                h.n_rows
            )));
        }
        self.buf.clear();
        if h.bytes_per_token == 2 {
            // Fits: every id < vocab_size <= 65536 was checked above.
            self.buf
                .extend(row.iter().flat_map(|&t| (t as u16).to_le_bytes()));
        } else {
            self.buf.extend(row.iter().flat_map(|&t| t.to_le_bytes()));
        }
        let Some(out) = self.out.as_mut() else {
            return Err(Error::Data(format!(
                "{}: writer already finished",
                self.path.display()
            )));
        };
        out.write_all(&self.buf)
            .map_err(|e| Error::io("write", &self.tmp_path, e))?;
        self.header.n_rows += 1;
        Ok(())
    }

    /// Write the final header, flush to disk and rename `path.tmp` to `path`.
    pub fn finish(mut self) -> Result<PackedHeader> {
        let Some(out) = self.out.take() else {
            return Err(Error::Data(format!(
                "{}: writer already finished",
                self.path.display()
            )));
        };
        let tmp = self.tmp_path.clone();
        let mut file = out
            .into_inner()
            .map_err(|e| Error::io("write", &tmp, e.into_error()))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io("seek", &tmp, e))?;
        file.write_all(&self.header.to_bytes())
            .map_err(|e| Error::io("write", &tmp, e))?;
        file.sync_all().map_err(|e| Error::io("sync", &tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, &self.path)
            .map_err(|e| Error::io("rename into place", &self.path, e))?;
        Ok(self.header.clone())
    }
}

impl Drop for PackedWriter {
    fn drop(&mut self) {
        // An unfinished writer (error or panic) leaves no temp file behind; the target was never touched.
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}
