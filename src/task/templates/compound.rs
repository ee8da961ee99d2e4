//! Templates of two to four steps: prices, savings, stops, averages.

use super::{ITEMS, NAMES, Template, made};

/// The longer templates.
pub const COMPOUND: &[Template] = &[
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
