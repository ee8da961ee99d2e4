//! A pickle reader that never executes anything (docs/checkpoints.md, "Released checkpoints").
//!
//! It rebuilds plain values (numbers, strings, bytes, lists, tuples, dicts, sets), `OrderedDict`,
//! and PyTorch's tensor references (`_rebuild_tensor_v2` over a persistent storage id), which is all
//! a state dict is made of. Every other global must be on a short list of classes known to appear,
//! inert, in Lightning checkpoints of the reference code (OmegaConf configs, a pickled tokenizer):
//! those become [`Obj::Object`] records of their constructor arguments and state, never called.
//! Any other global (`os.system`, `builtins.eval`, ...) is refused by name the moment it is read.
//!
//! Objects live in an arena and the stack, memo and containers hold indices, so a memo reference
//! shares its object (as in Python) instead of copying it: a file can neither blow up memory by
//! repeated references nor see a container that was filled after being memoised as empty.

use std::collections::HashMap;

/// Index of an object in a [`Pickle`]'s arena.
pub type Id = usize;

/// Bytes beyond which a single length-prefixed item is refused (the reader holds the whole file).
const MAX_ITEM: usize = 1 << 31;
/// Most objects a file may create: bounds the arena for hostile inputs.
const MAX_OBJECTS: usize = 50_000_000;

/// A rebuilt object.
#[derive(Debug, Clone, PartialEq)]
pub enum Obj {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// An integer wider than 64 bits (little-endian two's complement bytes), e.g. a tokenizer's
    /// "unlimited" `model_max_length` of 1e30.
    BigInt(Vec<u8>),
    /// A float.
    Float(f64),
    /// A str.
    Str(String),
    /// bytes / bytearray.
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<Id>),
    /// A tuple.
    Tuple(Vec<Id>),
    /// A dict or OrderedDict, in insertion order.
    Dict(Vec<(Id, Id)>),
    /// A set or frozenset.
    Set(Vec<Id>),
    /// A reference to a global (`module.name`) that passed the allow list; never called.
    Global(String, String),
    /// A persistent id (PyTorch: `('storage', type, key, location, numel)`).
    PersId(Id),
    /// A tensor over a stored blob (PyTorch `_rebuild_tensor_v2` / `_rebuild_parameter`).
    Tensor(TensorRef),
    /// An instance of an inert class: its constructor arguments and the state given to BUILD.
    Object {
        /// `module.name` of the class.
        class: String,
        /// Constructor arguments (a tuple id), if any.
        args: Option<Id>,
        /// State set by BUILD, if any.
        state: Option<Id>,
    },
    /// The MARK sentinel on the stack.
    Mark,
}

/// Where a tensor's values are: a storage blob of a torch zip plus a strided view of it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// The storage's record name in the archive (`data/<key>`).
    pub key: String,
    /// Storage class name, e.g. `FloatStorage`.
    pub storage: String,
    /// Offset into the storage, in elements.
    pub offset: usize,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
}

/// Why a pickle could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PickleError {
    /// A global outside the allow list.
    #[error(
        "refused global `{0}`: only tensors, plain containers and known inert classes are read, nothing is executed"
    )]
    RefusedGlobal(String),
    /// An opcode that is not supported (or not allowed, such as the extension registry).
    #[error("unsupported pickle opcode 0x{0:02x} at byte {1}")]
    Opcode(u8, usize),
    /// The data ended early or is malformed.
    #[error("malformed pickle at byte {0}: {1}")]
    Malformed(usize, String),
}

type PResult<T> = std::result::Result<T, PickleError>;

/// Globals rebuilt into plain values or tensors.
const REBUILT: &[&str] = &[
    "collections.OrderedDict",
    "collections.defaultdict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_parameter",
    "builtins.set",
    "builtins.frozenset",
    "builtins.bytearray",
    "_codecs.encode",
    "torch.Size",
];

/// Storage classes a persistent id may name (`torch.<X>Storage`).
const STORAGES: &[&str] = &[
    "FloatStorage",
    "DoubleStorage",
    "HalfStorage",
    "BFloat16Storage",
    "LongStorage",
    "IntStorage",
    "ShortStorage",
    "CharStorage",
    "ByteStorage",
    "BoolStorage",
];

/// Classes kept as inert records: what the reference code's Lightning checkpoints hold besides
/// tensors (OmegaConf configs in `hyper_parameters`, a pickled Hugging Face tokenizer, pathlib
/// paths, Lightning's attribute dicts, dtypes). They are never constructed.
const INERT_PREFIXES: &[&str] = &[
    "omegaconf.",
    "typing.",
    "pathlib.",
    "transformers.",
    "tokenizers.",
    "lightning_fabric.utilities.data.",
    "lightning.fabric.utilities.data.",
    "pytorch_lightning.utilities.parsing.",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
];

/// Whether a global may be read, and how.
fn allowed(module: &str, name: &str) -> bool {
    let full = format!("{module}.{name}");
    if REBUILT.contains(&full.as_str()) {
        return true;
    }
    if module == "torch" && (STORAGES.contains(&name) || is_dtype(name)) {
        return true;
    }
    // torch.* beyond the rebuilders, storages and dtypes is refused: it has callables with effects.
    if module.starts_with("torch") {
        return false;
    }
    INERT_PREFIXES.iter().any(|p| full.starts_with(p))
        || full == "copyreg._reconstructor"
        || full == "builtins.object"
        || matches!(
            full.as_str(),
            "builtins.dict"
                | "builtins.list"
                | "builtins.int"
                | "builtins.float"
                | "builtins.str"
                | "builtins.tuple"
                | "builtins.bool"
        )
}

fn is_dtype(name: &str) -> bool {
    matches!(
        name,
        "float32"
            | "float64"
            | "float16"
            | "bfloat16"
            | "int64"
            | "int32"
            | "int16"
            | "int8"
            | "uint8"
            | "bool"
    )
}

/// A parsed pickle: the arena and the root object.
#[derive(Debug)]
pub struct Pickle {
    objs: Vec<Obj>,
    root: Id,
}

impl Pickle {
    /// Parse `data` (one pickle, up to its STOP).
    pub fn parse(data: &[u8]) -> PResult<Self> {
        Reader::new(data).run()
    }

    /// The root object's id.
    pub fn root(&self) -> Id {
        self.root
    }

    /// The object at `id`.
    pub fn get(&self, id: Id) -> &Obj {
        self.objs.get(id).unwrap_or(&Obj::None)
    }

    /// The str at `id`, if it is one.
    pub fn str(&self, id: Id) -> Option<&str> {
        match self.get(id) {
            Obj::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value under string key `key` of the dict at `id` (an OmegaConf / inert object's dict
    /// state counts as a dict).
    pub fn dict_get(&self, id: Id, key: &str) -> Option<Id> {
        self.dict_items(id)?
            .iter()
            .find(|(k, _)| self.str(*k) == Some(key))
            .map(|(_, v)| *v)
    }

    /// The items of the dict at `id`.
    pub fn dict_items(&self, id: Id) -> Option<&[(Id, Id)]> {
        match self.get(id) {
            Obj::Dict(items) => Some(items),
            _ => None,
        }
    }

    /// The elements of the list or tuple at `id`.
    pub fn seq(&self, id: Id) -> Option<&[Id]> {
        match self.get(id) {
            Obj::List(v) | Obj::Tuple(v) => Some(v),
            _ => None,
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    objs: Vec<Obj>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader {
            data,
            pos: 0,
            objs: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn bad<T>(&self, msg: impl Into<String>) -> PResult<T> {
        Err(PickleError::Malformed(self.pos, msg.into()))
    }

    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        if n > MAX_ITEM || self.data.len() - self.pos < n {
            return self.bad(format!("needs {n} more bytes"));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> PResult<u64> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64))
    }

    fn len(&mut self, n: usize) -> PResult<usize> {
        let v = self.uint(n)?;
        usize::try_from(v).or_else(|_| self.bad("length too large"))
    }

    fn line(&mut self) -> PResult<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return self.bad("unterminated line");
        };
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end])
            .map_err(|_| PickleError::Malformed(self.pos, "line is not UTF-8".into()))
    }

    fn alloc(&mut self, o: Obj) -> PResult<Id> {
        if self.objs.len() >= MAX_OBJECTS {
            return self.bad("too many objects");
        }
        self.objs.push(o);
        Ok(self.objs.len() - 1)
    }

    fn push(&mut self, o: Obj) -> PResult<()> {
        let id = self.alloc(o)?;
        self.stack.push(id);
        Ok(())
    }

    fn pop(&mut self) -> PResult<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.bad("stack underflow");
        }
        self.stack
            .pop()
            .map_or_else(|| self.bad("stack underflow"), Ok)
    }

    fn top(&self) -> PResult<Id> {
        match self.stack.last() {
            Some(&id) => Ok(id),
            None => self.bad("empty stack"),
        }
    }

    fn pop_mark(&mut self) -> PResult<Vec<Id>> {
        let Some(m) = self.marks.pop() else {
            return self.bad("no MARK");
        };
        if m > self.stack.len() {
            return self.bad("MARK above stack");
        }
        Ok(self.stack.split_off(m))
    }

    fn str_of(&self, id: Id) -> Option<&str> {
        match self.objs.get(id) {
            Some(Obj::Str(s)) => Some(s),
            _ => None,
        }
    }

    fn global(&mut self, module: &str, name: &str) -> PResult<()> {
        // Protocol 2 writes Python 2 module names; Python maps them the same way.
        let module = match module {
            "__builtin__" => "builtins",
            "copy_reg" => "copyreg",
            m => m,
        };
        if !allowed(module, name) {
            return Err(PickleError::RefusedGlobal(format!("{module}.{name}")));
        }
        self.push(Obj::Global(module.to_string(), name.to_string()))
    }

    fn global_name(&self, id: Id) -> Option<String> {
        match self.objs.get(id) {
            Some(Obj::Global(m, n)) => Some(format!("{m}.{n}")),
            _ => None,
        }
    }

    /// REDUCE / NEWOBJ: rebuild the known ones, record the inert ones.
    fn call(&mut self, func: Id, args: Id) -> PResult<()> {
        let Some(name) = self.global_name(func) else {
            return self.bad("call of something that is not a global");
        };
        let argv: Vec<Id> = match self.objs.get(args) {
            Some(Obj::Tuple(v)) => v.clone(),
            _ => return self.bad(format!("arguments of {name} are not a tuple")),
        };
        let obj = match name.as_str() {
            // The default factory of a defaultdict is dropped: it is never called here.
            "collections.OrderedDict" | "collections.defaultdict" => Obj::Dict(Vec::new()),
            "builtins.set" | "builtins.frozenset" => match argv.first().map(|&a| &self.objs[a]) {
                None => Obj::Set(Vec::new()),
                Some(Obj::List(v) | Obj::Tuple(v) | Obj::Set(v)) => Obj::Set(v.clone()),
                Some(_) => return self.bad(format!("{name} of a non-sequence")),
            },
            "builtins.bytearray" => match argv.first().map(|&a| &self.objs[a]) {
                None => Obj::Bytes(Vec::new()),
                Some(Obj::Bytes(b)) => Obj::Bytes(b.clone()),
                Some(_) => return self.bad("bytearray of a non-bytes value"),
            },
            // Protocol 2 writes bytes as _codecs.encode(text, 'latin1').
            "_codecs.encode" => match (argv.first().and_then(|&a| self.str_of(a)), argv.len()) {
                (Some(s), 1 | 2) => {
                    let mut out = Vec::with_capacity(s.len());
                    for c in s.chars() {
                        match u8::try_from(c as u32) {
                            Ok(b) => out.push(b),
                            Err(_) => return self.bad("_codecs.encode of a non-latin1 text"),
                        }
                    }
                    Obj::Bytes(out)
                }
                _ => return self.bad("_codecs.encode with unexpected arguments"),
            },
            "torch.Size" => match argv.first().map(|&a| &self.objs[a]) {
                Some(Obj::Tuple(v)) => Obj::Tuple(v.clone()),
                _ => return self.bad("torch.Size of a non-tuple"),
            },
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
                Obj::Tensor(self.tensor(&argv)?)
            }
            "torch._utils._rebuild_parameter" => match argv.first().map(|&a| &self.objs[a]) {
                Some(Obj::Tensor(t)) => Obj::Tensor(t.clone()),
                _ => return self.bad("_rebuild_parameter of a non-tensor"),
            },
            _ => Obj::Object {
                class: name,
                args: Some(args),
                state: None,
            },
        };
        self.push(obj)
    }

    fn usize_of(&self, id: Id, what: &str) -> PResult<usize> {
        match self.objs.get(id) {
            Some(Obj::Int(v)) if *v >= 0 => Ok(*v as usize),
            _ => self.bad(format!("tensor {what} is not a non-negative integer")),
        }
    }

    fn usizes(&self, id: Id, what: &str) -> PResult<Vec<usize>> {
        match self.objs.get(id) {
            Some(Obj::Tuple(v)) => v.iter().map(|&x| self.usize_of(x, what)).collect(),
            _ => self.bad(format!("tensor {what} is not a tuple")),
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`.
    fn tensor(&self, argv: &[Id]) -> PResult<TensorRef> {
        if argv.len() < 4 {
            return self.bad("_rebuild_tensor with fewer than 4 arguments");
        }
        let Some(Obj::PersId(pid)) = self.objs.get(argv[0]) else {
            return self.bad("tensor storage is not a persistent id");
        };
        let parts = match self.objs.get(*pid) {
            Some(Obj::Tuple(v)) if v.len() >= 3 => v.clone(),
            _ => return self.bad("persistent id is not a ('storage', type, key, ...) tuple"),
        };
        if self.str_of(parts[0]) != Some("storage") {
            return self.bad("persistent id does not name a storage");
        }
        let storage = match self.objs.get(parts[1]) {
            Some(Obj::Global(_, n)) => n.clone(),
            _ => return self.bad("storage type is not a global"),
        };
        let key = match self.objs.get(parts[2]) {
            Some(Obj::Str(s)) => s.clone(),
            Some(Obj::Int(i)) => i.to_string(),
            _ => return self.bad("storage key is not a string"),
        };
        let shape = self.usizes(argv[2], "size")?;
        let stride = self.usizes(argv[3], "stride")?;
        if shape.len() != stride.len() {
            return self.bad("tensor size and stride differ in length");
        }
        Ok(TensorRef {
            key,
            storage,
            offset: self.usize_of(argv[1], "offset")?,
            shape,
            stride,
        })
    }

    fn set_items(&mut self, target: Id, items: Vec<Id>) -> PResult<()> {
        if !items.len().is_multiple_of(2) {
            return self.bad("odd number of dict items");
        }
        let pairs: Vec<(Id, Id)> = items.chunks(2).map(|c| (c[0], c[1])).collect();
        match self.objs.get_mut(target) {
            Some(Obj::Dict(d)) => {
                d.extend(pairs);
                Ok(())
            }
            // An inert object filled like a dict (e.g. a dict subclass): keep the items as state.
            Some(Obj::Object { .. }) => {
                let d = self.alloc(Obj::Dict(pairs))?;
                if let Some(Obj::Object { state, .. }) = self.objs.get_mut(target) {
                    *state = Some(d);
                }
                Ok(())
            }
            _ => self.bad("SETITEMS on something that is not a dict"),
        }
    }

    fn append(&mut self, target: Id, items: Vec<Id>) -> PResult<()> {
        match self.objs.get_mut(target) {
            Some(Obj::List(l)) => {
                l.extend(items);
                Ok(())
            }
            Some(Obj::Set(s)) => {
                s.extend(items);
                Ok(())
            }
            Some(Obj::Object { .. }) => Ok(()),
            _ => self.bad("APPEND on something that is not a list"),
        }
    }

    fn build(&mut self, target: Id, st: Id) -> PResult<()> {
        match self.objs.get_mut(target) {
            Some(Obj::Object { state, .. }) => {
                *state = Some(st);
                Ok(())
            }
            // Tensors and dicts may carry extra state (e.g. `__dict__` of a Parameter): dropped.
            Some(Obj::Tensor(_) | Obj::Dict(_)) => Ok(()),
            _ => self.bad("BUILD on an object that takes no state"),
        }
    }

    fn memo_put(&mut self, key: u64) -> PResult<()> {
        let id = self.top()?;
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> PResult<()> {
        match self.memo.get(&key) {
            Some(&id) => {
                self.stack.push(id);
                Ok(())
            }
            None => self.bad(format!("memo key {key} is not defined")),
        }
    }

    fn utf8(&self, b: &[u8]) -> PResult<String> {
        String::from_utf8(b.to_vec()).or_else(|_| self.bad("string is not UTF-8"))
    }

    fn run(mut self) -> PResult<Pickle> {
        loop {
            let at = self.pos;
            let Some(&op) = self.data.get(self.pos) else {
                return self.bad("no STOP opcode");
            };
            self.pos += 1;
            match op {
                0x80 => {
                    self.take(1)?;
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => {
                    let root = self.pop()?;
                    return Ok(Pickle {
                        objs: self.objs,
                        root,
                    });
                }
                b'N' => self.push(Obj::None)?,
                0x88 => self.push(Obj::Bool(true))?,
                0x89 => self.push(Obj::Bool(false))?,
                b'J' => {
                    let v = self.uint(4)? as u32 as i32;
                    self.push(Obj::Int(v as i64))?
                }
                b'K' => {
                    let v = self.uint(1)?;
                    self.push(Obj::Int(v as i64))?
                }
                b'M' => {
                    let v = self.uint(2)?;
                    self.push(Obj::Int(v as i64))?
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.len(1)?
                    } else {
                        self.len(4)?
                    };
                    let b = self.take(n)?;
                    if n > 8 {
                        let o = Obj::BigInt(b.to_vec());
                        self.push(o)?;
                        continue;
                    }
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= (x as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.push(Obj::Int(v))?
                }
                b'I' | b'L' => {
                    let s = self.line()?.trim_end_matches('L');
                    let o = match s {
                        "00" => Obj::Bool(false),
                        "01" => Obj::Bool(true),
                        _ => Obj::Int(s.parse().or_else(|_| self.bad("bad integer literal"))?),
                    };
                    self.push(o)?
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Obj::Float(f64::from_be_bytes(a)))?
                }
                b'F' => {
                    let s = self.line()?;
                    let v = s.parse().or_else(|_| self.bad("bad float literal"))?;
                    self.push(Obj::Float(v))?
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.len(4)?,
                        0x8c => self.len(1)?,
                        _ => self.len(8)?,
                    };
                    let b = self.take(n)?;
                    let s = self.utf8(b)?;
                    self.push(Obj::Str(s))?
                }
                b'T' | b'U' => {
                    let n = if op == b'T' {
                        self.len(4)?
                    } else {
                        self.len(1)?
                    };
                    let b = self.take(n)?;
                    let o = match std::str::from_utf8(b) {
                        Ok(s) => Obj::Str(s.to_string()),
                        Err(_) => Obj::Bytes(b.to_vec()),
                    };
                    self.push(o)?
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'C' => self.len(1)?,
                        b'B' => self.len(4)?,
                        _ => self.len(8)?,
                    };
                    let b = self.take(n)?.to_vec();
                    self.push(Obj::Bytes(b))?
                }
                b')' => self.push(Obj::Tuple(Vec::new()))?,
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut v = Vec::with_capacity(n);
                    for _ in 0..n {
                        v.push(self.pop()?);
                    }
                    v.reverse();
                    self.push(Obj::Tuple(v))?
                }
                b't' => {
                    let v = self.pop_mark()?;
                    self.push(Obj::Tuple(v))?
                }
                b']' => self.push(Obj::List(Vec::new()))?,
                b'l' => {
                    let v = self.pop_mark()?;
                    self.push(Obj::List(v))?
                }
                b'}' => self.push(Obj::Dict(Vec::new()))?,
                b'd' => {
                    let v = self.pop_mark()?;
                    let id = self.alloc(Obj::Dict(Vec::new()))?;
                    self.set_items(id, v)?;
                    self.stack.push(id);
                }
                0x8f => self.push(Obj::Set(Vec::new()))?,
                0x91 => {
                    let v = self.pop_mark()?;
                    self.push(Obj::Set(v))?
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(t)
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.append(l, vec![v])?
                }
                b'e' | 0x90 => {
                    let v = self.pop_mark()?;
                    let l = self.top()?;
                    self.append(l, v)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, vec![k, v])?
                }
                b'u' => {
                    let v = self.pop_mark()?;
                    let d = self.top()?;
                    self.set_items(d, v)?
                }
                b'p' => {
                    let k = self.line()?.parse().or_else(|_| self.bad("bad memo key"))?;
                    self.memo_put(k)?
                }
                b'q' => {
                    let k = self.uint(1)?;
                    self.memo_put(k)?
                }
                b'r' => {
                    let k = self.uint(4)?;
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?
                }
                b'g' => {
                    let k = self.line()?.parse().or_else(|_| self.bad("bad memo key"))?;
                    self.memo_get(k)?
                }
                b'h' => {
                    let k = self.uint(1)?;
                    self.memo_get(k)?
                }
                b'j' => {
                    let k = self.uint(4)?;
                    self.memo_get(k)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?
                }
                0x93 => {
                    let n = self.pop()?;
                    let m = self.pop()?;
                    match (self.str_of(m), self.str_of(n)) {
                        (Some(m), Some(n)) => {
                            let (m, n) = (m.to_string(), n.to_string());
                            self.global(&m, &n)?
                        }
                        _ => return self.bad("STACK_GLOBAL of non-strings"),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.call(func, args)?
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.call(func, args)?
                }
                b'b' => {
                    let st = self.pop()?;
                    let target = self.top()?;
                    self.build(target, st)?
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(Obj::PersId(pid))?
                }
                b'P' => {
                    let s = self.line()?.to_string();
                    let id = self.alloc(Obj::Str(s))?;
                    self.push(Obj::PersId(id))?
                }
                // INST / OBJ (protocol 0/1 instances), the extension registry, out-of-band
                // buffers: not used by torch.save, so not read.
                _ => return Err(PickleError::Opcode(op, at)),
            }
        }
    }
}

#[cfg(test)]
#[path = "pickle_tests.rs"]
mod tests;
