//! The DiT's public state-dict layout (docs/algorithms.md §8): every name and shape, in the order
//! `nn.Module.parameters()` yields them, which is the order of a Lightning EMA's `shadow_params`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use crate::nn::{DitConfig, dit::FREQ_EMBED_SIZE};
use crate::{Error, Result};

/// The rotary buffer's name (not a parameter; may or may not be stored).
pub const INV_FREQ: &str = "rotary_emb.inv_freq";

/// (name without prefix, shape) of every parameter, in the reference module registration order.
pub fn parameters(c: &DitConfig) -> Vec<(String, Vec<usize>)> {
    let (v, d, k) = (c.vocab_size, c.hidden_size, c.cond_dim);
    let m = c.mlp_ratio * d;
    let mut out = vec![
        ("vocab_embed.embedding".to_string(), vec![v, d]),
        ("sigma_map.mlp.0.weight".into(), vec![k, FREQ_EMBED_SIZE]),
        ("sigma_map.mlp.0.bias".into(), vec![k]),
        ("sigma_map.mlp.2.weight".into(), vec![k, k]),
        ("sigma_map.mlp.2.bias".into(), vec![k]),
    ];
    for i in 0..c.n_blocks {
        let b = |n: &str| format!("blocks.{i}.{n}");
        out.extend([
            (b("norm1.weight"), vec![d]),
            (b("attn_qkv.weight"), vec![3 * d, d]),
            (b("attn_out.weight"), vec![d, d]),
            (b("norm2.weight"), vec![d]),
            (b("mlp.0.weight"), vec![m, d]),
            (b("mlp.0.bias"), vec![m]),
            (b("mlp.2.weight"), vec![d, m]),
            (b("mlp.2.bias"), vec![d]),
            (b("adaLN_modulation.weight"), vec![6 * d, k]),
            (b("adaLN_modulation.bias"), vec![6 * d]),
        ]);
    }
    out.extend([
        ("output_layer.norm_final.weight".into(), vec![d]),
        ("output_layer.linear.weight".into(), vec![v, d]),
        ("output_layer.linear.bias".into(), vec![v]),
        (
            "output_layer.adaLN_modulation.weight".into(),
            vec![2 * d, k],
        ),
        ("output_layer.adaLN_modulation.bias".into(), vec![2 * d]),
    ]);
    out
}

/// The rotary inverse frequencies of head dimension `dim`, as the reference computes them.
pub fn inv_freq(dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|j| 10000f64.powf(-(2.0 * j as f64) / dim as f64) as f32)
        .collect()
}

/// Check `w` (names without prefix) holds exactly the parameters of `c` with their shapes, plus
/// optionally the rotary buffer with the right values; every problem is named, all at once.
pub fn check(w: &HashMap<String, Tensor>, c: &DitConfig, origin: &Path) -> Result<()> {
    let expected = parameters(c);
    let mut problems = Vec::new();
    for (name, shape) in &expected {
        match w.get(name) {
            None => problems.push(format!("missing tensor {name} {shape:?}")),
            Some(t) if t.dims() != shape.as_slice() => problems.push(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                t.dims()
            )),
            Some(_) => {}
        }
    }
    let mut extra: Vec<&String> = w
        .keys()
        .filter(|k| k.as_str() != INV_FREQ && !expected.iter().any(|(n, _)| n == *k))
        .collect();
    extra.sort();
    problems.extend(extra.iter().map(|k| format!("unexpected tensor {k}")));
    if let Some(t) = w.get(INV_FREQ) {
        let want = inv_freq(c.hidden_size / c.n_heads);
        match t.flatten_all().and_then(|t| t.to_vec1::<f32>()) {
            Ok(got) if got.len() == want.len() => {
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| ((a - b) / b).abs())
                    .fold(0f32, f32::max);
                if worst > 1e-5 {
                    problems.push(format!(
                        "{INV_FREQ} differs from base-10000 rotary frequencies of head dim {} \
                         (relative {worst:.2e}): wrong n_heads?",
                        c.hidden_size / c.n_heads
                    ));
                }
            }
            _ => problems.push(format!(
                "{INV_FREQ} has shape {:?}, expected [{}] (head dim {}): wrong n_heads?",
                t.dims(),
                want.len(),
                c.hidden_size / c.n_heads
            )),
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let n = problems.len();
    problems.truncate(12);
    let more = if n > 12 {
        format!("; and {} more", n - 12)
    } else {
        String::new()
    };
    Err(Error::ckpt(
        origin,
        format!(
            "weights do not match the DiT layout: {}{more}",
            problems.join("; ")
        ),
    ))
}

/// The prefix under which a DiT's tensors sit among `names` (e.g. `backbone.`, `backbone.backbone.`,
/// `fake_model.`): every prefix of a `...vocab_embed.embedding` key.
pub fn prefixes<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = names
        .filter_map(|n| n.strip_suffix("vocab_embed.embedding"))
        .map(str::to_string)
        .collect();
    out.sort();
    out
}

/// Shapes that fix the architecture: (vocab, hidden, cond_dim, n_blocks, mlp_ratio), read from
/// the tensors under `prefix`.
pub fn sizes_from_shapes(
    shapes: &HashMap<String, Vec<usize>>,
    origin: &Path,
) -> Result<[usize; 5]> {
    let get = |n: &str| {
        shapes
            .get(n)
            .cloned()
            .ok_or_else(|| Error::ckpt(origin, format!("missing tensor {n}")))
    };
    let emb = get("vocab_embed.embedding")?;
    let sig = get("sigma_map.mlp.0.weight")?;
    let mlp = get("blocks.0.mlp.0.weight")?;
    if emb.len() != 2 || sig.len() != 2 || mlp.len() != 2 || emb[1] == 0 {
        return Err(Error::ckpt(
            origin,
            "embedding, sigma map or MLP is not a matrix",
        ));
    }
    let blocks = (0..)
        .take_while(|i| shapes.contains_key(&format!("blocks.{i}.norm1.weight")))
        .count();
    if !mlp[0].is_multiple_of(emb[1]) {
        return Err(Error::ckpt(
            origin,
            format!(
                "MLP width {} is not a multiple of the hidden size {}",
                mlp[0], emb[1]
            ),
        ));
    }
    Ok([emb[0], emb[1], sig[0], blocks, mlp[0] / emb[1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_count_is_the_model_cards() {
        let c = DitConfig {
            vocab_size: 50258,
            hidden_size: 768,
            cond_dim: 128,
            n_blocks: 12,
            n_heads: 12,
            mlp_ratio: 4,
            length: 1024,
            dropout: 0.1,
            time_conditioning: false,
        };
        let n: usize = parameters(&c)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        // docs/algorithms.md §2.4: 169,627,218 weights (+ 32 rotary floats on the model cards).
        assert_eq!(n, 169_627_218);
        assert_eq!(n, c.n_params());
        assert_eq!(inv_freq(64).len(), 32);
    }
}
