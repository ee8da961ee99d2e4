//! The closed sets of values that options take, as clap `ValueEnum`s: `--help` lists them and a
//! wrong value gets clap's error naming the choices. They mirror library enums (kept free of clap)
//! and convert into them, so a new library variant is a compile error here until it is offered.

use clap::ValueEnum;
use idlm::distill::Method;
use idlm::process::NoiseRemoval;

/// The name clap shows and parses for a value (what `--set` overrides and configs also use).
pub fn name_of(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// `idlm train --process`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProcessArg {
    /// Masked diffusion (MDLM).
    Mdlm,
    /// Uniform-state diffusion (Duo).
    Duo,
    /// The autoregressive baseline (a causal LM of the same width and depth).
    Ar,
}

impl ProcessArg {
    /// The diffusion process named, or None for the AR baseline.
    pub fn diffusion(self) -> Option<idlm::process::ProcessKind> {
        match self {
            ProcessArg::Mdlm => Some(idlm::process::ProcessKind::Mdlm),
            ProcessArg::Duo => Some(idlm::process::ProcessKind::Duo),
            ProcessArg::Ar => None,
        }
    }
}

/// `idlm import --role`: which network of a Lightning checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// `backbone.*`: the trained model (a distillation run's student).
    Student,
    /// `teacher.*`: IDLM's frozen teacher.
    Teacher,
    /// `fake_model.*`: IDLM's fake denoiser.
    Fake,
}

impl From<RoleArg> for idlm::interop::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Student => Self::Student,
            RoleArg::Teacher => Self::Teacher,
            RoleArg::Fake => Self::Fake,
        }
    }
}

/// `idlm distill --method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Inverse distillation, for MDLM and Duo teachers.
    Idlm,
    /// Self-distillation through time, for MDLM teachers.
    Sdtt,
    /// Discrete consistency distillation, for Duo teachers.
    Dcd,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Self {
        match m {
            MethodArg::Idlm => Method::Idlm,
            MethodArg::Sdtt => Method::Sdtt,
            MethodArg::Dcd => Method::Dcd,
        }
    }
}

/// `idlm sample --sampler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SamplerArg {
    /// Diffusion: skips network calls a step cannot use (the default for diffusion checkpoints).
    #[value(alias = "ancestral_cache")]
    AncestralCache,
    /// Diffusion: one network call per step.
    Ancestral,
    /// AR: one token per step with a KV cache (the default, and the only sampler, for AR).
    KvCache,
}

/// `idlm sample --noise-removal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NoiseRemovalArg {
    /// One more ancestral update at the end (samples the remaining tokens).
    Ancestral,
    /// Argmax of the clean-token distribution at the end (Duo's greedy tail).
    Greedy,
}

impl From<NoiseRemovalArg> for NoiseRemoval {
    fn from(n: NoiseRemovalArg) -> Self {
        match n {
            NoiseRemovalArg::Ancestral => NoiseRemoval::Ancestral,
            NoiseRemovalArg::Greedy => NoiseRemoval::Greedy,
        }
    }
}

/// `idlm eval --metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricArg {
    /// Generative perplexity under SmolLM2-135M.
    Genppl,
    /// Mean per-sample unigram entropy.
    Entropy,
    /// MAUVE against --reference texts (MiniLM features).
    Mauve,
    /// Programs executed and compared with --answers (docs/tasks.md).
    Accuracy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_library_names() {
        // The library parses the same names (configs, `--set`), so the two lists cannot drift.
        for m in MethodArg::value_variants() {
            assert_eq!(name_of(*m).parse::<Method>().ok(), Some(Method::from(*m)));
        }
        for n in NoiseRemovalArg::value_variants() {
            let parsed = name_of(*n).parse::<NoiseRemoval>().ok();
            assert_eq!(parsed, Some(NoiseRemoval::from(*n)));
        }
        for m in MetricArg::value_variants() {
            assert!(idlm::eval::protocol::METRICS.contains(&name_of(*m).as_str()));
        }
        assert_eq!(
            MetricArg::value_variants().len(),
            idlm::eval::protocol::METRICS.len()
        );
    }
}

/// `prepare --format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowFormatArg {
    /// Rows cut from the concatenated documents.
    Stream,
    /// One prompt/answer pair per row.
    Pairs,
}
