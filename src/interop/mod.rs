//! Interoperation with the reference PyTorch code: reading its released checkpoints (Hugging Face
//! directories and Lightning `.ckpt` files) and writing ours in its layout (docs/checkpoints.md).

pub mod export;
pub mod import;
pub mod layout;
pub mod omegaconf;
pub mod pickle;
pub mod special;
pub mod torch_zip;

pub use export::export_hf;
pub use import::{ImportOptions, Role, import, is_released};
