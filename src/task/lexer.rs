//! Tokens of the program subset, grouped into logical lines (Python's rules: newlines inside
//! parentheses join lines, comments and blank lines vanish, each line keeps its indentation).

use super::error::{ProgramError, ProgramResult};

/// A binary arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/` (true division: always a float)
    Div,
    /// `//` (floor division)
    FloorDiv,
    /// `%` (modulo with the divisor's sign)
    Mod,
    /// `**`
    Pow,
}

impl BinOp {
    /// The operator as Python writes it.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::FloorDiv => "//",
            BinOp::Mod => "%",
            BinOp::Pow => "**",
        }
    }
}

/// One token.
#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// An identifier or keyword.
    Name(String),
    /// An integer literal.
    Int(i128),
    /// A float literal.
    Float(f64),
    /// A string literal (only docstrings use them; the contents are dropped).
    Str,
    /// An arithmetic operator.
    Op(BinOp),
    /// `=`
    Assign,
    /// `+=`, `-=`, ... (`op=`)
    AugAssign(BinOp),
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `,`
    Comma,
    /// `:`
    Colon,
    /// `->`
    Arrow,
}

/// A logical line: its indentation (columns, a tab advancing to the next multiple of 8), its
/// tokens, and the physical line (from 1) it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Columns of leading whitespace.
    pub indent: usize,
    /// The tokens, never empty.
    pub toks: Vec<Tok>,
    /// Physical line number of its first token.
    pub line: usize,
}

/// Split `src` into logical lines of tokens.
pub fn tokenize(src: &str) -> ProgramResult<Vec<Line>> {
    Lexer {
        s: src.as_bytes(),
        i: 0,
        line: 1,
    }
    .run()
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
    line: usize,
}

impl Lexer<'_> {
    fn err(&self, msg: impl Into<String>) -> ProgramError {
        ProgramError::Syntax {
            line: self.line,
            msg: msg.into(),
        }
    }

    fn peek(&self, k: usize) -> Option<u8> {
        self.s.get(self.i + k).copied()
    }

    fn run(mut self) -> ProgramResult<Vec<Line>> {
        let mut lines = Vec::new();
        let mut cur: Vec<Tok> = Vec::new();
        let (mut indent, mut start_line) = (0usize, 1usize);
        let mut depth = 0usize;
        let mut at_line_start = true;
        while self.i < self.s.len() {
            if at_line_start {
                // Measure indentation of a new physical line (inside parentheses it does not count).
                let mut col = 0;
                while let Some(c @ (b' ' | b'\t' | b'\x0c')) = self.peek(0) {
                    col = if c == b'\t' {
                        (col / 8 + 1) * 8
                    } else {
                        col + 1
                    };
                    self.i += 1;
                }
                if cur.is_empty() {
                    indent = col;
                }
                at_line_start = false;
                continue;
            }
            let c = self.s[self.i];
            match c {
                b'\n' | b'\r' => {
                    self.i += 1;
                    if c == b'\r' && self.peek(0) == Some(b'\n') {
                        self.i += 1;
                    }
                    if depth == 0 && !cur.is_empty() {
                        lines.push(Line {
                            indent,
                            toks: std::mem::take(&mut cur),
                            line: start_line,
                        });
                    }
                    self.line += 1;
                    at_line_start = true;
                }
                b' ' | b'\t' | b'\x0c' => self.i += 1,
                b'#' => {
                    while !matches!(self.peek(0), None | Some(b'\n' | b'\r')) {
                        self.i += 1;
                    }
                }
                _ => {
                    if cur.is_empty() {
                        start_line = self.line;
                    }
                    let t = self.token(c)?;
                    match t {
                        Tok::LParen => depth += 1,
                        Tok::RParen => {
                            depth = depth
                                .checked_sub(1)
                                .ok_or_else(|| self.err("unmatched ')'"))?
                        }
                        _ => {}
                    }
                    cur.push(t);
                }
            }
        }
        if depth != 0 {
            return Err(self.err("'(' was never closed"));
        }
        if !cur.is_empty() {
            lines.push(Line {
                indent,
                toks: cur,
                line: start_line,
            });
        }
        Ok(lines)
    }

    /// The token starting at the current byte `c` (not whitespace, newline or comment).
    fn token(&mut self, c: u8) -> ProgramResult<Tok> {
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = self.i;
            while self
                .peek(0)
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                self.i += 1;
            }
            if matches!(self.peek(0), Some(b'"' | b'\'')) {
                return Err(self.err("string prefixes are outside the subset"));
            }
            let name = std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default();
            return Ok(Tok::Name(name.to_string()));
        }
        if c.is_ascii_digit() || (c == b'.' && self.peek(1).is_some_and(|b| b.is_ascii_digit())) {
            return self.number();
        }
        if c == b'"' || c == b'\'' {
            return self.string(c);
        }
        let two = [c, self.peek(1).unwrap_or(0)];
        let three = self.peek(2).unwrap_or(0);
        let (tok, len) = match &two {
            b"**" if three == b'=' => (Tok::AugAssign(BinOp::Pow), 3),
            b"//" if three == b'=' => (Tok::AugAssign(BinOp::FloorDiv), 3),
            b"**" => (Tok::Op(BinOp::Pow), 2),
            b"//" => (Tok::Op(BinOp::FloorDiv), 2),
            b"->" => (Tok::Arrow, 2),
            b"+=" => (Tok::AugAssign(BinOp::Add), 2),
            b"-=" => (Tok::AugAssign(BinOp::Sub), 2),
            b"*=" => (Tok::AugAssign(BinOp::Mul), 2),
            b"/=" => (Tok::AugAssign(BinOp::Div), 2),
            b"%=" => (Tok::AugAssign(BinOp::Mod), 2),
            b"==" | b"!=" | b"<=" | b">=" => {
                return Err(self.err("comparisons are outside the subset"));
            }
            _ => match c {
                b'+' => (Tok::Op(BinOp::Add), 1),
                b'-' => (Tok::Op(BinOp::Sub), 1),
                b'*' => (Tok::Op(BinOp::Mul), 1),
                b'/' => (Tok::Op(BinOp::Div), 1),
                b'%' => (Tok::Op(BinOp::Mod), 1),
                b'=' => (Tok::Assign, 1),
                b'(' => (Tok::LParen, 1),
                b')' => (Tok::RParen, 1),
                b',' => (Tok::Comma, 1),
                b':' => (Tok::Colon, 1),
                _ => {
                    let shown =
                        String::from_utf8_lossy(&self.s[self.i..(self.i + 4).min(self.s.len())]);
                    let ch = shown.chars().next().unwrap_or('?');
                    return Err(self.err(format!("character {ch:?} is outside the subset")));
                }
            },
        };
        self.i += len;
        Ok(tok)
    }

    /// An int or float literal (Python's decimal forms, `_` between digits allowed).
    fn number(&mut self) -> ProgramResult<Tok> {
        let start = self.i;
        let digits = |lx: &mut Self| {
            while lx.peek(0).is_some_and(|b| {
                b.is_ascii_digit() || (b == b'_' && lx.peek(1).is_some_and(|d| d.is_ascii_digit()))
            }) {
                lx.i += 1;
            }
        };
        digits(self);
        let mut is_float = false;
        if self.peek(0) == Some(b'.') {
            is_float = true;
            self.i += 1;
            digits(self);
        }
        if matches!(self.peek(0), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(self.peek(1), Some(b'+' | b'-')));
            if self.peek(1 + sign).is_some_and(|b| b.is_ascii_digit()) {
                is_float = true;
                self.i += 1 + sign;
                digits(self);
            }
        }
        if self
            .peek(0)
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            return Err(self.err("invalid number literal"));
        }
        let text: String = self.s[start..self.i]
            .iter()
            .filter(|&&b| b != b'_')
            .map(|&b| b as char)
            .collect();
        if is_float {
            let v: f64 = text
                .parse()
                .map_err(|_| self.err(format!("invalid float literal {text:?}")))?;
            if !v.is_finite() {
                return Err(ProgramError::Overflow {
                    line: self.line,
                    what: "float literal",
                });
            }
            return Ok(Tok::Float(v));
        }
        if text.len() > 1 && text.starts_with('0') && text.bytes().any(|b| b != b'0') {
            return Err(self.err("leading zeros in an integer literal"));
        }
        text.parse::<i128>()
            .map(Tok::Int)
            .map_err(|_| ProgramError::Overflow {
                line: self.line,
                what: "integer literal",
            })
    }

    /// A string literal, single- or triple-quoted, with backslash escapes skipped.
    fn string(&mut self, q: u8) -> ProgramResult<Tok> {
        let triple = self.peek(1) == Some(q) && self.peek(2) == Some(q);
        let start_line = self.line;
        self.i += if triple { 3 } else { 1 };
        loop {
            let Some(c) = self.peek(0) else {
                self.line = start_line;
                return Err(self.err("unterminated string"));
            };
            match c {
                b'\\' => self.i += 2,
                b'\n' if !triple => return Err(self.err("unterminated string")),
                b'\n' => {
                    self.line += 1;
                    self.i += 1;
                }
                _ if c == q
                    && (!triple || (self.peek(1) == Some(q) && self.peek(2) == Some(q))) =>
                {
                    self.i += if triple { 3 } else { 1 };
                    return Ok(Tok::Str);
                }
                _ => self.i += 1,
            }
        }
    }
}
