//! Distillation of a diffusion teacher into a few-step student (docs/algorithms.md §4, §5.2): IDLM
//! (three networks, one fake update then one student update), the SDTT baseline (masked teachers)
//! and DCD (Duo teachers).

pub mod config;
pub mod dcd;
pub mod distiller;
pub mod idlm;
pub mod nets;
pub mod rounds;
pub mod run;
pub mod sdtt;
pub mod state;

pub use config::{DistillConfig, DuoGradient, GeneratorLoss, Method, TimeCoupling};
pub use dcd::{Dcd, DcdStats};
pub use distiller::Distiller;
pub use idlm::{Idlm, IdlmStats};
pub use run::{DistillRunOptions, DistillSummary, run_distill};
pub use sdtt::{Sdtt, SdttStats};
