//! PyTorch's `torch.save` format (a zip holding `<name>/data.pkl` and one `<name>/data/<key>`
//! record per storage), read with the non-executing [`super::pickle`] reader.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use half::{bf16, f16};

use super::pickle::{Pickle, TensorRef};
use crate::{Error, Result};

/// An opened `torch.save` archive with its parsed pickle.
pub struct TorchFile {
    path: PathBuf,
    zip: zip::ZipArchive<File>,
    prefix: String,
    /// The object tree of `data.pkl`.
    pub pickle: Pickle,
}

impl std::fmt::Debug for TorchFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchFile")
            .field("path", &self.path)
            .finish()
    }
}

/// Bytes per element of a storage class, and whether idlm reads it as weights.
fn elem_size(storage: &str) -> Option<usize> {
    Some(match storage {
        "FloatStorage" | "IntStorage" => 4,
        "DoubleStorage" | "LongStorage" => 8,
        "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
        "CharStorage" | "ByteStorage" | "BoolStorage" => 1,
        _ => return None,
    })
}

impl TorchFile {
    /// Open `path` and parse its pickle (a foreign global or a malformed pickle is a named error).
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |m: String| Error::ckpt(path, m);
        let f = File::open(path).map_err(|e| Error::io("opening", path, e))?;
        let mut zip = zip::ZipArchive::new(f)
            .map_err(|e| bad(format!("not a torch.save zip archive: {e}")))?;
        let pkl = zip
            .file_names()
            .filter_map(|n| n.ok().map(|n| n.into_owned()))
            .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
            .ok_or_else(
                || bad("no <name>/data.pkl in the archive: not a torch.save file".into()),
            )?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        if let Ok(mut bo) = zip.by_name(&format!("{prefix}byteorder")) {
            let mut s = String::new();
            bo.read_to_string(&mut s)
                .map_err(|e| bad(format!("reading byteorder: {e}")))?;
            if s.trim() != "little" {
                return Err(bad(format!("byte order {:?} is not supported", s.trim())));
            }
        }
        let mut bytes = Vec::new();
        zip.by_name(&pkl)
            .map_err(|e| bad(format!("{pkl}: {e}")))?
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("reading {pkl}: {e}")))?;
        let pickle = Pickle::parse(&bytes).map_err(|e| bad(format!("{pkl}: {e}")))?;
        Ok(TorchFile {
            path: path.to_path_buf(),
            zip,
            prefix,
            pickle,
        })
    }

    /// The archive's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensor `t` refers to, as float32 (float16 / bfloat16 / float64 are converted).
    pub fn tensor(&mut self, t: &TensorRef, name: &str) -> Result<Tensor> {
        let path = self.path.clone();
        let bad = |m: String| Error::ckpt(&path, format!("tensor {name}: {m}"));
        let size = elem_size(&t.storage)
            .ok_or_else(|| bad(format!("unknown storage type {}", t.storage)))?;
        let record = format!("{}data/{}", self.prefix, t.key);
        let mut raw = Vec::new();
        self.zip
            .by_name(&record)
            .map_err(|e| bad(format!("storage record {record}: {e}")))?
            .read_to_end(&mut raw)
            .map_err(|e| bad(format!("reading {record}: {e}")))?;
        if raw.len() % size != 0 {
            return Err(bad(format!(
                "storage {record} is {} bytes, not whole elements",
                raw.len()
            )));
        }
        let values: Vec<f32> = match t.storage.as_str() {
            "FloatStorage" => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            "DoubleStorage" => raw
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    f64::from_le_bytes(a) as f32
                })
                .collect(),
            "HalfStorage" => raw
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            "BFloat16Storage" => raw
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => return Err(bad(format!("{other} is not floating point"))),
        };
        let numel: usize = t.shape.iter().product();
        // Largest element the view touches; it must lie inside the storage.
        let last = t.offset
            + t.shape
                .iter()
                .zip(&t.stride)
                .map(|(&n, &s)| n.saturating_sub(1).saturating_mul(s))
                .fold(0usize, |a, b| a.saturating_add(b));
        if numel > 0 && last >= values.len() {
            return Err(bad(format!(
                "view (offset {}, shape {:?}, stride {:?}) exceeds its storage of {} elements",
                t.offset,
                t.shape,
                t.stride,
                values.len()
            )));
        }
        let out = gather(&values, t, numel);
        Ok(
            Tensor::from_vec(out, t.shape.clone(), &crate::runtime::device())?
                .to_dtype(DType::F32)?,
        )
    }
}

/// The view's elements in row-major order (bounds checked by the caller).
fn gather(values: &[f32], t: &TensorRef, numel: usize) -> Vec<f32> {
    let contiguous = {
        let mut expect = 1usize;
        let mut ok = true;
        for (&n, &s) in t.shape.iter().zip(&t.stride).rev() {
            if n > 1 && s != expect {
                ok = false;
            }
            expect *= n;
        }
        ok
    };
    if contiguous {
        return values[t.offset..t.offset + numel].to_vec();
    }
    let mut out = Vec::with_capacity(numel);
    let mut idx = vec![0usize; t.shape.len()];
    for _ in 0..numel {
        let at = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.push(values[at]);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}
