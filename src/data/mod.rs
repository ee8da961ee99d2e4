//! Text -> tokens: corpus discovery and fetching, tokenizers, packed token files.
