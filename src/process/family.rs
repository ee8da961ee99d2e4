//! What a checkpoint or run holds: a diffusion model with its forward process, or the
//! autoregressive baseline. Stored as one string ("mdlm", "duo", "ar") under the `process` key of
//! configs and meta.json, as it always was, so old checkpoints load unchanged.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ProcessKind;
use crate::{Error, Result};

/// A diffusion model and its process, or the AR baseline (a causal LM, the `ar` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ModelFamily {
    /// A denoiser trained with a forward process.
    Diffusion(ProcessKind),
    /// A causal LM trained with next-token cross-entropy.
    Ar,
}

impl ModelFamily {
    /// Masked diffusion.
    pub const MDLM: Self = Self::Diffusion(ProcessKind::Mdlm);
    /// Uniform-state diffusion.
    pub const DUO: Self = Self::Diffusion(ProcessKind::Duo);

    /// The name in configs and checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            Self::Diffusion(k) => k.name(),
            Self::Ar => "ar",
        }
    }

    /// The forward process, if this is a diffusion model.
    pub fn process(self) -> Option<ProcessKind> {
        match self {
            Self::Diffusion(k) => Some(k),
            Self::Ar => None,
        }
    }

    /// True for the autoregressive baseline.
    pub fn is_ar(self) -> bool {
        self == Self::Ar
    }

    /// The forward process of the diffusion model held at `origin`; an error naming it otherwise.
    pub fn diffusion(self, origin: &Path) -> Result<ProcessKind> {
        self.process().ok_or_else(|| {
            Error::ckpt(
                origin,
                "holds an autoregressive model (process 'ar'), not a diffusion model",
            )
        })
    }

    /// Ok when `origin` holds the AR baseline; an error naming its process otherwise.
    pub fn expect_ar(self, origin: &Path) -> Result<()> {
        match self {
            Self::Ar => Ok(()),
            Self::Diffusion(k) => Err(Error::ckpt(
                origin,
                format!(
                    "holds a diffusion model (process '{}'), not an autoregressive ('ar') one",
                    k.name()
                ),
            )),
        }
    }
}

impl From<ProcessKind> for ModelFamily {
    fn from(k: ProcessKind) -> Self {
        Self::Diffusion(k)
    }
}

impl std::fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ModelFamily {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mdlm" => Ok(Self::MDLM),
            "duo" => Ok(Self::DUO),
            "ar" => Ok(Self::Ar),
            _ => Err(Error::InvalidArgument(format!(
                "process must be 'mdlm', 'duo' or 'ar', got '{s}'"
            ))),
        }
    }
}

impl TryFrom<String> for ModelFamily {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<ModelFamily> for String {
    fn from(f: ModelFamily) -> Self {
        f.name().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored form is the old `process` string, both ways; unknown names are named errors.
    #[test]
    fn stored_as_the_old_process_string() {
        for (f, s) in [
            (ModelFamily::MDLM, "\"mdlm\""),
            (ModelFamily::DUO, "\"duo\""),
            (ModelFamily::Ar, "\"ar\""),
        ] {
            assert_eq!(serde_json::to_string(&f).unwrap(), s);
            assert_eq!(serde_json::from_str::<ModelFamily>(s).unwrap(), f);
        }
        let e = serde_json::from_str::<ModelFamily>("\"sedd\"").unwrap_err();
        assert!(e.to_string().contains("'sedd'"), "{e}");
        let p = Path::new("ck");
        assert!(ModelFamily::Ar.diffusion(p).is_err());
        assert_eq!(ModelFamily::DUO.diffusion(p).unwrap(), ProcessKind::Duo);
        assert!(ModelFamily::MDLM.expect_ar(p).is_err());
    }
}
