//! The subset's grammar: one `def NAME() [-> NAME]:` whose indented body is assignments
//! (`x = e`, `x op= e`), docstrings and `return e`; expressions of numbers, names, `+ - * / // %
//! **`, unary signs, parentheses and calls of named functions. Depth is bounded while parsing,
//! so hostile nesting is an error, never a stack overflow.

use super::error::{ProgramError, ProgramResult};
use super::lexer::{BinOp, Line, Tok};
use super::limits::{MAX_DEPTH, MAX_STATEMENTS};
use super::value::Value;

/// An expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal.
    Num(Value),
    /// A variable.
    Name(String),
    /// `-e`
    Neg(Box<Expr>),
    /// `+e`
    Pos(Box<Expr>),
    /// `a op b`
    Bin(BinOp, Box<Expr>, Box<Expr>),
    /// `f(args)`
    Call(String, Vec<Expr>),
}

/// A statement of the function body, with its physical line.
#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    /// `name = e` (`op` set for `name op= e`).
    Assign {
        name: String,
        op: Option<BinOp>,
        value: Expr,
        line: usize,
    },
    /// `return e`
    Return { value: Expr, line: usize },
    /// A bare string (a docstring): does nothing.
    Doc,
}

/// The parsed function.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    /// Its name.
    pub name: String,
    /// Its body.
    pub body: Vec<Stmt>,
}

/// Python's keywords: never a variable.
const KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

fn syntax(line: usize, msg: impl Into<String>) -> ProgramError {
    ProgramError::Syntax {
        line,
        msg: msg.into(),
    }
}

/// Parse the logical lines of a program into its one function.
pub fn parse_function(lines: &[Line]) -> ProgramResult<Function> {
    let Some(head) = lines.first() else {
        return Err(syntax(1, "no program"));
    };
    let name = match head.toks.as_slice() {
        _ if head.indent != 0 => return Err(syntax(head.line, "unexpected indent")),
        [
            Tok::Name(d),
            Tok::Name(n),
            Tok::LParen,
            Tok::RParen,
            rest @ ..,
        ] if d == "def" => match rest {
            [Tok::Colon] => n.clone(),
            [Tok::Arrow, Tok::Name(_), Tok::Colon] => n.clone(),
            _ => return Err(syntax(head.line, "expected ':' ending the def line")),
        },
        _ => {
            return Err(syntax(
                head.line,
                "expected 'def name():' (a function without parameters)",
            ));
        }
    };
    let body_lines = &lines[1..];
    let Some(first) = body_lines.first() else {
        return Err(syntax(head.line, "the function has no body"));
    };
    if first.indent == 0 {
        return Err(syntax(first.line, "expected an indented block"));
    }
    if body_lines.len() > MAX_STATEMENTS {
        return Err(syntax(first.line, "too many statements"));
    }
    let mut body = Vec::with_capacity(body_lines.len());
    for l in body_lines {
        if l.indent == 0 {
            return Err(syntax(
                l.line,
                "code after the function is outside the subset",
            ));
        }
        if l.indent != first.indent {
            return Err(syntax(l.line, "indentation differs from the block's"));
        }
        body.push(statement(l)?);
    }
    Ok(Function { name, body })
}

fn statement(l: &Line) -> ProgramResult<Stmt> {
    let line = l.line;
    match l.toks.as_slice() {
        [Tok::Str] => Ok(Stmt::Doc),
        [Tok::Name(r), rest @ ..] if r == "return" => Ok(Stmt::Return {
            value: expression(rest, line)?,
            line,
        }),
        [Tok::Name(n), Tok::Assign, rest @ ..] | [Tok::Name(n), Tok::AugAssign(_), rest @ ..]
            if !KEYWORDS.contains(&n.as_str()) =>
        {
            let op = match l.toks[1] {
                Tok::AugAssign(op) => Some(op),
                _ => None,
            };
            Ok(Stmt::Assign {
                name: n.clone(),
                op,
                value: expression(rest, line)?,
                line,
            })
        }
        [Tok::Name(n), ..] if KEYWORDS.contains(&n.as_str()) => Err(syntax(
            line,
            format!("'{n}' statements are outside the subset"),
        )),
        _ => Err(syntax(
            line,
            "expected an assignment, a docstring or 'return'",
        )),
    }
}

/// Parse a whole token slice as one expression.
pub fn expression(toks: &[Tok], line: usize) -> ProgramResult<Expr> {
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
        line,
    };
    let (e, _) = p.sum()?;
    if p.pos != toks.len() {
        return Err(syntax(line, format!("unexpected {:?}", toks[p.pos])));
    }
    Ok(e)
}

struct Parser<'a> {
    toks: &'a [Tok],
    pos: usize,
    depth: usize,
    line: usize,
}

/// An expression and the height of its tree.
type Parsed = (Expr, usize);

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn too_deep(&self) -> ProgramError {
        ProgramError::TooDeep {
            line: self.line,
            limit: MAX_DEPTH,
        }
    }

    /// Enter one level of recursion.
    fn enter(&mut self) -> ProgramResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.too_deep());
        }
        Ok(())
    }

    fn node(&self, e: Expr, h: usize) -> ProgramResult<Parsed> {
        if h > MAX_DEPTH {
            return Err(self.too_deep());
        }
        Ok((e, h))
    }

    fn binary_chain(
        &mut self,
        ops: &[BinOp],
        next: fn(&mut Self) -> ProgramResult<Parsed>,
    ) -> ProgramResult<Parsed> {
        let (mut e, mut h) = next(self)?;
        while let Some(Tok::Op(op)) = self.peek().cloned() {
            if !ops.contains(&op) {
                break;
            }
            self.pos += 1;
            let (r, rh) = next(self)?;
            (e, h) = self.node(Expr::Bin(op, Box::new(e), Box::new(r)), 1 + h.max(rh))?;
        }
        Ok((e, h))
    }

    fn sum(&mut self) -> ProgramResult<Parsed> {
        self.binary_chain(&[BinOp::Add, BinOp::Sub], Self::term)
    }

    fn term(&mut self) -> ProgramResult<Parsed> {
        self.binary_chain(
            &[BinOp::Mul, BinOp::Div, BinOp::FloorDiv, BinOp::Mod],
            Self::unary,
        )
    }

    fn unary(&mut self) -> ProgramResult<Parsed> {
        match self.peek() {
            Some(Tok::Op(op @ (BinOp::Add | BinOp::Sub))) => {
                let neg = *op == BinOp::Sub;
                self.pos += 1;
                self.enter()?;
                let (e, h) = self.unary()?;
                self.depth -= 1;
                let e = if neg {
                    Expr::Neg(Box::new(e))
                } else {
                    Expr::Pos(Box::new(e))
                };
                self.node(e, h + 1)
            }
            _ => self.power(),
        }
    }

    /// `atom ['**' unary]`: right-associative, binding tighter than a unary sign on its left.
    fn power(&mut self) -> ProgramResult<Parsed> {
        let (base, bh) = self.atom()?;
        if self.peek() != Some(&Tok::Op(BinOp::Pow)) {
            return Ok((base, bh));
        }
        self.pos += 1;
        self.enter()?;
        let (exp, eh) = self.unary()?;
        self.depth -= 1;
        self.node(
            Expr::Bin(BinOp::Pow, Box::new(base), Box::new(exp)),
            1 + bh.max(eh),
        )
    }

    fn atom(&mut self) -> ProgramResult<Parsed> {
        let line = self.line;
        let Some(t) = self.peek().cloned() else {
            return Err(syntax(line, "expression ended early"));
        };
        self.pos += 1;
        match t {
            Tok::Int(i) => Ok((Expr::Num(Value::Int(i)), 1)),
            Tok::Float(f) => Ok((Expr::Num(Value::Float(f)), 1)),
            Tok::LParen => {
                self.enter()?;
                let (e, h) = self.sum()?;
                self.depth -= 1;
                if self.peek() != Some(&Tok::RParen) {
                    return Err(syntax(line, "expected ')' (tuples are outside the subset)"));
                }
                self.pos += 1;
                Ok((e, h))
            }
            Tok::Name(n) if KEYWORDS.contains(&n.as_str()) => {
                Err(syntax(line, format!("'{n}' is outside the subset")))
            }
            Tok::Name(n) if self.peek() == Some(&Tok::LParen) => {
                self.pos += 1;
                self.enter()?;
                let mut args = Vec::new();
                let mut h = 0;
                while self.peek() != Some(&Tok::RParen) {
                    let (a, ah) = self.sum()?;
                    args.push(a);
                    h = h.max(ah);
                    match self.peek() {
                        Some(Tok::Comma) => self.pos += 1,
                        Some(Tok::RParen) => {}
                        _ => return Err(syntax(line, "expected ',' or ')' in a call")),
                    }
                }
                self.pos += 1;
                self.depth -= 1;
                self.node(Expr::Call(n, args), h + 1)
            }
            Tok::Name(n) => Ok((Expr::Name(n), 1)),
            other => Err(syntax(line, format!("unexpected {other:?}"))),
        }
    }
}
