//! IDLM-MDLM's student loss: its analytic gradient, SUBS cancellation, and the zero gradient when
//! student = fake = teacher.

use candle_core::{D, Device, Tensor, Var};
use idlm::distill::idlm::generator_loss;
use idlm::process::{ForwardProcess, Masked};
use idlm::sample::Denoiser;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A "network" with fixed logits per flat position.
struct Fixed {
    logits: Vec<f32>,
    v: usize,
    l: usize,
}

impl Denoiser for Fixed {
    fn logits(&self, xt: &Tensor, _s: &Tensor, pos: Option<&[u32]>) -> idlm::Result<Tensor> {
        let n = xt.elem_count();
        let all: Vec<u32> = (0..n as u32).collect();
        let pos = pos.unwrap_or(&all);
        let mut out = Vec::new();
        for &p in pos {
            out.extend_from_slice(&self.logits[p as usize * self.v..(p as usize + 1) * self.v]);
        }
        Ok(Tensor::from_vec(out, (pos.len(), self.v), &Device::Cpu)?)
    }
    fn time_conditioned(&self) -> bool {
        false
    }
    fn max_len(&self) -> usize {
        self.l
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
}

fn random(n: usize, rng: &mut ChaCha8Rng, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.random::<f32>() - 0.5) * 2.0 * scale)
        .collect()
}

const B: usize = 2;
const L: usize = 5;
const V: usize = 6; // 5 clean tokens + MASK (id 5)

fn setup(seed: u64) -> (Masked, Vec<u32>, Vec<f64>, Fixed, Fixed) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let process = Masked::new(V, (V - 1) as u32).unwrap();
    let m = (V - 1) as u32;
    let xt = vec![m, 1, m, 3, m, 0, m, m, 2, m];
    let t = vec![0.3, 0.8];
    let teacher = Fixed {
        logits: random(B * L * V, &mut rng, 3.0),
        v: V,
        l: L,
    };
    let fake = Fixed {
        logits: random(B * L * V, &mut rng, 3.0),
        v: V,
        l: L,
    };
    (process, xt, t, teacher, fake)
}

fn masked(xt: &[u32]) -> Vec<u32> {
    (0..xt.len() as u32)
        .filter(|&i| xt[i as usize] == (V - 1) as u32)
        .collect()
}

/// SUBS log-probabilities of fixed logits at a masked position.
fn subs_log_probs(z: &[f32]) -> Vec<f64> {
    let clean = &z[..V - 1];
    let mx = clean.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = mx
        + clean
            .iter()
            .map(|&x| (x as f64 - mx).exp())
            .sum::<f64>()
            .ln();
    clean.iter().map(|&x| x as f64 - lse).collect()
}

#[test]
fn gradient_wrt_student_logits_is_minus_lambda_g_times_centred_advantage() {
    let (process, xt, t, teacher, fake) = setup(1);
    let pos = masked(&xt);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let z = Var::from_vec(
        random(pos.len() * V, &mut rng, 2.0),
        (pos.len(), V),
        &Device::Cpu,
    )
    .unwrap();
    let at: Vec<u32> = pos.iter().map(|&p| xt[p as usize]).collect();
    // The fused path IDLM takes (every row masked: one softmax); the test below goes through
    // log-probabilities and exp.
    let g = process.probs_rows(z.as_tensor(), &at).unwrap();
    let loss = generator_loss(&process, &teacher, Some(&fake), &xt, (B, L), &t, &pos, &g).unwrap();
    let grads = loss.backward().unwrap();
    let gz = grads.get(z.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
    let gv = g.to_vec2::<f32>().unwrap();
    for (r, &p) in pos.iter().enumerate() {
        let p = p as usize;
        let lam = 1.0 / t[p / L]; // -alpha'/(1 - alpha) of the log-linear schedule
        let ls = subs_log_probs(&teacher.logits[p * V..(p + 1) * V]);
        let lf = subs_log_probs(&fake.logits[p * V..(p + 1) * V]);
        let a: Vec<f64> = ls.iter().zip(&lf).map(|(x, y)| x - y).collect();
        let mean: f64 = (0..V - 1).map(|i| gv[r][i] as f64 * a[i]).sum();
        for i in 0..V {
            let want = if i == V - 1 {
                0.0
            } else {
                -lam * gv[r][i] as f64 * (a[i] - mean) / B as f64
            };
            assert!(
                (gz[r][i] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()),
                "row {r} col {i}: autograd {} analytic {want}",
                gz[r][i]
            );
        }
    }
}

#[test]
fn fake_and_teacher_differing_only_at_unmasked_positions_leave_the_loss_unchanged() {
    let (process, xt, t, teacher, fake) = setup(2);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut other = Fixed {
        logits: fake.logits.clone(),
        v: V,
        l: L,
    };
    for (p, &x) in xt.iter().enumerate() {
        if x != (V - 1) as u32 {
            for z in &mut other.logits[p * V..(p + 1) * V] {
                *z += (rng.random::<f32>() - 0.5) * 50.0;
            }
        }
    }
    // The student's simplex at every position: one-hot where x_t is unmasked would be data; use a
    // random simplex everywhere so nothing but the weights can make the unmasked rows vanish.
    let target = candle_nn::ops::softmax(
        &Tensor::from_vec(random(B * L * V, &mut rng, 2.0), (B * L, V), &Device::Cpu).unwrap(),
        D::Minus1,
    )
    .unwrap();
    let all: Vec<u32> = (0..(B * L) as u32).collect();
    let f = |fk: &Fixed| {
        generator_loss(&process, &teacher, Some(fk), &xt, (B, L), &t, &all, &target)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(f(&fake), f(&other));
    // And evaluating at the masked positions only gives the same value.
    let pos = masked(&xt);
    let idx = Tensor::from_slice(&pos, pos.len(), &Device::Cpu).unwrap();
    let sub = target.index_select(&idx, 0).unwrap();
    let only = generator_loss(&process, &teacher, Some(&fake), &xt, (B, L), &t, &pos, &sub)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((only - f(&fake)).abs() < 1e-5 * (1.0 + only.abs()));
}

#[test]
fn student_equal_to_fake_equal_to_teacher_has_zero_gradient() {
    let (process, xt, t, teacher, _) = setup(3);
    let pos = masked(&xt);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let z = Var::from_vec(
        random(pos.len() * V, &mut rng, 2.0),
        (pos.len(), V),
        &Device::Cpu,
    )
    .unwrap();
    let at: Vec<u32> = pos.iter().map(|&p| xt[p as usize]).collect();
    let g = process
        .log_probs_rows(z.as_tensor(), &at)
        .unwrap()
        .exp()
        .unwrap();
    let same = Fixed {
        logits: teacher.logits.clone(),
        v: V,
        l: L,
    };
    let loss = generator_loss(&process, &teacher, Some(&same), &xt, (B, L), &t, &pos, &g).unwrap();
    assert_eq!(loss.to_scalar::<f32>().unwrap(), 0.0);
    let grads = loss.backward().unwrap();
    let gz = grads
        .get(z.as_tensor())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(gz.to_scalar::<f32>().unwrap(), 0.0);
}
