//! ln φ, ln Φ and erfc in f64, accurate in the tails the duality integral reaches.

use std::f64::consts::{FRAC_1_SQRT_2, PI};

/// ln φ(z).
pub(super) fn ln_norm_pdf(z: f64) -> f64 {
    -0.5 * z * z - 0.5 * (2.0 * PI).ln()
}

/// ln Φ(z), accurate in both tails (no underflow in the lower one).
pub(super) fn ln_norm_cdf(z: f64) -> f64 {
    if z < -1.0 {
        ln_erfc(-z * FRAC_1_SQRT_2) - std::f64::consts::LN_2
    } else {
        (-0.5 * erfc(z * FRAC_1_SQRT_2)).ln_1p()
    }
}

// erfc after FreeBSD msun s_erf.c (Sun Microsystems, 1993: "Permission to use, copy, modify, and
// distribute this software is freely granted, provided that this notice is preserved."), as in
// the `libm` crate; relative error below 1 ulp-ish. Polynomials are listed from degree 0 up.
const ERX: f64 = 0.8450629115104675;
#[rustfmt::skip]
const PP: [f64; 5] = [
    0.12837916709551256, -0.3250421072470015, -0.02848174957559851,
    -0.005770270296489442, -2.3763016656650163e-05,
];
#[rustfmt::skip]
const QQ: [f64; 6] = [
    1.0, 0.39791722395915535, 0.0650222499887673,
    0.005081306281875766, 0.00013249473800432164, -3.960228278775368e-06,
];
#[rustfmt::skip]
const PA: [f64; 7] = [
    -0.0023621185607526594, 0.41485611868374833, -0.3722078760357013,
    0.31834661990116175, -0.11089469428239668, 0.035478304325618236,
    -0.002166375594868791,
];
#[rustfmt::skip]
const QA: [f64; 7] = [
    1.0, 0.10642088040084423, 0.540397917702171,
    0.07182865441419627, 0.12617121980876164, 0.01363708391202905,
    0.011984499846799107,
];
#[rustfmt::skip]
const RA: [f64; 8] = [
    -0.009864944034847148, -0.6938585727071818, -10.558626225323291,
    -62.375332450326006, -162.39666946257347, -184.60509290671104,
    -81.2874355063066, -9.814329344169145,
];
#[rustfmt::skip]
const SA: [f64; 9] = [
    1.0, 19.651271667439257, 137.65775414351904,
    434.56587747522923, 645.3872717332679, 429.00814002756783,
    108.63500554177944, 6.570249770319282, -0.0604244152148581,
];
#[rustfmt::skip]
const RB: [f64; 7] = [
    -0.0098649429247001, -0.799283237680523, -17.757954917754752,
    -160.63638485582192, -637.5664433683896, -1025.0951316110772,
    -483.5191916086514,
];
#[rustfmt::skip]
const SB: [f64; 8] = [
    1.0, 30.33806074348246, 325.7925129965739,
    1536.729586084437, 3199.8582195085955, 2553.0504064331644,
    474.52854120695537, -22.44095244658582,
];

/// Polynomial with coefficients from degree 0 up, by Horner's rule.
fn poly(c: &[f64], x: f64) -> f64 {
    c.iter().rev().fold(0.0, |acc, &ci| acc * x + ci)
}

/// For x ≥ 1.25: the g(x) with erfc(x) = exp(-x² - 0.5625 + g(x))/x. Beyond 28, where erfc
/// underflows, the rational function in 1/x² still tends to the asymptotic series.
fn erfc_tail_exponent(x: f64) -> f64 {
    let s = 1.0 / (x * x);
    if x < 1.0 / 0.35 {
        poly(&RA, s) / poly(&SA, s)
    } else {
        poly(&RB, s) / poly(&SB, s)
    }
}

/// Complementary error function.
pub(super) fn erfc(x: f64) -> f64 {
    let ax = x.abs();
    if x.is_nan() {
        return x;
    }
    if ax < 0.84375 {
        let z = x * x;
        let y = poly(&PP, z) / poly(&QQ, z);
        return if x < 0.25 {
            1.0 - (x + x * y)
        } else {
            0.5 - (x - 0.5 + x * y)
        };
    }
    let tail = if ax < 1.25 {
        let s = ax - 1.0;
        1.0 - ERX - poly(&PA, s) / poly(&QA, s)
    } else if ax < 28.0 {
        // Split x² so that exp(-x²) keeps full relative accuracy.
        let hi = f64::from_bits(ax.to_bits() & 0xffff_ffff_0000_0000);
        (-hi * hi - 0.5625).exp() * ((hi - ax) * (hi + ax) + erfc_tail_exponent(ax)).exp() / ax
    } else {
        0.0
    };
    if x < 0.0 { 2.0 - tail } else { tail }
}

/// ln erfc(x), finite for every finite x.
pub(super) fn ln_erfc(x: f64) -> f64 {
    if x < 1.25 {
        erfc(x).ln()
    } else {
        -x * x - 0.5625 + erfc_tail_exponent(x) - x.ln()
    }
}
