//! Small random networks for sampler tests.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use idlm::nn::init::init_dit;
use idlm::nn::{Dit, DitConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// A DiT of vocabulary `v` and length `l` (width 16, 2 blocks) with seeded noise on every weight.
pub fn noisy_dit(v: usize, l: usize, time_conditioning: bool) -> Dit {
    let cfg = DitConfig {
        vocab_size: v,
        hidden_size: 16,
        cond_dim: 8,
        n_blocks: 2,
        n_heads: 2,
        mlp_ratio: 2,
        length: l,
        dropout: 0.0,
        time_conditioning,
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let d = Dit::new(vb, &cfg).unwrap();
    init_dit(&varmap, 3).unwrap();
    // Larger weights than the reference init (zero output layer), so the logits depend on x_t and
    // sigma and a wrong row or time would change the draws; seeded, so every run tests the same net.
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut vars = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<Vec<_>>();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, v) in vars {
        let t = v.as_tensor();
        let noise: Vec<f32> = (0..t.elem_count())
            .map(|_| 0.3 * rng.sample::<f32, _>(StandardNormal))
            .collect();
        let noise = Tensor::from_vec(noise, t.shape(), &Device::Cpu).unwrap();
        v.set(&(t + noise).unwrap()).unwrap();
    }
    d
}
