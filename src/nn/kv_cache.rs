//! The KV cache of the causal LM: rotated keys and values of every past position, per layer, and
//! the single-query attention of one new position against them.

use rayon::prelude::*;

use super::ops::attention::RotaryAttention;
use super::ops::lanes::{dot, softmax_in_place};

/// Keys and values of one layer, laid out (B, H, capacity, dh) so each (sequence, head) is one
/// contiguous block that a task owns.
struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// Past keys and values of a batch of sequences decoded in lockstep.
pub struct KvCache {
    layers: Vec<LayerKv>,
    batch: usize,
    n_heads: usize,
    dh: usize,
    capacity: usize,
    len: usize,
}

impl KvCache {
    /// An empty cache (made by `CausalLm::new_cache`, so its sizes always fit the model).
    pub(crate) fn new(
        n_layers: usize,
        batch: usize,
        n_heads: usize,
        dh: usize,
        capacity: usize,
    ) -> Self {
        let n = batch * n_heads * capacity * dh;
        Self {
            layers: (0..n_layers)
                .map(|_| LayerKv {
                    k: vec![0f32; n],
                    v: vec![0f32; n],
                })
                .collect(),
            batch,
            n_heads,
            dh,
            capacity,
            len: 0,
        }
    }

    /// Positions stored so far (the position the next token is fed at).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Most positions the cache holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Mark the current position as stored (after every layer has seen it).
    pub(crate) fn advance(&mut self) {
        self.len += 1;
    }

    /// Store the new position's rotated key and value of `layer` from packed qkv (B, 3D) and
    /// return the attention output (B, D) of its query over positions 0..=len.
    pub(crate) fn attend(&mut self, layer: usize, qkv: &[f32], attn: &RotaryAttention) -> Vec<f32> {
        let (h, dh, cap, pos) = (self.n_heads, self.dh, self.capacity, self.len);
        let d = h * dh;
        let scale = 1.0 / (dh as f32).sqrt();
        let lay = &mut self.layers[layer];
        // Output (B, D) has head hd of sequence b at (b H + hd) dh: chunk bh of size dh.
        let mut out = vec![0f32; self.batch * d];
        out.par_chunks_mut(dh)
            .zip(lay.k.par_chunks_mut(cap * dh))
            .zip(lay.v.par_chunks_mut(cap * dh))
            .enumerate()
            .for_each(|(bh, ((o, kc), vc))| {
                let (bi, hd) = (bh / h, bh % h);
                let row = &qkv[bi * 3 * d..(bi + 1) * 3 * d];
                let mut q = vec![0f32; dh];
                attn.rotate_at(&row[hd * dh..(hd + 1) * dh], pos, &mut q);
                attn.rotate_at(
                    &row[d + hd * dh..d + (hd + 1) * dh],
                    pos,
                    &mut kc[pos * dh..(pos + 1) * dh],
                );
                vc[pos * dh..(pos + 1) * dh]
                    .copy_from_slice(&row[2 * d + hd * dh..2 * d + (hd + 1) * dh]);
                // Same arithmetic as the full-sequence kernel: raw dots, then exp(s scale - max).
                let mut s: Vec<f32> = kc[..(pos + 1) * dh]
                    .chunks_exact(dh)
                    .map(|k| dot(&q, k))
                    .collect();
                softmax_in_place(&mut s, scale);
                for (&w, v) in s.iter().zip(vc.chunks_exact(dh)) {
                    for (oj, vj) in o.iter_mut().zip(v) {
                        *oj += w * vj;
                    }
                }
            });
        out
    }
}
