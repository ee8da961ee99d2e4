//! Seeded initialisation of a DiT's parameters, as the reference code initialises them.

use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Result;

/// Initialise every variable in `varmap` from `seed`: embedding and linear layers uniform
/// (+-1/sqrt(fan_in), PyTorch's Kaiming-uniform with a = sqrt 5), norms one, adaLN and the output
/// layer zero (adaLN-zero).
pub fn init_dit(varmap: &VarMap, seed: u64) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| crate::Error::Config("variable map lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    // Sorted so the draws do not depend on hash-map order.
    names.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for name in names {
        let var = &data[name];
        let shape = var.shape().clone();
        let n = shape.elem_count();
        let zero = name.contains("adaLN_modulation") || name.contains("output_layer.linear");
        let values: Vec<f32> = if zero {
            vec![0.0; n]
        } else if name.ends_with("norm1.weight")
            || name.ends_with("norm2.weight")
            || name.ends_with("norm_final.weight")
        {
            vec![1.0; n]
        } else {
            let fan_in = if name.ends_with("embedding") || name.ends_with(".weight") {
                shape.dims().get(1).copied().unwrap_or(1)
            } else {
                // A bias: its fan-in is the input width of the weight beside it.
                let w = name.trim_end_matches("bias").to_string() + "weight";
                data.get(&w)
                    .and_then(|v| v.shape().dims().get(1).copied())
                    .unwrap_or(1)
            };
            let bound = 1.0 / (fan_in as f64).sqrt();
            (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect()
        };
        let t = Tensor::from_vec(values, shape, var.device())?.to_dtype(DType::F32)?;
        var.set(&t)?;
    }
    Ok(())
}

/// Detached copies of `varmap`'s variables: a network built on them records no autograd graph, as
/// one loaded from a checkpoint. (Built on the variables, every forward keeps all its activations
/// alive until its output is dropped: gigabytes at batch 8 of rows of 1024.)
pub fn detached(varmap: &VarMap) -> Result<std::collections::HashMap<String, candle_core::Tensor>> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| crate::Error::InvalidArgument("the variable map's lock is poisoned".into()))?;
    Ok(vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect())
}
