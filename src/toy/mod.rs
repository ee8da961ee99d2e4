//! Exact toy worlds (docs/toy-world.md): `world` enumerates p*, its exact denoisers and quadrature;
//! `idlm` tabulates the IDLM objective and K-step samplers on top of it.

pub mod idlm;
pub mod world;

pub use world::{ExactDenoiser, ExactUniformDenoiser, ToyWorld, gauss_legendre};
