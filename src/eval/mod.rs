//! Evaluation under protocol idlm-eval-v1 (docs/design.md §6): the pretrained eval models, GenPPL
//! under SmolLM2-135M (or GPT-2, `--scorer`), unigram entropy, and MAUVE on all-MiniLM-L6-v2 features.

pub mod cluster;
pub mod entropy;
pub mod genppl;
pub mod gguf_tokenizer;
pub mod gpt2;
pub mod gpt2_tokenizer;
pub mod heldout;
pub mod llama;
pub mod mauve;
pub mod minilm;
pub mod models;
pub mod protocol;
pub mod scorer;

pub use entropy::{EntropyResult, entropy_stats, unigram_entropy};
pub use genppl::{GenPpl, GenPplResult};
pub use gguf_tokenizer::GgufTokenizer;
pub use gpt2::{Gpt2, Gpt2Config};
pub use llama::{LlamaConfig, QLlama, RopeStyle, WeightMode};
pub use mauve::{MauveOptions, MauveResult, compute_mauve, mauve_of_texts};
pub use minilm::MiniLm;
pub use models::{EvalModelsReport, fetch_eval_models, minilm_dir, smollm2_path};
pub use scorer::{ScorerLm, ScorerSource};
