//! Running a program of the subset: tokenize, parse, then execute the body top to bottom with
//! bounded steps. Builtins: `round`, `int`, `float`, `abs`, `min`, `max` with Python 3's
//! semantics (round half to even, `int` truncating toward zero).

use std::collections::HashMap;

use super::error::{ProgramError, ProgramResult};
use super::lexer::{BinOp, tokenize};
use super::limits::{MAX_SOURCE_BYTES, MAX_STEPS};
use super::parser::{Expr, Function, Stmt, parse_function};
use super::value::{Arith, Value};

/// The builtins a program may call.
pub const BUILTINS: &[&str] = &["round", "int", "float", "abs", "min", "max"];

/// Parse `src` (at most [`MAX_SOURCE_BYTES`]) as one function of the subset.
pub fn parse_program(src: &str) -> ProgramResult<Function> {
    if src.len() > MAX_SOURCE_BYTES {
        return Err(ProgramError::TooLong(src.len()));
    }
    parse_function(&tokenize(src)?)
}

/// Parse and run `src`: the value its function returns.
pub fn run_program(src: &str) -> ProgramResult<Value> {
    execute(&parse_program(src)?)
}

/// Run a parsed function: the value of the first `return` reached.
pub fn execute(f: &Function) -> ProgramResult<Value> {
    let mut m = Machine {
        vars: HashMap::new(),
        steps: 0,
    };
    for s in &f.body {
        match s {
            Stmt::Doc => {}
            Stmt::Assign {
                name,
                op,
                value,
                line,
            } => {
                let mut v = m.eval(value, *line)?;
                if let Some(op) = op {
                    let old = m.lookup(name, *line)?;
                    v = Arith { line: *line }.binary(*op, old, v)?;
                }
                m.vars.insert(name.clone(), v);
            }
            Stmt::Return { value, line } => return m.eval(value, *line),
        }
    }
    Err(ProgramError::NoReturn)
}

struct Machine {
    vars: HashMap<String, Value>,
    steps: usize,
}

impl Machine {
    fn lookup(&self, name: &str, line: usize) -> ProgramResult<Value> {
        self.vars
            .get(name)
            .copied()
            .ok_or_else(|| ProgramError::UnknownName {
                line,
                name: name.to_string(),
            })
    }

    /// Evaluate `e`; recursion is bounded by the parser's tree-height limit.
    fn eval(&mut self, e: &Expr, line: usize) -> ProgramResult<Value> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(ProgramError::TooManySteps(MAX_STEPS));
        }
        let ar = Arith { line };
        match e {
            Expr::Num(v) => Ok(*v),
            Expr::Name(n) => self.lookup(n, line),
            Expr::Neg(x) => {
                let v = self.eval(x, line)?;
                ar.neg(v)
            }
            Expr::Pos(x) => self.eval(x, line),
            Expr::Bin(op, a, b) => {
                let a = self.eval(a, line)?;
                let b = self.eval(b, line)?;
                ar.binary(*op, a, b)
            }
            Expr::Call(name, args) => {
                if self.vars.contains_key(name) {
                    return Err(value_err(line, format!("'{name}' is not callable")));
                }
                if !BUILTINS.contains(&name.as_str()) {
                    return Err(ProgramError::UnknownName {
                        line,
                        name: name.clone(),
                    });
                }
                let vals = args
                    .iter()
                    .map(|a| self.eval(a, line))
                    .collect::<ProgramResult<Vec<_>>>()?;
                call(ar, name, &vals)
            }
        }
    }
}

fn value_err(line: usize, msg: impl Into<String>) -> ProgramError {
    ProgramError::Value {
        line,
        msg: msg.into(),
    }
}

/// Apply builtin `name` to evaluated arguments.
fn call(ar: Arith, name: &str, args: &[Value]) -> ProgramResult<Value> {
    let arity = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(value_err(
                ar.line,
                format!("{name}() called with {} arguments", args.len()),
            ))
        }
    };
    match name {
        "round" => {
            arity(matches!(args.len(), 1 | 2))?;
            match (args[0], args.get(1)) {
                (Value::Int(i), None) => Ok(Value::Int(i)),
                (Value::Float(f), None) => ar.trunc(f.round_ties_even()).map(Value::Int),
                (x, Some(Value::Int(n))) => round_digits(ar, x, *n),
                (_, Some(Value::Float(_))) => {
                    Err(value_err(ar.line, "round(): ndigits must be an int"))
                }
            }
        }
        "int" => {
            arity(args.len() == 1)?;
            match args[0] {
                Value::Int(i) => Ok(Value::Int(i)),
                Value::Float(f) => ar.trunc(f).map(Value::Int),
            }
        }
        "float" => {
            arity(args.len() == 1)?;
            Ok(Value::Float(args[0].as_f64()))
        }
        "abs" => {
            arity(args.len() == 1)?;
            match args[0] {
                Value::Int(i) => Ok(Value::Int(i.checked_abs().ok_or(
                    ProgramError::Overflow {
                        line: ar.line,
                        what: "integer",
                    },
                )?)),
                Value::Float(f) => Ok(Value::Float(f.abs())),
            }
        }
        "min" | "max" => {
            // One argument would be an iterable in Python; numbers are not.
            arity(args.len() >= 2)?;
            let mut best = args[0];
            for &v in &args[1..] {
                let better = if name == "min" {
                    less(v, best)
                } else {
                    less(best, v)
                };
                if better {
                    best = v;
                }
            }
            Ok(best)
        }
        _ => Err(ProgramError::UnknownName {
            line: ar.line,
            name: name.to_string(),
        }),
    }
}

/// `a < b` across int and float.
fn less(a: Value, b: Value) -> bool {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x < y,
        _ => a.as_f64() < b.as_f64(),
    }
}

/// `round(x, n)`: an int stays an int (rounded to a multiple of 10^-n, half to even, for n < 0);
/// a float becomes the float nearest its exact value rounded half to even at n decimals, the
/// way CPython does it (through the shortest correctly rounded decimal string).
fn round_digits(ar: Arith, x: Value, n: i128) -> ProgramResult<Value> {
    match x {
        Value::Int(i) => {
            if n >= 0 {
                return Ok(Value::Int(i));
            }
            if n < -38 {
                return Ok(Value::Int(0));
            }
            let p = 10i128.pow((-n) as u32);
            let q = match ar.binary(BinOp::FloorDiv, Value::Int(i), Value::Int(p))? {
                Value::Int(q) => q,
                Value::Float(_) => unreachable!("int // int is an int"),
            };
            let r = i - q * p;
            // r > p - r rather than 2 r > p: 2 r may pass i128 when p is 10^38.
            let q = if r > p - r || (r == p - r && q % 2 != 0) {
                q + 1
            } else {
                q
            };
            q.checked_mul(p)
                .map(Value::Int)
                .ok_or(ProgramError::Overflow {
                    line: ar.line,
                    what: "integer",
                })
        }
        Value::Float(f) => {
            if n > 323 {
                return Ok(Value::Float(f));
            }
            if n >= 0 {
                // Rust formats the exact binary value, rounding ties to even, like CPython's dtoa.
                let s = format!("{f:.*}", n as usize);
                return ar.float(s.parse::<f64>().unwrap_or(f64::NAN));
            }
            if n < -308 {
                return Ok(Value::Float(0f64.copysign(f)));
            }
            let p = 10f64.powi((-n) as i32);
            ar.float((f / p).round_ties_even() * p)
        }
    }
}
