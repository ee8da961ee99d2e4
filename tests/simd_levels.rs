//! The element-wise and row kernels are compiled for AVX-512, AVX2 + FMA and plain x86-64 and
//! picked at run time (`nn::ops::simd`). Every level must compute exactly the same numbers: the
//! same operations in the same order, only wider (Rust never fuses a * b + c into an FMA on its
//! own). A whole DiT training step and a forward are run at each level this CPU has and compared
//! bit for bit.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use idlm::nn::init::init_dit;
use idlm::nn::ops::head_nll::NllRows;
use idlm::nn::ops::simd::{self, Level};
use idlm::nn::{Dit, DitConfig, DitInput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

// Odd sizes so that every vector loop also runs its remainder.
const V: usize = 37;
const L: usize = 19;
const B: usize = 3;

fn dit() -> (Dit, VarMap) {
    let cfg = DitConfig {
        vocab_size: V,
        hidden_size: 28,
        cond_dim: 12,
        n_blocks: 2,
        n_heads: 2,
        mlp_ratio: 4,
        length: L,
        dropout: 0.0,
        time_conditioning: true,
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let d = Dit::new(vb, &cfg).unwrap();
    init_dit(&varmap, 5).unwrap();
    // Random weights everywhere (the reference init zeroes the adaLN and output layers).
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let mut vars: Vec<_> = varmap.data().lock().unwrap().clone().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, v) in vars {
        let t = v.as_tensor();
        let noise: Vec<f32> = (0..t.elem_count())
            .map(|_| 0.4 * rng.sample::<f32, _>(StandardNormal))
            .collect();
        let noise = Tensor::from_vec(noise, t.shape(), &Device::Cpu).unwrap();
        v.set(&(t + noise).unwrap()).unwrap();
    }
    (d, varmap)
}

/// Loss, every gradient (by name) and the logits of a forward, as flat f32.
fn step(d: &Dit, varmap: &VarMap) -> Vec<(String, Vec<f32>)> {
    let ids: Vec<u32> = (0..B * L).map(|i| ((i * 11 + 3) % V) as u32).collect();
    let x = Tensor::from_vec(ids.clone(), (B, L), &Device::Cpu).unwrap();
    let sigma = Tensor::new(&[0.3f32, 1.7, 4.0], &Device::Cpu).unwrap();
    let rows = NllRows {
        targets: ids.iter().map(|&t| (t * 7 + 1) % (V as u32 - 1)).collect(),
        weights: (0..B * L).map(|i| (i % 4) as f32 * 0.25).collect(),
        exclude: Some(V - 1),
    };
    let f = d.features(DitInput::Ids(&x), &sigma, None).unwrap();
    let loss = d
        .head_nll(&f.reshape((B * L, 28)).unwrap(), &rows)
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut out = vec![("loss".to_string(), flat(&loss))];
    let mut vars: Vec<_> = varmap.data().lock().unwrap().clone().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, v) in vars {
        let g = grads.get(v.as_tensor()).unwrap();
        out.push((name, flat(g)));
    }
    let logits = d.forward(DitInput::Ids(&x), &sigma, None).unwrap();
    out.push(("logits".into(), flat(&logits)));
    out
}

#[test]
fn every_simd_level_gives_the_same_training_step_bit_for_bit() {
    let (d, varmap) = dit();
    let levels = simd::available();
    assert_eq!(levels[0], Level::Plain);
    simd::set_level(Level::Plain);
    assert_eq!(simd::level(), Level::Plain);
    let plain = step(&d, &varmap);
    assert!(plain[0].1[0].is_finite() && plain[0].1[0] > 0.0);
    for &at in &levels[1..] {
        simd::set_level(at);
        assert_eq!(simd::level(), at);
        let wide = step(&d, &varmap);
        assert_eq!(wide.len(), plain.len());
        for ((name, a), (_, b)) in plain.iter().zip(&wide) {
            let same =
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{name} differs at {at:?}");
        }
    }
}
