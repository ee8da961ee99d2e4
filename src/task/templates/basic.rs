//! Templates of one or two steps: counting, giving, sharing, buying.

use super::{BOXES, ITEMS, NAMES, Template, made};

/// The one- and two-step templates.
pub const BASIC: &[Template] = &[
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
];
