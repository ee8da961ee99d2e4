//! Text -> tokens: corpus discovery and fetching, tokenizers, packed token files.

pub mod corpus;
pub mod datadir;
pub mod fetch;
pub mod gpt2_bpe;
pub mod packed;
pub mod packed_writer;
pub mod pairs;
pub mod prepare;
mod prepare_pairs;
pub mod registry;
pub mod split;
pub mod tokenizer;

pub use corpus::{Document, read_documents, read_sources, resolve_corpus, shared_data_dir};
pub use datadir::{DataDir, DataInfo};
pub use fetch::{FetchReport, cache_dir, fetch_corpus};
pub use packed::{PackedHeader, PackedTokens};
pub use packed_writer::PackedWriter;
pub use prepare::{PrepareOptions, PrepareReport, TokenizerChoice, prepare};
pub use split::split_documents;
pub use tokenizer::TextTokenizer;
