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

macro_rules! s {
    ($($t:tt)*) => { format!($($t)*) };
}

/// Every template, in a fixed order.
pub const TEMPLATES: &[Template] = &[
    Template {
        id: "gift",
        ops: 1,
        make: |d| {
            let (p, q) = d.two_names();
            let it = d.pick(ITEMS);
            let (a, b) = (d.n(2, 60), d.n(2, 40));
            made(
                s!("{p} has {a} {it}. {q} gives {p} {b} more. How many {it} does {p} have now?"),
                &[
                    ("has", s!("{a}")),
                    ("given", s!("{b}")),
                    ("result", s!("has + given")),
                ],
                a + b,
            )
        },
    },
    Template {
        id: "give_away",
        ops: 1,
        make: |d| {
            let p = d.pick(NAMES);
            let it = d.pick(ITEMS);
            let (b, r) = (d.n(2, 40), d.n(1, 40));
            made(
                s!(
                    "{p} has {} {it} and gives away {b}. How many {it} are left?",
                    b + r
                ),
                &[
                    ("has", s!("{}", b + r)),
                    ("given", s!("{b}")),
                    ("result", s!("has - given")),
                ],
                r,
            )
        },
    },
    Template {
        id: "boxes",
        ops: 1,
        make: |d| {
            let p = d.pick(NAMES);
            let (it, bx) = (d.pick(ITEMS), d.pick(BOXES));
            let (a, b) = (d.n(2, 12), d.n(2, 12));
            made(
                s!("{p} buys {a} {bx} with {b} {it} in each. How many {it} does {p} buy?"),
                &[
                    ("count", s!("{a}")),
                    ("each", s!("{b}")),
                    ("result", s!("count * each")),
                ],
                a * b,
            )
        },
    },
    Template {
        id: "share",
        ops: 1,
        make: |d| {
            let p = d.pick(NAMES);
            let it = d.pick(ITEMS);
            let (q, f) = (d.n(2, 12), d.n(2, 9));
            made(
                s!(
                    "{p} shares {} {it} equally among {f} friends. How many {it} does each friend get?",
                    q * f
                ),
                &[
                    ("total", s!("{}", q * f)),
                    ("friends", s!("{f}")),
                    ("result", s!("total // friends")),
                ],
                q,
            )
        },
    },
    Template {
        id: "price",
        ops: 1,
        make: |d| {
            let p = d.pick(NAMES);
            let it = d.pick(ITEMS);
            let (c, k) = (d.n(2, 15), d.n(2, 12));
            made(
                s!("One of the {it} costs ${c}. How much does {p} pay for {k} {it}?"),
                &[
                    ("price", s!("{c}")),
                    ("count", s!("{k}")),
                    ("result", s!("price * count")),
                ],
                c * k,
            )
        },
    },
    Template {
        id: "two_days",
        ops: 2,
        make: |d| {
            let p = d.pick(NAMES);
            let it = d.pick(ITEMS);
            let (a, b, c) = (d.n(2, 40), d.n(2, 30), d.n(2, 30));
            made(
                s!(
                    "{p} has {a} {it}. {p} gets {b} more on Monday and {c} more on Tuesday. How many {it} does {p} have now?"
                ),
                &[
                    ("has", s!("{a}")),
                    ("monday", s!("{b}")),
                    ("tuesday", s!("{c}")),
                    ("total", s!("has + monday")),
                    ("result", s!("total + tuesday")),
                ],
                a + b + c,
            )
        },
    },
    Template {
        id: "lose_find",
        ops: 2,
        make: |d| {
            let p = d.pick(NAMES);
            let it = d.pick(ITEMS);
            let (b, r, c) = (d.n(2, 30), d.n(1, 30), d.n(2, 30));
            made(
                s!(
                    "{p} has {} {it}, loses {b}, and then finds {c}. How many {it} does {p} have now?",
                    b + r
                ),
                &[
                    ("has", s!("{}", b + r)),
                    ("lost", s!("{b}")),
                    ("found", s!("{c}")),
                    ("left", s!("has - lost")),
                    ("result", s!("left + found")),
                ],
                r + c,
            )
        },
    },
    Template {
        id: "boxes_loose",
        ops: 2,
        make: |d| {
            let p = d.pick(NAMES);
            let (it, bx) = (d.pick(ITEMS), d.pick(BOXES));
            let (a, b, c) = (d.n(2, 10), d.n(2, 12), d.n(1, 20));
            made(
                s!(
                    "{p} has {a} {bx} with {b} {it} in each and {c} more {it}. How many {it} does {p} have?"
                ),
                &[
                    ("count", s!("{a}")),
                    ("each", s!("{b}")),
                    ("extra", s!("{c}")),
                    ("total", s!("count * each")),
                    ("result", s!("total + extra")),
                ],
                a * b + c,
            )
        },
    },
    Template {
        id: "packs_used",
        ops: 2,
        make: |d| {
            let p = d.pick(NAMES);
            let it = d.pick(ITEMS);
            let (a, b) = (d.n(2, 9), d.n(2, 12));
            let c = d.n(1, a * b - 1);
            made(
                s!("{p} buys {a} packs of {b} {it} and uses {c} of them. How many {it} are left?"),
                &[
                    ("packs", s!("{a}")),
                    ("each", s!("{b}")),
                    ("used", s!("{c}")),
                    ("total", s!("packs * each")),
                    ("result", s!("total - used")),
                ],
                a * b - c,
            )
        },
    },
    Template {
        id: "change",
        ops: 2,
        make: |d| {
            let p = d.pick(NAMES);
            let it = d.pick(ITEMS);
            let (b, c, e) = (d.n(2, 8), d.n(2, 9), d.n(0, 20));
            let paid = b * c + e;
            made(
                s!(
                    "{p} pays ${paid} for {b} {it} that cost ${c} each. How much change does {p} get?"
                ),
                &[
                    ("paid", s!("{paid}")),
                    ("count", s!("{b}")),
                    ("price", s!("{c}")),
                    ("cost", s!("count * price")),
                    ("result", s!("paid - cost")),
                ],
                e,
            )
        },
    },
    Template {
        id: "wage",
        ops: 2,
        make: |d| {
            let p = d.pick(NAMES);
            let (a, b, c) = (d.n(5, 20), d.n(2, 8), d.n(2, 6));
            made(
                s!(
                    "{p} earns ${a} an hour and works {b} hours a day for {c} days. How much does {p} earn?"
                ),
                &[
                    ("wage", s!("{a}")),
                    ("hours", s!("{b}")),
                    ("days", s!("{c}")),
                    ("daily", s!("wage * hours")),
                    ("result", s!("daily * days")),
                ],
                a * b * c,
            )
        },
    },
    Template {
        id: "keep_share",
        ops: 2,
        make: |d| {
            let p = d.pick(NAMES);
            let it = d.pick(ITEMS);
            let (k, f, q) = (d.n(1, 20), d.n(2, 8), d.n(1, 10));
            made(
                s!(
                    "{p} has {} {it}, keeps {k}, and shares the rest equally among {f} friends. How many {it} does each friend get?",
                    k + f * q
                ),
                &[
                    ("has", s!("{}", k + f * q)),
                    ("kept", s!("{k}")),
                    ("friends", s!("{f}")),
                    ("rest", s!("has - kept")),
                    ("result", s!("rest // friends")),
                ],
                q,
            )
        },
    },
    Template {
        id: "times_as_many",
        ops: 2,
        make: |d| {
            let (p, q) = d.two_names();
            let it = d.pick(ITEMS);
            let (a, b) = (d.n(2, 20), d.n(2, 5));
            made(
                s!(
                    "{p} has {a} {it}. {q} has {b} times as many. How many {it} do they have together?"
                ),
                &[
                    ("first", s!("{a}")),
                    ("times", s!("{b}")),
                    ("second", s!("first * times")),
                    ("result", s!("first + second")),
                ],
                a + a * b,
            )
        },
    },
    Template {
        id: "half_then_buy",
        ops: 2,
        make: |d| {
            let (p, q) = d.two_names();
            let it = d.pick(ITEMS);
            let (h, b) = (d.n(2, 25), d.n(2, 20));
            made(
                s!(
                    "{p} has {} {it} and gives half of them to {q}. Then {p} buys {b} more. How many {it} does {p} have now?",
                    2 * h
                ),
                &[
                    ("has", s!("{}", 2 * h)),
                    ("kept", s!("has // 2")),
                    ("bought", s!("{b}")),
                    ("result", s!("kept + bought")),
                ],
                h + b,
            )
        },
    },
    Template {
        id: "reading",
        ops: 2,
        make: |d| {
            let p = d.pick(NAMES);
            let (a, b, c) = (d.n(5, 30), d.n(2, 7), d.n(2, 30));
            made(
                s!(
                    "{p} reads {a} pages a day for {b} days and then {c} more pages. How many pages does {p} read?"
                ),
                &[
                    ("daily", s!("{a}")),
                    ("days", s!("{b}")),
                    ("extra", s!("{c}")),
                    ("total", s!("daily * days")),
                    ("result", s!("total + extra")),
                ],
                a * b + c,
            )
        },
    },
    Template {
        id: "colors",
        ops: 2,
        make: |d| {
            let p = d.pick(NAMES);
            let it = d.pick(ITEMS);
            let (a, b, c) = (d.n(1, 30), d.n(1, 30), d.n(1, 30));
            made(
                s!(
                    "{p} has {a} red {it}, {b} blue {it} and {c} green {it}. How many {it} does {p} have in all?"
                ),
                &[
                    ("red", s!("{a}")),
                    ("blue", s!("{b}")),
                    ("green", s!("{c}")),
                    ("total", s!("red + blue")),
                    ("result", s!("total + green")),
                ],
                a + b + c,
            )
        },
    },
    Template {
        id: "two_prices",
        ops: 3,
        make: |d| {
            let p = d.pick(NAMES);
            let (a, b, c, e) = (d.n(2, 9), d.n(2, 9), d.n(1, 6), d.n(1, 6));
            made(
                s!(
                    "A pen costs ${a} and a book costs ${b}. {p} buys {c} pens and {e} books. How much does {p} spend?"
                ),
                &[
                    ("pen_price", s!("{a}")),
                    ("book_price", s!("{b}")),
                    ("pens", s!("{c} * pen_price")),
                    ("books", s!("{e} * book_price")),
                    ("result", s!("pens + books")),
                ],
                c * a + e * b,
            )
        },
    },
    Template {
        id: "savings",
        ops: 2,
        make: |d| {
            let p = d.pick(NAMES);
            let (a, b) = (d.n(2, 20), d.n(2, 10));
            let c = d.n(1, a * b);
            made(
                s!(
                    "{p} saves ${a} each week for {b} weeks and then spends ${c}. How much money is left?"
                ),
                &[
                    ("weekly", s!("{a}")),
                    ("weeks", s!("{b}")),
                    ("spent", s!("{c}")),
                    ("saved", s!("weekly * weeks")),
                    ("result", s!("saved - spent")),
                ],
                a * b - c,
            )
        },
    },
    Template {
        id: "garden",
        ops: 3,
        make: |d| {
            let (a, b) = (d.n(2, 9), d.n(2, 9));
            let (c, e) = (d.n(1, a * b - 1), d.n(1, 20));
            made(
                s!(
                    "A garden has {a} rows with {b} plants in each. {c} plants die and {e} new plants are added. How many plants are there now?"
                ),
                &[
                    ("rows", s!("{a}")),
                    ("each", s!("{b}")),
                    ("dead", s!("{c}")),
                    ("added", s!("{e}")),
                    ("plants", s!("rows * each")),
                    ("alive", s!("plants - dead")),
                    ("result", s!("alive + added")),
                ],
                a * b - c + e,
            )
        },
    },
    Template {
        id: "bake_share",
        ops: 3,
        make: |d| {
            let p = d.pick(NAMES);
            let (a, b, f) = (d.n(2, 5), d.n(4, 12), d.n(2, 6));
            let total = a * b;
            let q = d.n(1, (total - 1) / f);
            let c = total - f * q;
            made(
                s!(
                    "{p} bakes {a} trays of {b} cookies, eats {c}, and shares the rest equally among {f} friends. How many cookies does each friend get?"
                ),
                &[
                    ("trays", s!("{a}")),
                    ("each", s!("{b}")),
                    ("eaten", s!("{c}")),
                    ("friends", s!("{f}")),
                    ("cookies", s!("trays * each")),
                    ("left", s!("cookies - eaten")),
                    ("result", s!("left // friends")),
                ],
                q,
            )
        },
    },
    Template {
        id: "profit",
        ops: 3,
        make: |d| {
            let p = d.pick(NAMES);
            let it = d.pick(ITEMS);
            let (a, b, m) = (d.n(2, 20), d.n(1, 10), d.n(1, 10));
            made(
                s!(
                    "{p} buys {a} {it} for ${b} each and sells them for ${} each. How much profit does {p} make?",
                    b + m
                ),
                &[
                    ("count", s!("{a}")),
                    ("buy_price", s!("{b}")),
                    ("sell_price", s!("{}", b + m)),
                    ("cost", s!("count * buy_price")),
                    ("sales", s!("count * sell_price")),
                    ("result", s!("sales - cost")),
                ],
                a * m,
            )
        },
    },
    Template {
        id: "bus",
        ops: 3,
        make: |d| {
            let (a, b, c) = (d.n(10, 40), d.n(1, 9), d.n(1, 20));
            let e = d.n(1, a - b + c);
            made(
                s!(
                    "A bus has {a} people. At the first stop {b} get off and {c} get on. At the second stop {e} get off. How many people are on the bus now?"
                ),
                &[
                    ("people", s!("{a}")),
                    ("off_first", s!("{b}")),
                    ("on_first", s!("{c}")),
                    ("off_second", s!("{e}")),
                    ("first", s!("people - off_first + on_first")),
                    ("result", s!("first - off_second")),
                ],
                a - b + c - e,
            )
        },
    },
    Template {
        id: "percent",
        ops: 2,
        make: |d| {
            let p = d.pick(NAMES);
            let (k, b) = (d.n(1, 20), d.n(1, 10) * 5);
            let a = 20 * k;
            made(
                s!("{p} has ${a} and spends {b} percent of it. How much money does {p} have left?"),
                &[
                    ("money", s!("{a}")),
                    ("percent", s!("{b}")),
                    ("spent", s!("money * percent / 100")),
                    ("result", s!("int(money - spent)")),
                ],
                a - k * b / 5,
            )
        },
    },
    Template {
        id: "gifts_out",
        ops: 4,
        make: |d| {
            let p = d.pick(NAMES);
            let it = d.pick(ITEMS);
            let (a, b, c, f, e) = (d.n(3, 9), d.n(4, 12), d.n(1, 3), d.n(2, 4), d.n(1, 15));
            made(
                s!(
                    "{p} has {a} packs of {b} {it}. {p} gives {c} {it} to each of {f} friends and then buys {e} more. How many {it} does {p} have now?"
                ),
                &[
                    ("packs", s!("{a}")),
                    ("each", s!("{b}")),
                    ("per_friend", s!("{c}")),
                    ("friends", s!("{f}")),
                    ("bought", s!("{e}")),
                    ("total", s!("packs * each")),
                    ("given", s!("per_friend * friends")),
                    ("left", s!("total - given")),
                    ("result", s!("left + bought")),
                ],
                a * b - c * f + e,
            )
        },
    },
    Template {
        id: "average",
        ops: 3,
        make: |d| {
            let p = d.pick(NAMES);
            let (a, b, m) = (d.n(2, 30), d.n(2, 30), d.n(0, 9));
            let c = 3 * m + (3 - (a + b) % 3) % 3 + 3;
            made(
                s!("{p} scores {a}, {b} and {c} points in three games. What is the average score?"),
                &[
                    ("first", s!("{a}")),
                    ("second", s!("{b}")),
                    ("third", s!("{c}")),
                    ("points", s!("first + second + third")),
                    ("result", s!("points // 3")),
                ],
                (a + b + c) / 3,
            )
        },
    },
    Template {
        id: "movie",
        ops: 2,
        make: |d| {
            let (h, m) = (d.n(1, 3), d.n(1, 59));
            made(
                s!(
                    "A movie is {h} hours and {m} minutes long. How many minutes long is the movie?"
                ),
                &[
                    ("hours", s!("{h}")),
                    ("minutes", s!("{m}")),
                    ("from_hours", s!("hours * 60")),
                    ("result", s!("from_hours + minutes")),
                ],
                h * 60 + m,
            )
        },
    },
];

/// Templates kept out of training (the unseen-templates split): one of each size 1 to 4.
pub const WITHHELD: &[&str] = &["price", "times_as_many", "profit", "gifts_out"];
