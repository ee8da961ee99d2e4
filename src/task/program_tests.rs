//! The interpreter against Python 3's values (checked with CPython 3) and against hostile input.

use std::time::{Duration, Instant};

use super::error::ProgramError;
use super::program::run_program;
use super::value::Value;

/// `expr` as the returned expression of a one-line program.
fn eval(expr: &str) -> Result<Value, ProgramError> {
    run_program(&format!(
        "def simple_math_problem() -> int:\n    return {expr}\n"
    ))
}

#[test]
fn python_semantics_table() {
    use Value::{Float as F, Int as I};
    let table: &[(&str, Value)] = &[
        ("-7 // 2", I(-4)),
        ("-7 % 3", I(2)),
        ("7 % -3", I(-2)),
        ("10 // -3", I(-4)),
        ("2 ** -1", F(0.5)),
        ("round(2.5)", I(2)),
        ("round(3.5)", I(4)),
        ("round(-2.5)", I(-2)),
        ("int(-2.7)", I(-2)),
        ("int(7.9) + float(2)", F(9.0)),
        ("7 / 2", F(3.5)),
        ("6 / 3", F(2.0)),
        ("7.5 // 2", F(3.0)),
        ("-7.5 // 2", F(-4.0)),
        ("-7.5 % 2", F(0.5)),
        ("7.5 % -2", F(-0.5)),
        ("5 % 0.5", F(0.0)),
        ("round(2.675, 2)", F(2.67)),
        ("round(0.125, 2)", F(0.12)),
        ("round(1234.5, -2)", F(1200.0)),
        ("round(1250, -2)", I(1200)),
        ("round(1350, -2)", I(1400)),
        ("round(-1250, -2)", I(-1200)),
        ("round(7, 2)", I(7)),
        ("(-8) ** 2", I(64)),
        ("-2 ** 2", I(-4)),
        ("2 ** 3 ** 2", I(512)),
        ("2 ** 0.5", F(std::f64::consts::SQRT_2)),
        ("0.1 + 0.2", F(0.30000000000000004)),
        ("abs(-3)", I(3)),
        ("abs(-2.5)", F(2.5)),
        ("min(3, 2.0, 2)", F(2.0)),
        ("max(1, 1.0)", I(1)),
        ("max(2, 7, 3)", I(7)),
        ("- - 3", I(3)),
        ("+4", I(4)),
        ("1_000 * 3", I(3000)),
        (".5 + 1.", F(1.5)),
        ("2e3", F(2000.0)),
        ("(1 +\n        2) * 3", I(9)),
        ("0 ** 0", I(1)),
        ("(-1) ** 1001", I(-1)),
        ("2 ** 126", I(1i128 << 126)),
        ("round(-10 ** 36, -38)", I(0)),
        (
            "round(-99 * 10 ** 36, -38)",
            I(-100_000_000_000_000_000_000_000_000_000_000_000_000),
        ),
    ];
    for (src, want) in table {
        let got = eval(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        assert_eq!(got, *want, "{src}");
    }
}

#[test]
fn whole_programs_with_docstrings_comments_and_augmented_assignment() {
    let src = r#"
# a comment before the function
def simple_math_problem() -> int:
    """
    Natalia sold clips to 48 of her friends in April, and then half as many in May.
    """
    april = 48  # clips
    may = april / 2

    total = april + may
    total += 0
    result = int(total)
    return result
"#;
    assert_eq!(run_program(src).unwrap(), Value::Int(72));
    let src = "def f():\n\t'doc'\n\tx = 3\n\tx **= 2\n\tx //= 2\n\treturn x % 5\n";
    assert_eq!(run_program(src).unwrap(), Value::Int(4));
    // Dead code after return is not run.
    let src = "def f():\n    return 1\n    x = 1 / 0\n";
    assert_eq!(run_program(src).unwrap(), Value::Int(1));
}

/// Every one of these is an error, and quickly.
#[test]
fn hostile_and_out_of_subset_programs_are_errors_not_panics() {
    let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
    let unary = "-".repeat(10_000) + "1";
    let chain = vec!["1"; 5_000].join(" + ");
    let pows = vec!["2"; 10_000].join(" ** ");
    let calls = format!("{}1{}", "abs(".repeat(10_000), ")".repeat(10_000));
    let cases: Vec<(String, &str)> = vec![
        (deep, "nested deeper"),
        (unary, "nested deeper"),
        (chain, "nested deeper"),
        (pows, "nested deeper"),
        (calls, "nested deeper"),
        ("10 ** 10 ** 10".into(), "out of range"),
        ("2 ** 127".into(), "out of range"),
        (
            "99999999999999999999999999999999999999999".into(),
            "out of range",
        ),
        ("1e400".into(), "out of range"),
        ("2.0 ** 10000".into(), "out of range"),
        (
            "170141183460469231731687303715884105727 + 1".into(),
            "out of range",
        ),
        ("1 / 0".into(), "division by zero"),
        ("1 // 0".into(), "division by zero"),
        ("1 % 0".into(), "division by zero"),
        ("1.5 % 0.0".into(), "division by zero"),
        ("0 ** -1".into(), "division by zero"),
        ("(-8) ** (1 / 3)".into(), "complex"),
        ("unknown + 1".into(), "not defined"),
        ("print(1)".into(), "not defined"),
        ("math.floor(2.5)".into(), "outside the subset"),
        ("[1, 2][0]".into(), "outside the subset"),
        ("(1, 2)".into(), "tuples"),
        ("'a' + 'b'".into(), "unexpected"),
        ("1 if 2 else 3".into(), "unexpected"),
        ("1 == 1".into(), "comparisons"),
        ("True".into(), "outside the subset"),
        ("round(2.5, ndigits=1)".into(), "in a call"),
        ("min(3)".into(), "arguments"),
        ("round(1.5, 1.0)".into(), "ndigits"),
        ("int(float(1e300) * 1e300)".into(), "out of range"),
        ("007".into(), "leading zeros"),
        ("0x1f".into(), "invalid number"),
        ("1 +".into(), "ended early"),
    ];
    for (expr, want) in &cases {
        let t0 = Instant::now();
        let e = eval(expr).expect_err(expr);
        assert!(
            e.to_string().contains(want),
            "{}: got '{e}', wanted '{want}'",
            &expr[..expr.len().min(40)]
        );
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "{expr} took too long"
        );
    }
    let programs: &[(&str, &str)] = &[
        ("", "no program"),
        ("x = 1\n", "expected 'def"),
        ("def f(x):\n    return x\n", "expected 'def"),
        (
            "def f():\n    while True:\n        pass\n",
            "'while' statements",
        ),
        (
            "def f():\n    import os\n    return 1\n",
            "'import' statements",
        ),
        ("import os\ndef f():\n    return 1\n", "expected 'def"),
        ("def f():\n    x = 1\n", "never returns"),
        ("def f():\n    return 1\nprint(f())\n", "after the function"),
        ("def f():\n    x = 1\n      return x\n", "indentation"),
        ("def f():\nreturn 1\n", "indented block"),
        ("def f():\n    os.system = 1\n", "outside the subset"),
        ("def f():\n    x = y = 1\n    return x\n", "unexpected"),
        ("def f():\n    x += 1\n    return x\n", "not defined"),
        (
            "def f():\n    round = 1\n    return round(2.5)\n",
            "not callable",
        ),
        ("def f():\n    return (1\n", "never closed"),
        ("def f():\n    return 1)\n", "unmatched"),
        (
            "def f():\n    \"\"\"open docstring\n    return 1\n",
            "unterminated",
        ),
        ("def f():\n    return 1 ; 2\n", "outside the subset"),
        (
            "def f():\n    x = 1 \\\n + 2\n    return x\n",
            "outside the subset",
        ),
    ];
    for (src, want) in programs {
        let e = run_program(src).expect_err(src);
        assert!(e.to_string().contains(want), "{src:?}: got '{e}'");
    }
}

#[test]
fn megabyte_input_and_many_statements_are_bounded() {
    let t0 = Instant::now();
    let big = format!(
        "def f():\n{}    return 1\n",
        "    x = 1\n".repeat(1_000_000 / 10)
    );
    assert!(big.len() > 1_000_000);
    assert!(matches!(run_program(&big), Err(ProgramError::TooLong(_))));
    let junk: String = (0..1_000_000u32)
        .map(|i| char::from(b' ' + (i.wrapping_mul(2_654_435_761) >> 24) as u8 % 95))
        .collect();
    assert!(run_program(&junk).is_err());
    // Just under the byte limit: many statements, still fast.
    let many = format!(
        "def f():\n    x = 0\n{}    return x\n",
        "    x = x + 1\n".repeat(4000)
    );
    assert_eq!(run_program(&many).unwrap(), Value::Int(4000));
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn arbitrary_bytes_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let alphabet = b"def f():\n    return x = 1 2 0.5 ( ) + - * / // % ** round int abs min max , 'd' \"\"\" # \t";
    for _ in 0..20_000 {
        let n = rng.random_range(0..80);
        let s: Vec<u8> = (0..n)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())])
            .collect();
        let _ = run_program(&String::from_utf8_lossy(&s));
        let prefix = format!("def f():\n    return {}", String::from_utf8_lossy(&s));
        let _ = run_program(&prefix);
    }
}

/// Real programs with random edits (deleted, inserted, replaced bytes): errors or values, never a
/// panic, and every clean one still runs.
#[test]
fn mutated_generated_programs_never_panic() {
    use rand::{Rng, SeedableRng};
    let progs = super::synth::generate("train", 300, 1, super::style::Style::Varied).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let alphabet = b" \n\t()+-*/%=.,:#'\"0123456789abcdefxyz_";
    let mut failed = 0;
    for round in 0..20_000 {
        let p = &progs[round % progs.len()];
        let mut s = p.answer.clone().into_bytes();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..s.len());
            let c = alphabet[rng.random_range(0..alphabet.len())];
            match rng.random_range(0..3) {
                0 => {
                    s.remove(at);
                }
                1 => s.insert(at, c),
                _ => s[at] = c,
            }
        }
        failed += usize::from(run_program(&String::from_utf8_lossy(&s)).is_err());
    }
    assert!(
        failed > 1000,
        "{failed}: the edits should break many programs"
    );
    for p in &progs {
        assert!(run_program(&p.answer).is_ok());
    }
}
