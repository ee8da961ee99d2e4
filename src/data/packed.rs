//! Packed token files: fixed-length rows of token ids behind a 128-byte header, read by memory map.
//!
//! Layout (all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `IDLMTOK1` |
//! | 8 | 4 | format version (1) |
//! | 12 | 4 | bytes per token (2 if model vocab <= 65536, else 4) |
//! | 16 | 4 | model vocabulary size (tokenizer vocabulary + mask) |
//! | 20 | 4 | mask id |
//! | 24 | 4 | BOS id |
//! | 28 | 4 | EOS id |
//! | 32 | 4 | row length |
//! | 36 | 8 | number of rows |
//! | 44 | 32 | sha256 of the tokenizer (raw bytes) |
//! | 76 | 52 | zero |
//!
//! Then `rows * row_len` tokens, row after row.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

/// The eight bytes every packed token file starts with.
pub const MAGIC: &[u8; 8] = b"IDLMTOK1";
/// The only format version this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the fixed header in bytes; token data starts here.
pub const HEADER_LEN: usize = 128;
/// Largest vocabulary a header may claim (the largest real ones are ~256k): a count table of the
/// claimed size is allocated, so a corrupt header must not claim billions.
pub const MAX_VOCAB: u32 = 1 << 24;
/// Longest row a header may claim.
pub const MAX_ROW_LEN: u32 = 1 << 24;

/// The metadata at the start of a packed token file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedHeader {
    /// Format version (always [`FORMAT_VERSION`] for files this code accepts).
    pub version: u32,
    /// Bytes per stored token: 2 or 4.
    pub bytes_per_token: u32,
    /// Model vocabulary size, mask included; every stored token is below it.
    pub vocab_size: u32,
    /// Id of the mask token (never stored in data rows).
    pub mask_id: u32,
    /// Id that starts every row.
    pub bos_id: u32,
    /// Id that ends every row and every document.
    pub eos_id: u32,
    /// Tokens per row.
    pub row_len: u32,
    /// Number of rows.
    pub n_rows: u64,
    /// sha256 of the tokenizer that produced the ids, so data from another tokenizer is refused.
    pub tokenizer_sha256: [u8; 32],
}

impl PackedHeader {
    /// A header for `n_rows = 0`; the writer fills the row count in at the end.
    pub fn new(
        vocab_size: u32,
        mask_id: u32,
        bos_id: u32,
        eos_id: u32,
        row_len: u32,
        tokenizer_sha256: [u8; 32],
    ) -> Self {
        PackedHeader {
            version: FORMAT_VERSION,
            bytes_per_token: bytes_per_token_for(vocab_size),
            vocab_size,
            mask_id,
            bos_id,
            eos_id,
            row_len,
            n_rows: 0,
            tokenizer_sha256,
        }
    }

    /// The tokenizer hash as lowercase hex, as data.json and checkpoints store it.
    pub fn tokenizer_sha256_hex(&self) -> String {
        hex::encode(self.tokenizer_sha256)
    }

    /// Exact file size this header implies.
    pub fn expected_file_len(&self) -> Option<u64> {
        self.n_rows
            .checked_mul(u64::from(self.row_len))?
            .checked_mul(u64::from(self.bytes_per_token))?
            .checked_add(HEADER_LEN as u64)
    }

    /// Serialise to the fixed 128-byte layout.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.bytes_per_token.to_le_bytes());
        b[16..20].copy_from_slice(&self.vocab_size.to_le_bytes());
        b[20..24].copy_from_slice(&self.mask_id.to_le_bytes());
        b[24..28].copy_from_slice(&self.bos_id.to_le_bytes());
        b[28..32].copy_from_slice(&self.eos_id.to_le_bytes());
        b[32..36].copy_from_slice(&self.row_len.to_le_bytes());
        b[36..44].copy_from_slice(&self.n_rows.to_le_bytes());
        b[44..76].copy_from_slice(&self.tokenizer_sha256);
        b
    }

    /// Parse and validate a header; `path` only names the file in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::Data(format!("{}: {msg}", path.display()));
        if bytes.len() < HEADER_LEN || &bytes[0..8] != MAGIC {
            return Err(bad(format!(
                "not an idlm token file (expected magic {:?})",
                String::from_utf8_lossy(MAGIC)
            )));
        }
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let mut n_rows = [0u8; 8];
        n_rows.copy_from_slice(&bytes[36..44]);
        let mut sha = [0u8; 32];
        sha.copy_from_slice(&bytes[44..76]);
        let h = PackedHeader {
            version: u32_at(8),
            bytes_per_token: u32_at(12),
            vocab_size: u32_at(16),
            mask_id: u32_at(20),
            bos_id: u32_at(24),
            eos_id: u32_at(28),
            row_len: u32_at(32),
            n_rows: u64::from_le_bytes(n_rows),
            tokenizer_sha256: sha,
        };
        if h.version != FORMAT_VERSION {
            return Err(bad(format!(
                "unsupported format version {} (this idlm reads version {FORMAT_VERSION})",
                h.version
            )));
        }
        h.validate().map_err(bad)?;
        Ok(h)
    }

    /// Internal consistency of the fields; the message says which field is wrong.
    pub(super) fn validate(&self) -> std::result::Result<(), String> {
        if self.vocab_size == 0 {
            return Err("vocabulary size is 0".into());
        }
        if self.vocab_size > MAX_VOCAB {
            return Err(format!(
                "vocabulary size {} is beyond the {MAX_VOCAB} this idlm reads (a corrupt header?)",
                self.vocab_size
            ));
        }
        if self.row_len > MAX_ROW_LEN {
            return Err(format!(
                "row length {} is beyond the {MAX_ROW_LEN} this idlm reads (a corrupt header?)",
                self.row_len
            ));
        }
        let want = bytes_per_token_for(self.vocab_size);
        if self.bytes_per_token != want {
            return Err(format!(
                "{} bytes per token, but a vocabulary of {} needs {want}",
                self.bytes_per_token, self.vocab_size
            ));
        }
        for (name, id) in [
            ("mask", self.mask_id),
            ("bos", self.bos_id),
            ("eos", self.eos_id),
        ] {
            if id >= self.vocab_size {
                return Err(format!(
                    "{name} id {id} is outside the vocabulary of {}",
                    self.vocab_size
                ));
            }
        }
        if self.row_len == 0 {
            return Err("row length is 0".into());
        }
        Ok(())
    }
}

/// 2 bytes per token while every id fits in a u16, else 4.
pub fn bytes_per_token_for(vocab_size: u32) -> u32 {
    if vocab_size <= 1 << 16 { 2 } else { 4 }
}

/// A packed token file opened by memory map.
pub struct PackedTokens {
    path: PathBuf,
    header: PackedHeader,
    mmap: Mmap,
}

impl std::fmt::Debug for PackedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedTokens")
            .field("path", &self.path)
            .field("header", &self.header)
            .finish()
    }
}

impl PackedTokens {
    /// Map `path` and check its header and exact size.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("open token file", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat token file", path, e))?
            .len();
        if len < HEADER_LEN as u64 {
            return Err(Error::Data(format!(
                "{}: not an idlm token file ({len} bytes, shorter than the {HEADER_LEN}-byte header)",
                path.display()
            )));
        }
        // SAFETY: the file is opened read-only and idlm writes token files only through a temp file
        // renamed into place, so the mapped file is never modified while mapped by this program.
        let mmap =
            unsafe { Mmap::map(&file) }.map_err(|e| Error::io("memory-map token file", path, e))?;
        let header = PackedHeader::from_bytes(&mmap[..HEADER_LEN], path)?;
        let Some(expected) = header.expected_file_len() else {
            return Err(Error::Data(format!(
                "{}: header claims {} rows of {} tokens, which overflows",
                path.display(),
                header.n_rows,
                header.row_len
            )));
        };
        if expected != len {
            let what = if len < expected {
                "truncated"
            } else {
                "wrong size"
            };
            return Err(Error::Data(format!(
                "{}: {what}: expected {expected} bytes ({} rows x {} tokens x {} bytes + {HEADER_LEN}), found {len}",
                path.display(),
                header.n_rows,
                header.row_len,
                header.bytes_per_token
            )));
        }
        Ok(PackedTokens {
            path: path.to_path_buf(),
            header,
            mmap,
        })
    }

    /// The file's header.
    pub fn header(&self) -> &PackedHeader {
        &self.header
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.header.n_rows as usize
    }

    /// Tokens per row.
    pub fn row_len(&self) -> usize {
        self.header.row_len as usize
    }

    /// Raw little-endian bytes of row `i`.
    fn row_bytes(&self, i: usize) -> Result<&[u8]> {
        if i >= self.n_rows() {
            return Err(Error::Data(format!(
                "{}: row {i} out of range ({} rows)",
                self.path.display(),
                self.n_rows()
            )));
        }
        let row_bytes = self.row_len() * self.header.bytes_per_token as usize;
        let start = HEADER_LEN + i * row_bytes;
        Ok(&self.mmap[start..start + row_bytes])
    }

    /// Copy row `i` into `out` (length `row_len`) without allocating: the hot path for batching.
    pub fn row_into(&self, i: usize, out: &mut [u32]) -> Result<()> {
        if out.len() != self.row_len() {
            return Err(Error::Data(format!(
                "{}: row buffer has {} slots, rows have {} tokens",
                self.path.display(),
                out.len(),
                self.row_len()
            )));
        }
        let bytes = self.row_bytes(i)?;
        if self.header.bytes_per_token == 2 {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = u32::from(u16::from_le_bytes([b[0], b[1]]));
            }
        } else {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Ok(())
    }

    /// Row `i` as a new vector.
    pub fn row(&self, i: usize) -> Result<Vec<u32>> {
        // The row's bytes are checked to exist before its buffer is allocated.
        self.row_bytes(i)?;
        let mut v = vec![0u32; self.row_len()];
        self.row_into(i, &mut v)?;
        Ok(v)
    }

    /// Scan every token: each must be below the vocabulary and not the mask id (a corrupt file could
    /// otherwise index past an embedding table).
    pub fn verify_tokens(&self) -> Result<()> {
        // No buffer for a file of no rows: its row length is then backed by no bytes.
        let mut row = vec![0u32; if self.n_rows() > 0 { self.row_len() } else { 0 }];
        for i in 0..self.n_rows() {
            self.row_into(i, &mut row)?;
            if let Some((j, &t)) = row
                .iter()
                .enumerate()
                .find(|&(_, &t)| t >= self.header.vocab_size || t == self.header.mask_id)
            {
                return Err(Error::Data(format!(
                    "{}: row {i} position {j}: token {t} is {}",
                    self.path.display(),
                    if t == self.header.mask_id {
                        "the mask id".to_string()
                    } else {
                        format!("outside the vocabulary of {}", self.header.vocab_size)
                    }
                )));
            }
        }
        Ok(())
    }

    /// Count of each token id over the whole file (length = vocabulary size).
    pub fn token_counts(&self) -> Result<Vec<u64>> {
        let mut counts = vec![0u64; self.header.vocab_size as usize];
        let mut row = vec![0u32; if self.n_rows() > 0 { self.row_len() } else { 0 }];
        for i in 0..self.n_rows() {
            self.row_into(i, &mut row)?;
            for &t in &row {
                if let Some(c) = counts.get_mut(t as usize) {
                    *c += 1;
                }
            }
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::super::packed_writer::PackedWriter;
    use super::*;

    fn header(vocab: u32, row_len: u32) -> PackedHeader {
        PackedHeader::new(vocab, vocab - 1, 0, 0, row_len, [7u8; 32])
    }

    fn write(path: &Path, h: PackedHeader, rows: &[Vec<u32>]) -> Result<PackedHeader> {
        let mut w = PackedWriter::create(path, h)?;
        for r in rows {
            w.push_row(r)?;
        }
        w.finish()
    }

    #[test]
    fn round_trip_u16_and_u32() {
        let dir = tempfile::tempdir().unwrap();
        for (vocab, big) in [
            (8193u32, 8191u32),
            (65536, 65534),
            (50258, 50256),
            (65537, 65535),
            (100_000, 99_998),
        ] {
            let p = dir.path().join(format!("v{vocab}.bin"));
            let rows = vec![
                vec![0, 1, big, 2],
                vec![big, big - 1, 5, 0],
                vec![3, 3, 3, 3],
            ];
            let h = write(&p, header(vocab, 4), &rows).unwrap();
            assert_eq!(h.n_rows, 3);
            assert_eq!(h.bytes_per_token, if vocab <= 65536 { 2 } else { 4 });
            let t = PackedTokens::open(&p).unwrap();
            assert_eq!(t.n_rows(), 3);
            assert_eq!(t.row_len(), 4);
            assert_eq!(t.header(), &h);
            assert_eq!(t.header().tokenizer_sha256, [7u8; 32]);
            let len = std::fs::metadata(&p).unwrap().len();
            assert_eq!(len, 128 + 3 * 4 * u64::from(h.bytes_per_token));
            for (i, r) in rows.iter().enumerate() {
                assert_eq!(&t.row(i).unwrap(), r);
                let mut buf = [0u32; 4];
                t.row_into(i, &mut buf).unwrap();
                assert_eq!(&buf[..], &r[..]);
            }
            assert!(t.row(3).is_err());
            t.verify_tokens().unwrap();
            assert!(!dir.path().join(format!("v{vocab}.bin.tmp")).exists());
        }
    }

    /// Found by fuzz/run.sh: a header of 0 rows claiming rows of 2.5e9 tokens made the token scan
    /// allocate 10 GB from a 128-byte file.
    #[test]
    fn headers_claiming_huge_rows_or_vocabularies_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.bin");
        let found = include_bytes!("../../fuzz/regressions/packed/oom-zero-rows-row-len-2e9.bin");
        std::fs::write(&p, found).unwrap();
        let e = PackedTokens::open(&p).unwrap_err().to_string();
        assert!(e.contains("row length 2483028268 is beyond"), "{e}");
        for (vocab, row_len, what) in [
            (MAX_VOCAB + 1, 8, "vocabulary size"),
            (300, MAX_ROW_LEN + 1, "row length"),
        ] {
            let mut h = header(300, 8);
            (h.vocab_size, h.row_len, h.n_rows) = (vocab, row_len, 0);
            h.bytes_per_token = bytes_per_token_for(vocab);
            let e = PackedHeader::from_bytes(&h.to_bytes(), &p)
                .unwrap_err()
                .to_string();
            assert!(e.contains(what) && e.contains("corrupt header"), "{e}");
        }
        // The largest accepted row length with no rows: nothing is allocated for it.
        let mut h = header(300, 8);
        (h.row_len, h.n_rows) = (MAX_ROW_LEN, 0);
        std::fs::write(&p, h.to_bytes()).unwrap();
        let t = PackedTokens::open(&p).unwrap();
        t.verify_tokens().unwrap();
        assert_eq!(t.token_counts().unwrap().iter().sum::<u64>(), 0);
        assert!(t.row(0).is_err());
    }

    #[test]
    fn header_bytes_are_the_documented_layout() {
        let mut h = PackedHeader::new(70_000, 69_999, 5, 6, 256, [0xab; 32]);
        h.n_rows = 0x0102_0304_0506;
        let b = h.to_bytes();
        assert_eq!(&b[0..8], b"IDLMTOK1");
        assert_eq!(b[8..12], 1u32.to_le_bytes());
        assert_eq!(b[12..16], 4u32.to_le_bytes());
        assert_eq!(b[16..20], 70_000u32.to_le_bytes());
        assert_eq!(b[20..24], 69_999u32.to_le_bytes());
        assert_eq!(b[24..28], 5u32.to_le_bytes());
        assert_eq!(b[28..32], 6u32.to_le_bytes());
        assert_eq!(b[32..36], 256u32.to_le_bytes());
        assert_eq!(b[36..44], 0x0102_0304_0506u64.to_le_bytes());
        assert_eq!(b[44..76], [0xab; 32]);
        assert!(b[76..].iter().all(|&x| x == 0));
        assert_eq!(PackedHeader::from_bytes(&b, Path::new("x")).unwrap(), h);
    }

    #[test]
    fn writer_refuses_out_of_vocab_mask_and_wrong_length() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.bin");
        let mut w = PackedWriter::create(&p, header(100, 3)).unwrap();
        w.push_row(&[1, 2, 98]).unwrap();
        let e = w.push_row(&[1, 100, 2]).unwrap_err().to_string();
        assert!(
            e.contains("token 100") && e.contains("outside the vocabulary"),
            "{e}"
        );
        let e = w.push_row(&[1, 99, 2]).unwrap_err().to_string();
        assert!(e.contains("mask id"), "{e}");
        let e = w.push_row(&[1, 2]).unwrap_err().to_string();
        assert!(e.contains("2 tokens, expected 3"), "{e}");
        drop(w);
        // Never finished: neither the file nor its temp exist.
        assert!(!p.exists());
        assert!(!dir.path().join("bad.bin.tmp").exists());
    }

    #[test]
    fn open_rejects_bad_magic_truncation_and_extra_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.bin");
        write(&p, header(1000, 8), &[vec![1; 8], vec![2; 8]]).unwrap();
        let good = std::fs::read(&p).unwrap();

        let q = dir.path().join("q.bin");
        std::fs::write(&q, &good[..good.len() - 2]).unwrap();
        let e = PackedTokens::open(&q).unwrap_err().to_string();
        assert!(
            e.contains("q.bin") && e.contains("truncated: expected 160 bytes"),
            "{e}"
        );
        assert!(e.contains("found 158"), "{e}");

        let mut extra = good.clone();
        extra.extend_from_slice(&[0, 0]);
        std::fs::write(&q, &extra).unwrap();
        let e = PackedTokens::open(&q).unwrap_err().to_string();
        assert!(e.contains("wrong size") && e.contains("found 162"), "{e}");

        let mut magic = good.clone();
        magic[0] = b'X';
        std::fs::write(&q, &magic).unwrap();
        let e = PackedTokens::open(&q).unwrap_err().to_string();
        assert!(e.contains("not an idlm token file"), "{e}");

        std::fs::write(&q, b"short").unwrap();
        let e = PackedTokens::open(&q).unwrap_err().to_string();
        assert!(e.contains("not an idlm token file"), "{e}");

        let mut version = good.clone();
        version[8] = 2;
        std::fs::write(&q, &version).unwrap();
        let e = PackedTokens::open(&q).unwrap_err().to_string();
        assert!(e.contains("unsupported format version 2"), "{e}");

        let mut bpt = good.clone();
        bpt[12] = 4;
        std::fs::write(&q, &bpt).unwrap();
        let e = PackedTokens::open(&q).unwrap_err().to_string();
        assert!(e.contains("bytes per token"), "{e}");

        // A token past the vocabulary written by something else is caught by verify_tokens.
        let mut corrupt = good;
        corrupt[128] = 0xff;
        corrupt[129] = 0xff;
        std::fs::write(&q, &corrupt).unwrap();
        let t = PackedTokens::open(&q).unwrap();
        let e = t.verify_tokens().unwrap_err().to_string();
        assert!(e.contains("row 0 position 0: token 65535"), "{e}");
    }
}
