//! Conditional generation: a row template whose clamped positions hold given tokens (a prompt, or
//! the text around the holes of an infilling template) that no sampler step ever changes. The free
//! positions are generated; the clamped ones are left out of entropy and of the completion.

use crate::{Error, Result};

/// The generated tokens after a clamped prefix of `prefix` tokens, up to the first `stop` (a pairs
/// model's separator, which ends its answer).
pub fn completion_ids(ids: &[u32], prefix: usize, stop: Option<u32>) -> &[u32] {
    let after = &ids[prefix.min(ids.len())..];
    let end = stop
        .and_then(|s| after.iter().position(|&t| t == s))
        .unwrap_or(after.len());
    &after[..end]
}

/// A row of `len()` positions, each either clamped to a token or free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    fixed: Vec<Option<u32>>,
}

/// The clamped start of a prompted row: `[BOS] prompt`, then a pairs model's separator (empty
/// for a model of unconditional rows).
pub fn prompt_prefix(bos: u32, prompt: Vec<u32>, sep: &[u32]) -> Vec<u32> {
    let mut ids = Vec::with_capacity(prompt.len() + 1 + sep.len());
    ids.push(bos);
    ids.extend(prompt);
    ids.extend_from_slice(sep);
    ids
}

/// One piece of an infilling template: given text or a hole of `n` generated tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text encoded and clamped.
    Text(String),
    /// So many free positions.
    Hole(usize),
}

/// The marker of a hole in an infilling template: `[MASK:n]` (n >= 1 generated tokens).
pub const HOLE_SYNTAX: &str = "[MASK:n]";
/// Longest row a template may ask for (far beyond any model's length): checked before a row is
/// allocated, so `[MASK:99999999999]` is an error, not an allocation of its size.
pub const MAX_TEMPLATE_LEN: usize = 1 << 20;

/// Split `"The [MASK:5] sat on the [MASK:3]."` into text and holes. A `[MASK:` without a positive
/// count and a closing bracket is an error that quotes it; a bare `[MASK]` is one hole.
pub fn parse_infill(template: &str) -> Result<Vec<Piece>> {
    let bad = |m: String| Error::InvalidArgument(format!("infill template: {m}"));
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(at) = rest.find("[MASK") {
        if at > 0 {
            out.push(Piece::Text(rest[..at].to_string()));
        }
        let tail = &rest[at + "[MASK".len()..];
        let (n, used) = if let Some(after) = tail.strip_prefix(']') {
            (1, tail.len() - after.len())
        } else if let Some(num) = tail.strip_prefix(':') {
            let end = num.find(']').ok_or_else(|| {
                bad(format!(
                    "unclosed hole at byte {at}: write {HOLE_SYNTAX} with n >= 1"
                ))
            })?;
            let n: usize = num[..end].trim().parse().map_err(|_| {
                bad(format!(
                    "hole '[MASK:{}]' at byte {at}: n must be a positive integer",
                    &num[..end]
                ))
            })?;
            if n > MAX_TEMPLATE_LEN {
                return Err(bad(format!(
                    "hole '[MASK:{n}]' at byte {at}: at most {MAX_TEMPLATE_LEN} tokens"
                )));
            }
            if n == 0 {
                return Err(bad(format!("hole '[MASK:0]' at byte {at}: n must be >= 1")));
            }
            (n, 1 + end + 1)
        } else {
            return Err(bad(format!(
                "'[MASK' at byte {at} is not a hole: write [MASK] or {HOLE_SYNTAX}"
            )));
        };
        out.push(Piece::Hole(n));
        rest = &tail[used..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest.to_string()));
    }
    if !out.iter().any(|p| matches!(p, Piece::Hole(_))) {
        return Err(bad(format!(
            "no hole to fill: mark the generated spans with {HOLE_SYNTAX}"
        )));
    }
    Ok(out)
}

impl Template {
    /// A template from its positions: Some(token) clamped, None free.
    pub fn new(fixed: Vec<Option<u32>>) -> Self {
        Self { fixed }
    }

    /// Every position free (unconditional generation).
    pub fn free(len: usize) -> Self {
        Self {
            fixed: vec![None; len],
        }
    }

    /// `prefix` clamped at the start of a row of `len` positions, the rest free.
    pub fn prefix(prefix: &[u32], len: usize) -> Result<Self> {
        if prefix.len() >= len {
            return Err(Error::InvalidArgument(format!(
                "the prompt takes {} tokens, which leaves nothing to generate in a row of {len} \
                 (the model's length or --len)",
                prefix.len()
            )));
        }
        let mut fixed = vec![None; len];
        for (f, &t) in fixed.iter_mut().zip(prefix) {
            *f = Some(t);
        }
        Ok(Self { fixed })
    }

    /// A row from `start` (e.g. BOS) then the pieces of an infilling template, each text piece
    /// encoded by `encode`; `len`: the row length, None for exactly the template's. Positions past
    /// the template are free.
    pub fn infill(
        start: &[u32],
        pieces: &[Piece],
        len: Option<usize>,
        mut encode: impl FnMut(&str) -> Result<Vec<u32>>,
    ) -> Result<Self> {
        // Sizes first: the row is allocated only once it is known to fit.
        let mut texts = Vec::new();
        for p in pieces {
            if let Piece::Text(s) = p {
                texts.push(encode(s)?);
            }
        }
        let need = pieces
            .iter()
            .map(|p| match p {
                Piece::Hole(n) => *n,
                Piece::Text(_) => 0,
            })
            .chain(texts.iter().map(Vec::len))
            .fold(start.len(), usize::saturating_add);
        let row = len.unwrap_or(need);
        if need > row {
            return Err(Error::InvalidArgument(format!(
                "the infill template takes {need} tokens, more than the row of {row} \
                 (the model's length or --len)"
            )));
        }
        if row > MAX_TEMPLATE_LEN {
            return Err(Error::InvalidArgument(format!(
                "the infill template makes a row of {row} tokens, more than the {MAX_TEMPLATE_LEN} \
                 idlm builds"
            )));
        }
        let mut fixed: Vec<Option<u32>> = Vec::with_capacity(row);
        fixed.extend(start.iter().map(|&t| Some(t)));
        let mut texts = texts.into_iter();
        for p in pieces {
            match p {
                Piece::Hole(n) => fixed.extend(std::iter::repeat_n(None, *n)),
                Piece::Text(_) => fixed.extend(texts.next().into_iter().flatten().map(Some)),
            }
        }
        fixed.resize(row, None);
        Ok(Self { fixed })
    }

    /// Row length.
    pub fn len(&self) -> usize {
        self.fixed.len()
    }

    /// A template of no positions.
    pub fn is_empty(&self) -> bool {
        self.fixed.is_empty()
    }

    /// The token clamped at `i`, if any.
    pub fn get(&self, i: usize) -> Option<u32> {
        self.fixed.get(i).copied().flatten()
    }

    /// Positions clamped (ascending).
    pub fn clamped(&self) -> Vec<u32> {
        (0..self.fixed.len() as u32)
            .filter(|&i| self.fixed[i as usize].is_some())
            .collect()
    }

    /// Positions free (ascending).
    pub fn free_positions(&self) -> Vec<u32> {
        (0..self.fixed.len() as u32)
            .filter(|&i| self.fixed[i as usize].is_none())
            .collect()
    }

    /// The clamped prefix, if the clamped positions are exactly a prefix (what an AR model can
    /// condition on).
    pub fn as_prefix(&self) -> Option<Vec<u32>> {
        let n = self.fixed.iter().take_while(|f| f.is_some()).count();
        self.fixed[n..]
            .iter()
            .all(Option::is_none)
            .then(|| self.fixed[..n].iter().flatten().copied().collect())
    }

    /// Put the clamped tokens into `x` (a row of the same length); true if any changed.
    pub fn apply(&self, x: &mut [u32]) -> bool {
        let mut changed = false;
        for (xi, f) in x.iter_mut().zip(&self.fixed) {
            if let Some(t) = *f
                && *xi != t
            {
                *xi = t;
                changed = true;
            }
        }
        changed
    }

    /// Check every clamped id is below `vocab` and not `mask` (a clamped MASK would be generated).
    pub fn check(&self, vocab: usize, mask: Option<u32>) -> Result<()> {
        for (i, t) in self.fixed.iter().enumerate() {
            if let Some(t) = *t
                && (t as usize >= vocab || Some(t) == mask)
            {
                return Err(Error::InvalidArgument(format!(
                    "clamped token {t} at position {i} is not a token of the model's vocabulary \
                     of {vocab} (or is its MASK id)"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infill_templates_parse_into_text_and_holes() {
        let p = parse_infill("The [MASK:5] sat on the [MASK:3].").unwrap();
        assert_eq!(
            p,
            vec![
                Piece::Text("The ".into()),
                Piece::Hole(5),
                Piece::Text(" sat on the ".into()),
                Piece::Hole(3),
                Piece::Text(".".into()),
            ]
        );
        assert_eq!(parse_infill("[MASK]x").unwrap()[0], Piece::Hole(1));
        for bad in [
            "no hole",
            "a [MASK:0] b",
            "a [MASK:x] b",
            "a [MASK:3 b",
            "[MASKED]",
        ] {
            let e = parse_infill(bad).unwrap_err().to_string();
            assert!(e.contains("infill template"), "{bad}: {e}");
        }
    }

    /// Found by fuzz/run.sh: `[MASK:128808888880888]` made the row builder allocate (or overflow)
    /// before comparing with the row length.
    #[test]
    fn huge_holes_are_refused_before_anything_is_allocated() {
        let enc = |s: &str| Ok(s.bytes().map(u32::from).collect());
        let e = parse_infill("a [MASK:128808888880888] b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 1048576 tokens"), "{e}");
        let max = format!("[MASK:{MAX_TEMPLATE_LEN}]");
        let pieces = parse_infill(&format!("{max}{max}{max}")).unwrap();
        let e = Template::infill(&[0], &pieces, Some(64), enc)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("takes 3145729 tokens, more than the row of 64"),
            "{e}"
        );
        let e = Template::infill(&[0], &pieces, None, enc)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("row of 3145729 tokens, more than the 1048576"),
            "{e}"
        );
        let e = Template::infill(
            &[],
            &[Piece::Hole(usize::MAX), Piece::Hole(9)],
            Some(8),
            enc,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(&format!("takes {} tokens", usize::MAX)), "{e}");
    }

    #[test]
    fn templates_clamp_exactly_their_positions() {
        let enc = |s: &str| Ok(s.bytes().map(u32::from).collect());
        let t =
            Template::infill(&[0], &parse_infill("ab[MASK:2]c").unwrap(), Some(8), enc).unwrap();
        assert_eq!(t.len(), 8);
        assert_eq!(t.clamped(), vec![0, 1, 2, 5]);
        assert_eq!(t.free_positions(), vec![3, 4, 6, 7]);
        assert_eq!(t.as_prefix(), None);
        let mut x = vec![9u32; 8];
        assert!(t.apply(&mut x));
        assert_eq!(x, vec![0, 97, 98, 9, 9, 99, 9, 9]);
        assert!(!t.apply(&mut x));
        let p = Template::prefix(&[4, 5], 4).unwrap();
        assert_eq!(p.as_prefix(), Some(vec![4, 5]));
        assert!(Template::prefix(&[1, 2, 3], 3).is_err());
        assert!(Template::infill(&[0], &[Piece::Hole(9)], Some(4), enc).is_err());
        assert!(p.check(6, Some(5)).is_err());
        assert!(p.check(6, None).is_ok());
        assert!(p.check(5, None).is_err());
    }
}
