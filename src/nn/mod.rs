//! Networks: the DiT backbone and its parts, seeded initialisation, EMA.

pub mod dit;
pub mod dropout;
pub mod ema;
pub mod init;
pub mod layers;
pub mod ops;
pub mod rotary;

pub use dit::{Dit, DitConfig, DitInput};
pub use dropout::DropoutRng;
pub use ema::Ema;
