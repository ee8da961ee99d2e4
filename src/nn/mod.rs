//! Networks: the DiT backbone and its parts, the causal LM with its KV cache (AR baseline), seeded
//! initialisation, EMA.

pub mod causal_lm;
pub mod denoiser;
pub mod dit;
pub mod dropout;
pub mod ema;
pub mod init;
pub mod kv_cache;
pub mod layers;
pub mod network;
pub mod ops;
pub mod rotary;

pub use causal_lm::{CausalLm, CausalLmConfig};
pub use denoiser::Denoiser;
pub use dit::{Dit, DitConfig, DitInput};
pub use dropout::DropoutRng;
pub use ema::Ema;
pub use kv_cache::KvCache;
pub use network::{Network, frozen};
