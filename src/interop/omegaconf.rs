//! A pickled OmegaConf config (the `hyper_parameters` of a reference Lightning checkpoint) or an
//! OmegaConf JSON dump (SDTT's `config.json`), as plain JSON with `${a.b}` references resolved.

use serde_json::{Map, Value};

use super::pickle::{Id, Obj, Pickle};

/// Nesting beyond which a pickled value is cut (OmegaConf nodes point to their parents).
const MAX_DEPTH: usize = 64;
/// Most values a config may expand to. A pickle shares objects through its memo, so a small file
/// can name a DAG whose tree is exponential (found by fuzzing: 20 KB asking for gigabytes); a real
/// training config has a few hundred.
pub const MAX_NODES: usize = 1 << 20;

/// The plain JSON of the pickled object `id`: DictConfig / ListConfig / value nodes unwrapped,
/// plain containers converted, anything else null; an error when it would exceed [`MAX_NODES`].
pub fn to_json(p: &Pickle, id: Id) -> Result<Value, String> {
    let mut budget = MAX_NODES;
    let v = convert(p, id, 0, &mut budget);
    if budget == 0 {
        return Err(format!(
            "the pickled config expands to more than {MAX_NODES} values (shared objects repeated)"
        ));
    }
    Ok(v)
}

fn convert(p: &Pickle, id: Id, depth: usize, budget: &mut usize) -> Value {
    if depth > MAX_DEPTH || *budget == 0 {
        return Value::Null;
    }
    *budget -= 1;
    match p.get(id) {
        Obj::None
        | Obj::Mark
        | Obj::Global(..)
        | Obj::PersId(_)
        | Obj::Tensor(_)
        | Obj::BigInt(_) => Value::Null,
        Obj::Bool(b) => Value::Bool(*b),
        Obj::Int(i) => Value::from(*i),
        Obj::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Obj::Str(s) => Value::String(s.clone()),
        Obj::Bytes(_) => Value::Null,
        Obj::List(v) | Obj::Tuple(v) | Obj::Set(v) => Value::Array(
            v.iter()
                .map(|&x| convert(p, x, depth + 1, budget))
                .collect(),
        ),
        Obj::Dict(items) => {
            let mut m = Map::new();
            for &(k, v) in items {
                if let Some(k) = p.str(k) {
                    m.insert(k.to_string(), convert(p, v, depth + 1, budget));
                }
            }
            Value::Object(m)
        }
        Obj::Object { class, state, .. } => {
            let Some(st) = *state else {
                return Value::Null;
            };
            if class.starts_with("omegaconf.") {
                // Containers keep their items in `_content`, value nodes their value in `_val`.
                if let Some(c) = p.dict_get(st, "_content") {
                    return convert(p, c, depth + 1, budget);
                }
                if let Some(v) = p.dict_get(st, "_val") {
                    return convert(p, v, depth + 1, budget);
                }
                return Value::Null;
            }
            // A dict subclass (Lightning's AttributeDict) keeps its items as state.
            match p.get(st) {
                Obj::Dict(_) => convert(p, st, depth + 1, budget),
                _ => Value::Null,
            }
        }
    }
}

/// The value at dotted `path` (e.g. `model.hidden_size`), following `${a.b}` references.
pub fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    lookup_depth(root, path, 0)
}

fn lookup_depth<'a>(root: &'a Value, path: &str, depth: usize) -> Option<&'a Value> {
    if depth > 16 {
        return None;
    }
    let mut v = root;
    for part in path.split('.') {
        v = v.get(part)?;
    }
    match v.as_str() {
        Some(s) if s.starts_with("${") && s.ends_with('}') && !s[2..s.len() - 1].contains('$') => {
            lookup_depth(root, &s[2..s.len() - 1], depth + 1)
        }
        _ => Some(v),
    }
}

/// An unsigned integer at `path` (also from an integer-valued string such as `"1024"`).
pub fn usize_at(root: &Value, path: &str) -> Option<usize> {
    match lookup(root, path)? {
        Value::Number(n) => n.as_u64().and_then(|v| usize::try_from(v).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list of two references to the list before it, 30 deep: 219 bytes naming a tree of 2^31
    /// values (`x = [1]; for _ in range(30): x = [x, x]`, pickled with protocol 2).
    #[test]
    fn a_config_expanding_past_the_node_budget_is_an_error() {
        let mut hex = String::from("80025d7100");
        for i in 1..=30 {
            hex.push_str(&format!("285d71{i:02x}"));
        }
        hex.push_str("4b0161");
        for i in (1..=30).rev() {
            hex.push_str(&format!("68{i:02x}65"));
        }
        hex.push_str("2e");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let p = Pickle::parse(&bytes).unwrap();
        let e = to_json(&p, p.root()).unwrap_err();
        assert!(e.contains("more than 1048576 values"), "{e}");
        // Found by fuzz/run.sh in a mutated Lightning checkpoint's pickle: now refused quickly.
        let found = include_bytes!("../../fuzz/regressions/pickle/oom-shared-dag-config.pkl");
        let p = Pickle::parse(found).unwrap();
        let h = p.dict_get(p.root(), "hyper_parameters").unwrap();
        assert!(to_json(&p, h).is_err());
    }

    #[test]
    fn references_resolve() {
        let v: Value = serde_json::json!({
            "model": {"length": 1024, "hidden_size": "768"},
            "data_preprocess": {"seq_len": "${model.length}"},
            "loop": {"a": "${loop.a}"}
        });
        assert_eq!(usize_at(&v, "data_preprocess.seq_len"), Some(1024));
        assert_eq!(usize_at(&v, "model.hidden_size"), Some(768));
        assert_eq!(lookup(&v, "loop.a"), None);
        assert_eq!(lookup(&v, "model.missing"), None);
    }
}
