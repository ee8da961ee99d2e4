//! Python 3 numbers: `int` (bounded here to i128: past it an error, never a wrapped value) and
//! `float` (f64; a result that is infinite or NaN is an error), with Python's operator rules.

use super::error::{ProgramError, ProgramResult};
use super::lexer::BinOp;
use super::limits::MAX_INT_POW_BITS;

/// A value of the subset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// Python `int`, within i128.
    Int(i128),
    /// Python `float`.
    Float(f64),
}

impl Value {
    /// The value as f64 (Python's `float(x)`).
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Int(i) => i as f64,
            Value::Float(f) => f,
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) if x.fract() == 0.0 && x.abs() < 1e16 => write!(f, "{x:.1}"),
            Value::Float(x) => write!(f, "{x}"),
        }
    }
}

/// Arithmetic at a source line (for error messages).
#[derive(Debug, Clone, Copy)]
pub struct Arith {
    /// Physical line of the expression.
    pub line: usize,
}

impl Arith {
    fn overflow(self, what: &'static str) -> ProgramError {
        ProgramError::Overflow {
            line: self.line,
            what,
        }
    }

    fn zero(self) -> ProgramError {
        ProgramError::ZeroDivision { line: self.line }
    }

    /// A float result, or an error when it is infinite or NaN.
    pub fn float(self, x: f64) -> ProgramResult<Value> {
        if x.is_finite() {
            Ok(Value::Float(x))
        } else {
            Err(self.overflow("float result"))
        }
    }

    /// A float converted to int by truncation (Python's `int(x)`).
    pub fn trunc(self, x: f64) -> ProgramResult<i128> {
        let t = x.trunc();
        // 2^127 is exactly representable; i128 holds [-2^127, 2^127).
        if !t.is_finite() || t >= 2f64.powi(127) || t < -(2f64.powi(127)) {
            return Err(self.overflow("integer from float"));
        }
        Ok(t as i128)
    }

    /// `-x`
    pub fn neg(self, x: Value) -> ProgramResult<Value> {
        match x {
            Value::Int(i) => i
                .checked_neg()
                .map(Value::Int)
                .ok_or(self.overflow("integer")),
            Value::Float(f) => Ok(Value::Float(-f)),
        }
    }

    /// `a op b` with Python's rules for int, float and mixed operands.
    pub fn binary(self, op: BinOp, a: Value, b: Value) -> ProgramResult<Value> {
        match (a, b) {
            (Value::Int(x), Value::Int(y)) => self.int_op(op, x, y),
            _ => self.float_op(op, a.as_f64(), b.as_f64()),
        }
    }

    fn int_op(self, op: BinOp, x: i128, y: i128) -> ProgramResult<Value> {
        let big = || self.overflow("integer");
        let v = match op {
            BinOp::Add => x.checked_add(y).ok_or_else(big)?,
            BinOp::Sub => x.checked_sub(y).ok_or_else(big)?,
            BinOp::Mul => x.checked_mul(y).ok_or_else(big)?,
            // Python divides ints exactly and rounds once; via f64 this is exact below 2^53.
            BinOp::Div => {
                if y == 0 {
                    return Err(self.zero());
                }
                return self.float(x as f64 / y as f64);
            }
            BinOp::FloorDiv => {
                if y == 0 {
                    return Err(self.zero());
                }
                let q = x.checked_div(y).ok_or_else(big)?;
                if x % y != 0 && ((x < 0) != (y < 0)) {
                    q - 1
                } else {
                    q
                }
            }
            BinOp::Mod => {
                if y == 0 {
                    return Err(self.zero());
                }
                let r = x.checked_rem(y).unwrap_or(0);
                if r != 0 && ((r < 0) != (y < 0)) {
                    r + y
                } else {
                    r
                }
            }
            BinOp::Pow => return self.int_pow(x, y),
        };
        Ok(Value::Int(v))
    }

    /// `x ** y` for ints: an int for y >= 0 (bounded), a float for y < 0 as Python does.
    fn int_pow(self, x: i128, y: i128) -> ProgramResult<Value> {
        if y < 0 {
            if x == 0 {
                return Err(self.zero());
            }
            return self.float_op(BinOp::Pow, x as f64, y as f64);
        }
        let v = match x {
            0 => i128::from(y == 0),
            1 => 1,
            -1 => {
                if y % 2 == 0 {
                    1
                } else {
                    -1
                }
            }
            _ if y > i128::from(MAX_INT_POW_BITS) => return Err(self.overflow("integer power")),
            _ => x
                .checked_pow(y as u32)
                .ok_or_else(|| self.overflow("integer power"))?,
        };
        Ok(Value::Int(v))
    }

    fn float_op(self, op: BinOp, x: f64, y: f64) -> ProgramResult<Value> {
        match op {
            BinOp::Add => self.float(x + y),
            BinOp::Sub => self.float(x - y),
            BinOp::Mul => self.float(x * y),
            BinOp::Div => {
                if y == 0.0 {
                    return Err(self.zero());
                }
                self.float(x / y)
            }
            BinOp::FloorDiv | BinOp::Mod => {
                if y == 0.0 {
                    return Err(self.zero());
                }
                let (d, m) = float_divmod(x, y);
                self.float(if op == BinOp::Mod { m } else { d })
            }
            BinOp::Pow => {
                if x == 0.0 && y < 0.0 {
                    return Err(self.zero());
                }
                if x < 0.0 && y.fract() != 0.0 && y.is_finite() {
                    return Err(ProgramError::Value {
                        line: self.line,
                        msg: "a negative number to a fractional power is complex".into(),
                    });
                }
                self.float(x.powf(y))
            }
        }
    }
}

/// CPython's `float_divmod`: floor quotient and remainder with the divisor's sign.
pub fn float_divmod(vx: f64, wx: f64) -> (f64, f64) {
    let mut m = vx % wx;
    let mut div = (vx - m) / wx;
    if m != 0.0 {
        if (wx < 0.0) != (m < 0.0) {
            m += wx;
            div -= 1.0;
        }
    } else {
        m = 0f64.copysign(wx);
    }
    let floordiv = if div != 0.0 {
        let mut f = div.floor();
        if div - f > 0.5 {
            f += 1.0;
        }
        f
    } else {
        0f64.copysign(vx / wx)
    };
    (floordiv, m)
}
