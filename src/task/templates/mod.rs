//! The `synth-math` templates: each draws its numbers (recorded, for the held-out split of
//! unseen numbers), a name and an item, and returns the question, the program's assignments and
//! the answer computed here in Rust (the tests check the interpreter agrees).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// People in the questions.
const NAMES: &[&str] = &[
    "Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ivy", "Jack", "Kim", "Leo",
];
/// Things counted (plural).
const ITEMS: &[&str] = &[
    "apples", "books", "cards", "eggs", "pens", "cookies", "balls", "shells", "stamps", "toys",
];
/// Things that hold items.
const BOXES: &[&str] = &["boxes", "bags", "jars", "baskets"];

/// The draws of one problem.
pub struct Draw<'a> {
    rng: &'a mut ChaCha8Rng,
    /// The numbers drawn, in order: the tuple that the unseen-numbers split keeps apart.
    pub numbers: Vec<i64>,
}

impl<'a> Draw<'a> {
    /// Start drawing from `rng`.
    pub fn new(rng: &'a mut ChaCha8Rng) -> Self {
        Self {
            rng,
            numbers: Vec::new(),
        }
    }

    /// A number in `lo..=hi`, recorded.
    fn n(&mut self, lo: i64, hi: i64) -> i64 {
        let v = self.rng.random_range(lo..=hi);
        self.numbers.push(v);
        v
    }

    /// One of `xs` (not recorded: surface only).
    fn pick(&mut self, xs: &[&'static str]) -> &'static str {
        xs[self.rng.random_range(0..xs.len())]
    }

    /// Two different names.
    fn two_names(&mut self) -> (&'static str, &'static str) {
        let a = self.pick(NAMES);
        loop {
            let b = self.pick(NAMES);
            if b != a {
                return (a, b);
            }
        }
    }
}

/// What a template makes: the question, the assignments (the last one is `result`) and the
/// answer.
pub struct Made {
    /// The question text.
    pub question: String,
    /// `(variable, expression)` lines of the program body, before `return result`.
    pub lines: Vec<(&'static str, String)>,
    /// The answer, computed in Rust.
    pub number: i64,
}

fn made(question: String, lines: &[(&'static str, String)], number: i64) -> Made {
    Made {
        question,
        lines: lines.to_vec(),
        number,
    }
}

/// A template: its name, its count of arithmetic operations, and its maker.
pub struct Template {
    /// Stable name (also in each written line).
    pub id: &'static str,
    /// Arithmetic operations in its program.
    pub ops: usize,
    /// Draw one problem.
    pub make: fn(&mut Draw) -> Made,
}

/// `format!`, short: the templates are mostly strings.
macro_rules! s {
    ($($t:tt)*) => { format!($($t)*) };
}
mod basic;
mod compound;

/// Every template, in a fixed order: [`basic::BASIC`] then [`compound::COMPOUND`].
pub fn templates() -> impl Iterator<Item = &'static Template> {
    basic::BASIC.iter().chain(compound::COMPOUND)
}

/// Templates kept out of training (the unseen-templates split): one of each size 1 to 4.
pub const WITHHELD: &[&str] = &["price", "times_as_many", "profit", "gifts_out"];
