//! The one place a forward process is built from its kind and a vocabulary: training, sampling,
//! evaluation and distillation all go through it.

use super::{ForwardProcess, Masked, ProcessKind, Uniform};
use crate::{Error, Result};

/// The process of `kind` over `vocab` model ids (`mask_id`: MDLM's absorbing state); `top_p`
/// truncates Duo's sampling distribution (MDLM has no such option: an error names it).
pub fn build_process(
    kind: ProcessKind,
    vocab: usize,
    mask_id: u32,
    top_p: Option<f64>,
) -> Result<Box<dyn ForwardProcess>> {
    match kind {
        ProcessKind::Mdlm => {
            if top_p.is_some() {
                return Err(Error::InvalidArgument(
                    "--top-p applies to Duo and AR models, not to an MDLM model".into(),
                ));
            }
            Ok(Box::new(Masked::new(vocab, mask_id)?))
        }
        ProcessKind::Duo => Ok(Box::new(
            Uniform::new(vocab)?.with_top_p(top_p.unwrap_or(1.0))?,
        )),
    }
}
