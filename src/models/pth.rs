//! Reader for PyTorch tensor checkpoints written by `torch.save(state_dict, path)`: the LEGACY
//! (pre-zip, PyTorch < 1.6 or `_use_new_zipfile_serialization=False`) format, which candle cannot
//! read and in which pytorch-pretrained-BigGAN's `pytorch_model.bin` files are stored, and the
//! zip format (PyTorch >= 1.6).
//!
//! A pickle is a program: unpickling it in Python can call any importable function. This reader
//! is not a Python unpickler. It interprets only the opcodes that describe data (numbers, strings,
//! tuples, lists, dicts, the memo) and the few pickle globals a tensor checkpoint needs
//! ([`ALLOWED_GLOBALS`]); a GLOBAL, STACK_GLOBAL or INST naming anything else (`os.system`,
//! `builtins.eval`, ...) stops reading with [`PthError::RefusedGlobal`], which names it, and so do
//! opcodes that can reach code by other routes (EXT1/2/4 through the copyreg registry, OBJ,
//! PERSID). Nothing in a file is ever executed or imported: the allowed globals are interpreted
//! by this module (an `OrderedDict` becomes a list of pairs, `_rebuild_tensor_v2` a tensor view of
//! a storage).
//!
//! Legacy layout (`torch/serialization.py`, `_legacy_save`): five pickles in a row, then raw data.
//! 1. the magic number 0x1950a86a20f9469cfc6c, 2. the protocol version 1001, 3. sys info
//!    `{protocol_version, little_endian, type_sizes}`, 4. the object, whose storages are persistent
//!    ids `('storage', torch.FloatStorage, key, location, numel[, view_metadata])`, 5. the sorted
//!    list of storage keys; then for each key in that order an int64 little-endian element count
//!    and the storage's bytes.
//!
//! Zip layout: `<prefix>/data.pkl` (the object, same persistent ids without view metadata),
//! `<prefix>/data/<key>` (each storage's raw bytes) and optionally `<prefix>/byteorder`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use candle_core::{DType, Device, Tensor};

use crate::input_err;

/// The pickle globals a checkpoint may name, as `(module, name)`. Everything else is refused.
pub const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "FloatStorage"),
    ("torch", "DoubleStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "ShortStorage"),
    ("torch", "ByteStorage"),
    ("torch", "BoolStorage"),
];

/// The legacy format's magic number, 0x1950a86a20f9469cfc6c, as little-endian bytes (what
/// pickle's LONG1 holds).
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL_VERSION: i64 = 1001;

#[derive(Debug, thiserror::Error)]
pub enum PthError {
    /// The pickle names a global outside [`ALLOWED_GLOBALS`]: the file asks for something other
    /// than tensors (unpickling it in Python would import and possibly call it).
    #[error(
        "refused: the checkpoint's pickle names the global `{module}.{name}`, which a tensor \
         checkpoint never needs (allowed: {allowed}); a weights file must not make the tool do \
         anything else, so it is not read"
    )]
    RefusedGlobal {
        module: String,
        name: String,
        allowed: String,
    },
    /// An opcode this reader does not interpret (some can reach code, e.g. EXT1 or OBJ).
    #[error("refused: pickle opcode {name} (0x{code:02x}) at byte {offset} is not interpreted by this reader (only data opcodes are)")]
    UnsupportedOpcode {
        code: u8,
        name: &'static str,
        offset: usize,
    },
    /// Anything else that does not make a well-formed tensor checkpoint.
    #[error("{0}")]
    Format(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

type PResult<T> = Result<T, PthError>;

fn bad<T>(msg: impl Into<String>) -> PResult<T> {
    Err(PthError::Format(msg.into()))
}

fn allowed_list() -> String {
    ALLOWED_GLOBALS
        .iter()
        .map(|(m, n)| format!("{m}.{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Element types of the allowed storage classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StorageKind {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    U8,
    Bool,
}

impl StorageKind {
    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => Self::F64,
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    fn elem_size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::U8 | Self::Bool => 1,
        }
    }

    /// The candle dtype a tensor of this storage gets (bool as u8 0/1).
    fn dtype(self) -> DType {
        match self {
            Self::F64 => DType::F64,
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
            Self::I64 => DType::I64,
            Self::I32 => DType::I32,
            Self::I16 => DType::I16,
            Self::U8 | Self::Bool => DType::U8,
        }
    }
}

/// A global from the allow-list, as the pickle names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(StorageKind),
}

impl Global {
    fn lookup(module: &str, name: &str) -> PResult<Self> {
        let g = match (module, name) {
            ("collections", "OrderedDict") => Some(Self::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Self::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Some(Self::RebuildParameter),
            ("torch", n) => StorageKind::from_class(n).map(Self::Storage),
            _ => None,
        };
        debug_assert!(g.is_none() || ALLOWED_GLOBALS.contains(&(module, name)));
        g.ok_or_else(|| PthError::RefusedGlobal {
            module: module.to_owned(),
            name: name.to_owned(),
            allowed: allowed_list(),
        })
    }
}

#[derive(Debug)]
struct StorageRef {
    kind: StorageKind,
    key: String,
    /// Elements, as the persistent id records them.
    numel: usize,
}

#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// A pickled value. Containers are shared (`Rc`) so that the memo behaves as Python's (a memo
/// get is a reference, not a copy) and a hostile pickle cannot blow up memory by copying.
#[derive(Debug, Clone)]
enum Value {
    Mark,
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond i64, little-endian two's complement bytes.
    BigInt(Rc<[u8]>),
    // Floats and bytes are read (a checkpoint may hold them) but never needed.
    Float(#[allow(dead_code)] f64),
    Str(Rc<str>),
    Bytes(#[allow(dead_code)] Rc<[u8]>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Self::Mark => "mark",
            Self::None => "None",
            Self::Bool(_) => "bool",
            Self::Int(_) | Self::BigInt(_) => "int",
            Self::Float(_) => "float",
            Self::Str(_) => "str",
            Self::Bytes(_) => "bytes",
            Self::Tuple(_) => "tuple",
            Self::List(_) => "list",
            Self::Dict(_) => "dict",
            Self::Global(_) => "global",
            Self::Storage(_) => "storage",
            Self::Tensor(_) => "tensor",
        }
    }

    fn int(&self, what: &str) -> PResult<i64> {
        match self {
            Self::Int(i) => Ok(*i),
            Self::Bool(b) => Ok(*b as i64),
            v => bad(format!("{what}: expected an int, got {}", v.kind())),
        }
    }

    fn usize(&self, what: &str) -> PResult<usize> {
        let i = self.int(what)?;
        usize::try_from(i).or_else(|_| bad(format!("{what}: expected a non-negative int, got {i}")))
    }

    fn str(&self, what: &str) -> PResult<Rc<str>> {
        match self {
            Self::Str(s) => Ok(s.clone()),
            v => bad(format!("{what}: expected a str, got {}", v.kind())),
        }
    }

    /// The items of a tuple or list.
    fn items(&self, what: &str) -> PResult<Vec<Value>> {
        match self {
            Self::Tuple(t) => Ok(t.as_ref().clone()),
            Self::List(l) => Ok(l.borrow().clone()),
            v => bad(format!("{what}: expected a tuple, got {}", v.kind())),
        }
    }

    fn usizes(&self, what: &str) -> PResult<Vec<usize>> {
        self.items(what)?.iter().map(|v| v.usize(what)).collect()
    }
}

/// Bounds-checked reading of a byte slice.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.data.len() => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => bad(format!(
                "truncated file: {n} more bytes needed at byte {} of {}",
                self.pos,
                self.data.len()
            )),
        }
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> PResult<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn i32(&mut self) -> PResult<i32> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> PResult<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn len_u64(&mut self) -> PResult<usize> {
        let n = self.u64()?;
        usize::try_from(n).or_else(|_| bad(format!("length {n} too large")))
    }

    fn line(&mut self) -> PResult<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return bad("truncated pickle: unterminated GLOBAL line");
        };
        let s = std::str::from_utf8(&rest[..end])
            .or_else(|_| bad("pickle GLOBAL name is not UTF-8"))?;
        self.pos += end + 1;
        Ok(s)
    }
}

fn int_from_le(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() <= 8 {
        let neg = bytes[bytes.len() - 1] & 0x80 != 0;
        let mut b = [if neg { 0xff } else { 0 }; 8];
        b[..bytes.len()].copy_from_slice(bytes);
        Value::Int(i64::from_le_bytes(b))
    } else {
        Value::BigInt(bytes.into())
    }
}

fn opcode_name(op: u8) -> &'static str {
    match op {
        b'i' => "INST",
        b'o' => "OBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        b'P' => "PERSID",
        0x92 => "NEWOBJ_EX",
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'g' => "GET",
        b'p' => "PUT",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

/// Runs one pickle (up to and including STOP) and returns its value. `persistent` turns a
/// persistent id into a value (storages); without one, BINPERSID is an error.
fn unpickle(r: &mut Cursor, persistent: &mut dyn FnMut(Value) -> PResult<Value>) -> PResult<Value> {
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    fn pop(stack: &mut Vec<Value>) -> PResult<Value> {
        match stack.pop() {
            Some(Value::Mark) => bad("malformed pickle: unexpected mark"),
            Some(v) => Ok(v),
            None => bad("malformed pickle: empty stack"),
        }
    }
    fn pop_mark(stack: &mut Vec<Value>) -> PResult<Vec<Value>> {
        let Some(i) = stack.iter().rposition(|v| matches!(v, Value::Mark)) else {
            return bad("malformed pickle: no mark");
        };
        let items = stack.split_off(i + 1);
        stack.pop();
        Ok(items)
    }
    fn top(stack: &mut [Value]) -> PResult<&mut Value> {
        match stack.last_mut() {
            Some(Value::Mark) | None => bad("malformed pickle: expected an object on the stack"),
            Some(v) => Ok(v),
        }
    }
    fn set_items(target: &Value, kv: Vec<Value>) -> PResult<()> {
        let Value::Dict(d) = target else {
            return bad(format!(
                "malformed pickle: SETITEM(S) on a {}",
                target.kind()
            ));
        };
        if !kv.len().is_multiple_of(2) {
            return bad("malformed pickle: odd number of items in SETITEMS");
        }
        let mut d = d.borrow_mut();
        let mut it = kv.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }
    fn append(target: &Value, items: Vec<Value>) -> PResult<()> {
        match target {
            Value::List(l) => {
                l.borrow_mut().extend(items);
                Ok(())
            }
            v => bad(format!("malformed pickle: APPEND(S) on a {}", v.kind())),
        }
    }
    fn string(bytes: &[u8]) -> PResult<Value> {
        let s = std::str::from_utf8(bytes).or_else(|_| bad("pickle string is not UTF-8"))?;
        Ok(Value::Str(s.into()))
    }
    loop {
        let at = r.pos;
        let op = r.u8()?;
        match op {
            0x80 => {
                let proto = r.u8()?;
                if proto > 5 {
                    return bad(format!("pickle protocol {proto} is not supported"));
                }
            }
            0x95 => {
                r.u64()?; // FRAME: a length hint
            }
            b'.' => return pop(&mut stack),
            b'(' => stack.push(Value::Mark),
            b'0' => {
                stack.pop();
            }
            b'1' => {
                pop_mark(&mut stack)?;
            }
            b'2' => {
                let v = top(&mut stack)?.clone();
                stack.push(v);
            }
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => stack.push(Value::Int(r.i32()? as i64)),
            b'K' => stack.push(Value::Int(r.u8()? as i64)),
            b'M' => stack.push(Value::Int(r.u16()? as i64)),
            0x8a => {
                let n = r.u8()? as usize;
                stack.push(int_from_le(r.take(n)?));
            }
            0x8b => {
                let n = r.i32()?;
                let n = usize::try_from(n).or_else(|_| bad("negative LONG4 length"))?;
                stack.push(int_from_le(r.take(n)?));
            }
            b'G' => stack.push(Value::Float(f64::from_be_bytes(
                r.take(8)?.try_into().unwrap(),
            ))),
            b'X' => {
                let n = r.u32()? as usize;
                stack.push(string(r.take(n)?)?);
            }
            0x8c => {
                let n = r.u8()? as usize;
                stack.push(string(r.take(n)?)?);
            }
            0x8d => {
                let n = r.len_u64()?;
                stack.push(string(r.take(n)?)?);
            }
            // Python 2 strings (BINSTRING, SHORT_BINSTRING): read as UTF-8, torch.load's default.
            b'T' => {
                let n = r.i32()?;
                let n = usize::try_from(n).or_else(|_| bad("negative BINSTRING length"))?;
                stack.push(string(r.take(n)?)?);
            }
            b'U' => {
                let n = r.u8()? as usize;
                stack.push(string(r.take(n)?)?);
            }
            b'B' => {
                let n = r.u32()? as usize;
                stack.push(Value::Bytes(r.take(n)?.into()));
            }
            b'C' => {
                let n = r.u8()? as usize;
                stack.push(Value::Bytes(r.take(n)?.into()));
            }
            0x8e => {
                let n = r.len_u64()?;
                stack.push(Value::Bytes(r.take(n)?.into()));
            }
            b')' => stack.push(Value::Tuple(Rc::new(Vec::new()))),
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(Rc::new(items)));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return bad("malformed pickle: TUPLE on a short stack");
                }
                let items = stack.split_off(stack.len() - n);
                if items.iter().any(|v| matches!(v, Value::Mark)) {
                    return bad("malformed pickle: unexpected mark");
                }
                stack.push(Value::Tuple(Rc::new(items)));
            }
            b']' => stack.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
            b'l' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::List(Rc::new(RefCell::new(items))));
            }
            b'a' => {
                let v = pop(&mut stack)?;
                append(top(&mut stack)?, vec![v])?;
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                append(top(&mut stack)?, items)?;
            }
            b'}' => stack.push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
            b'd' => {
                let items = pop_mark(&mut stack)?;
                let d = Value::Dict(Rc::new(RefCell::new(Vec::new())));
                set_items(&d, items)?;
                stack.push(d);
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                set_items(top(&mut stack)?, vec![k, v])?;
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                set_items(top(&mut stack)?, items)?;
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Value::Global(Global::lookup(module, name)?));
            }
            0x93 => {
                let name = pop(&mut stack)?.str("STACK_GLOBAL name")?;
                let module = pop(&mut stack)?.str("STACK_GLOBAL module")?;
                stack.push(Value::Global(Global::lookup(&module, &name)?));
            }
            // INST names a class inline: refused like any global outside the allow-list (no
            // allowed global is ever pickled this way).
            b'i' => {
                let module = r.line()?.to_owned();
                let name = r.line()?.to_owned();
                return Err(PthError::RefusedGlobal {
                    module,
                    name,
                    allowed: allowed_list(),
                });
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack)?;
                let callable = pop(&mut stack)?;
                stack.push(call(&callable, &args)?);
            }
            b'b' => {
                // BUILD sets instance state: an OrderedDict's `_metadata` (module versions) or
                // a tensor's attributes. Neither matters for the weights; the state is dropped.
                let _state = pop(&mut stack)?;
                match top(&mut stack)? {
                    Value::Dict(_) | Value::Tensor(_) => {}
                    v => return bad(format!("malformed checkpoint: BUILD on a {}", v.kind())),
                }
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(persistent(pid)?);
            }
            b'h' => {
                let i = r.u8()? as u32;
                stack.push(memo_get(&memo, i)?);
            }
            b'j' => {
                let i = r.u32()?;
                stack.push(memo_get(&memo, i)?);
            }
            b'q' => {
                let i = r.u8()? as u32;
                memo.insert(i, top(&mut stack)?.clone());
            }
            b'r' => {
                let i = r.u32()?;
                memo.insert(i, top(&mut stack)?.clone());
            }
            0x94 => {
                let i = memo.len() as u32;
                memo.insert(i, top(&mut stack)?.clone());
            }
            code => {
                return Err(PthError::UnsupportedOpcode {
                    code,
                    name: opcode_name(code),
                    offset: at,
                })
            }
        }
    }
}

fn memo_get(memo: &HashMap<u32, Value>, i: u32) -> PResult<Value> {
    memo.get(&i)
        .cloned()
        .ok_or_else(|| PthError::Format(format!("malformed pickle: memo entry {i} is not set")))
}

/// REDUCE / NEWOBJ of an allowed global.
fn call(callable: &Value, args: &Value) -> PResult<Value> {
    let Value::Global(g) = callable else {
        return bad(format!(
            "malformed checkpoint: REDUCE calls a {}",
            callable.kind()
        ));
    };
    let args = args.items("REDUCE arguments")?;
    match g {
        Global::OrderedDict => {
            let d = Value::Dict(Rc::new(RefCell::new(Vec::new())));
            match args.as_slice() {
                [] => {}
                [items] => {
                    for pair in items.items("OrderedDict items")? {
                        let kv = pair.items("OrderedDict item")?;
                        if kv.len() != 2 {
                            return bad("OrderedDict item is not a pair");
                        }
                        set_pair(&d, kv)?;
                    }
                }
                _ => return bad("OrderedDict called with more than one argument"),
            }
            Ok(d)
        }
        Global::RebuildTensorV2 => {
            // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
            if !(6..=7).contains(&args.len()) {
                return bad(format!(
                    "_rebuild_tensor_v2 expects 6 or 7 arguments, got {}",
                    args.len()
                ));
            }
            let Value::Storage(storage) = &args[0] else {
                return bad(format!(
                    "_rebuild_tensor_v2: expected a storage, got {}",
                    args[0].kind()
                ));
            };
            let t = TensorRef {
                storage: storage.clone(),
                offset: args[1].usize("tensor storage offset")?,
                size: args[2].usizes("tensor size")?,
                stride: args[3].usizes("tensor stride")?,
            };
            if t.size.len() != t.stride.len() {
                return bad("tensor size and stride have different lengths");
            }
            Ok(Value::Tensor(Rc::new(t)))
        }
        Global::RebuildParameter => match args.first() {
            Some(t @ Value::Tensor(_)) => Ok(t.clone()),
            _ => bad("_rebuild_parameter: expected a tensor as first argument"),
        },
        Global::Storage(_) => bad("malformed checkpoint: a storage class is called"),
    }
}

fn set_pair(d: &Value, kv: Vec<Value>) -> PResult<()> {
    if let Value::Dict(d) = d {
        let mut it = kv.into_iter();
        if let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.borrow_mut().push((k, v));
        }
    }
    Ok(())
}

/// `('storage', torch.XStorage, key, location, numel[, view_metadata])` -> a storage reference.
fn storage_pid(pid: Value, storages: &mut HashMap<String, Rc<StorageRef>>) -> PResult<Value> {
    let items = pid.items("persistent id")?;
    if !(5..=6).contains(&items.len()) || !matches!(&items[0], Value::Str(s) if &**s == "storage") {
        return bad("persistent id is not a ('storage', type, key, location, size) tuple");
    }
    let Value::Global(Global::Storage(kind)) = items[1] else {
        return bad(format!(
            "persistent id: expected a storage class, got {}",
            items[1].kind()
        ));
    };
    if items.len() == 6 && !matches!(items[5], Value::None) {
        return bad("storage views (legacy view metadata) are not supported");
    }
    let key = items[2].str("storage key")?.to_string();
    let numel = items[4].usize("storage size")?;
    if let Some(s) = storages.get(&key) {
        if s.kind != kind || s.numel != numel {
            return bad(format!(
                "storage `{key}` is described twice with different types or sizes"
            ));
        }
        return Ok(Value::Storage(s.clone()));
    }
    let s = Rc::new(StorageRef {
        kind,
        key: key.clone(),
        numel,
    });
    storages.insert(key, s.clone());
    Ok(Value::Storage(s))
}

/// What kind of file the bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `torch.save` before PyTorch 1.6 or with `_use_new_zipfile_serialization=False`.
    Legacy,
    /// `torch.save` since PyTorch 1.6 (a zip archive).
    Zip,
}

/// Recognises a checkpoint by its first bytes: a zip archive, or a pickle of the legacy magic
/// number. Anything else (including PyTorch < 0.4's tar format) is an error.
pub fn detect_format(bytes: &[u8]) -> PResult<Format> {
    if bytes.starts_with(b"PK\x03\x04") {
        return Ok(Format::Zip);
    }
    // PROTO n, [FRAME len (protocol 4+)], LONG1 10, the magic's 10 bytes.
    if bytes.len() >= 2 && bytes[0] == 0x80 {
        let at = if bytes.get(2) == Some(&0x95) { 11 } else { 2 };
        if bytes.get(at..at + 2) == Some(&[0x8a, 10])
            && bytes.get(at + 2..at + 12) == Some(&LEGACY_MAGIC)
        {
            return Ok(Format::Legacy);
        }
    }
    if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        return bad("this is PyTorch's old tar checkpoint format (PyTorch < 0.4), which is not supported; re-save it with a newer PyTorch");
    }
    bad("not a PyTorch checkpoint (neither the legacy torch.save format nor a zip archive)")
}

/// The tensors of a checkpoint (a dict, possibly an OrderedDict, of name -> tensor), in the
/// file's order, on the CPU in their stored dtype (bool as u8). Entries whose value is not a
/// tensor (counters, nested dicts) are skipped.
pub fn read_bytes(bytes: &[u8]) -> PResult<Vec<(String, Tensor)>> {
    match detect_format(bytes)? {
        Format::Legacy => read_legacy(bytes),
        Format::Zip => read_zip(bytes),
    }
}

/// [`read_bytes`] of a file; errors name nothing but the problem (callers add the path).
pub fn read_file(path: &Path) -> PResult<Vec<(String, Tensor)>> {
    read_bytes(&std::fs::read(path)?)
}

/// The tensors of a weights file, on the CPU: safetensors when the name ends in `.safetensors`,
/// otherwise a PyTorch checkpoint (legacy or zip, [`read_bytes`]). Every failure, a refused
/// pickle global included, is an input error naming the file and the [`PthError`]'s message.
pub fn load_weights_file(path: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    let bytes = crate::error::read_input_file(path)?;
    if path.extension().is_some_and(|e| e == "safetensors") {
        return candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| input_err!("{} is not a valid safetensors file: {e}", path.display()));
    }
    match read_bytes(&bytes) {
        Ok(tensors) => Ok(tensors.into_iter().collect()),
        Err(e) => Err(input_err!(
            "cannot read PyTorch weights {}: {e}",
            path.display()
        )),
    }
}

fn no_storages(_: Value) -> PResult<Value> {
    bad("unexpected persistent id in a legacy header pickle")
}

fn read_legacy(bytes: &[u8]) -> PResult<Vec<(String, Tensor)>> {
    let mut r = Cursor::new(bytes);
    match unpickle(&mut r, &mut no_storages)? {
        Value::BigInt(b) if *b == LEGACY_MAGIC => {}
        _ => return bad("legacy checkpoint: wrong magic number"),
    }
    let version = unpickle(&mut r, &mut no_storages)?.int("legacy protocol version")?;
    if version != LEGACY_PROTOCOL_VERSION {
        return bad(format!(
            "legacy checkpoint: protocol version {version}, expected {LEGACY_PROTOCOL_VERSION}"
        ));
    }
    let Value::Dict(sys_info) = unpickle(&mut r, &mut no_storages)? else {
        return bad("legacy checkpoint: the sys info is not a dict");
    };
    let little = sys_info
        .borrow()
        .iter()
        .find(|(k, _)| matches!(k, Value::Str(s) if &**s == "little_endian"))
        .map(|(_, v)| matches!(v, Value::Bool(true)));
    if little != Some(true) {
        return bad("legacy checkpoint: written on a big-endian machine (or no byte order recorded); only little-endian files are supported");
    }
    let mut storages = HashMap::new();
    let root = unpickle(&mut r, &mut |pid| storage_pid(pid, &mut storages))?;
    let keys = unpickle(&mut r, &mut no_storages)?.items("legacy storage key list")?;
    let mut data: HashMap<String, &[u8]> = HashMap::new();
    for k in keys {
        let key = k.str("storage key")?.to_string();
        let Some(s) = storages.get(&key) else {
            return bad(format!(
                "legacy checkpoint: storage `{key}` is listed but no tensor uses it"
            ));
        };
        let n = r.len_u64()?;
        if n != s.numel {
            return bad(format!(
                "legacy checkpoint: storage `{key}` holds {n} elements, its tensors say {}",
                s.numel
            ));
        }
        let len = n
            .checked_mul(s.kind.elem_size())
            .ok_or_else(|| PthError::Format("storage too large".into()))?;
        data.insert(key, r.take(len)?);
    }
    tensors(&root, |s: &StorageRef| {
        data.get(&s.key).copied().ok_or_else(|| {
            PthError::Format(format!(
                "legacy checkpoint: storage `{}` has no data",
                s.key
            ))
        })
    })
}

fn read_zip(bytes: &[u8]) -> PResult<Vec<(String, Tensor)>> {
    let zerr = |e: zip::result::ZipError| PthError::Format(format!("zip checkpoint: {e}"));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(zerr)?;
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(zerr)?;
    let pkl: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .collect();
    let [pkl] = pkl.as_slice() else {
        return bad(format!(
            "zip checkpoint: expected one <name>/data.pkl, found {}",
            pkl.len()
        ));
    };
    let prefix = &pkl[..pkl.len() - "data.pkl".len()];
    let read_entry = |zip: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>, name: &str| {
        let mut f = zip.by_name(name).map_err(zerr)?;
        let mut v = Vec::with_capacity(f.size().min(bytes.len() as u64) as usize);
        f.read_to_end(&mut v)?;
        Ok::<_, PthError>(v)
    };
    if names.iter().any(|n| *n == format!("{prefix}byteorder")) {
        let order = read_entry(&mut zip, &format!("{prefix}byteorder"))?;
        if order != b"little" {
            return bad(
                "zip checkpoint: not little-endian; only little-endian files are supported",
            );
        }
    }
    let pickle = read_entry(&mut zip, pkl)?;
    let mut storages = HashMap::new();
    let root = unpickle(&mut Cursor::new(&pickle), &mut |pid| {
        storage_pid(pid, &mut storages)
    })?;
    let mut data: HashMap<String, Vec<u8>> = HashMap::new();
    for s in storages.values() {
        let v = read_entry(&mut zip, &format!("{prefix}data/{}", s.key))?;
        data.insert(s.key.clone(), v);
    }
    tensors(&root, |s: &StorageRef| {
        data.get(&s.key)
            .map(Vec::as_slice)
            .ok_or_else(|| PthError::Format(format!("zip checkpoint: no data for `{}`", s.key)))
    })
}

/// The (name, tensor) entries of the root dict, each copied out of its storage's bytes.
fn tensors<'d>(
    root: &Value,
    storage_bytes: impl Fn(&StorageRef) -> PResult<&'d [u8]>,
) -> PResult<Vec<(String, Tensor)>> {
    let Value::Dict(d) = root else {
        return bad(format!(
            "the checkpoint holds a {}, expected a dict of tensors (a state_dict)",
            root.kind()
        ));
    };
    let mut out = Vec::new();
    for (k, v) in d.borrow().iter() {
        let Value::Tensor(t) = v else { continue };
        let name = k.str("state_dict key")?.to_string();
        let bytes = storage_bytes(&t.storage)?;
        let tensor = materialise(t, bytes).map_err(|e| match e {
            PthError::Format(m) => PthError::Format(format!("tensor `{name}`: {m}")),
            e => e,
        })?;
        out.push((name, tensor));
    }
    Ok(out)
}

/// Copies a (possibly strided, offset) view of a storage into a contiguous CPU tensor.
fn materialise(t: &TensorRef, storage: &[u8]) -> PResult<Tensor> {
    let es = t.storage.kind.elem_size();
    if storage.len() < t.storage.numel * es {
        return bad(format!(
            "storage holds {} bytes, {} expected",
            storage.len(),
            t.storage.numel * es
        ));
    }
    let numel: usize = t.size.iter().product();
    if numel > 0 {
        // Largest element index the view touches, checked against the storage.
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |acc, (&n, &s)| {
                (n - 1).checked_mul(s).and_then(|x| x.checked_add(acc))
            });
        match last {
            Some(l) if l < t.storage.numel => {}
            _ => {
                return bad(format!(
                    "view (offset {}, size {:?}, stride {:?}) exceeds its storage of {} elements",
                    t.offset, t.size, t.stride, t.storage.numel
                ))
            }
        }
    }
    let contiguous = {
        let mut expect = 1;
        let mut ok = true;
        for (&n, &s) in t.size.iter().zip(&t.stride).rev() {
            if n != 1 && s != expect {
                ok = false;
            }
            expect *= n;
        }
        ok
    };
    let bytes: std::borrow::Cow<[u8]> = if contiguous {
        std::borrow::Cow::Borrowed(&storage[t.offset * es..(t.offset + numel) * es])
    } else {
        let mut out = Vec::with_capacity(numel * es);
        let mut idx = vec![0usize; t.size.len()];
        for _ in 0..numel {
            let e: usize = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            out.extend_from_slice(&storage[e * es..(e + 1) * es]);
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < t.size[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        std::borrow::Cow::Owned(out)
    };
    let mut bytes = bytes;
    if t.storage.kind == StorageKind::Bool && bytes.iter().any(|&b| b > 1) {
        bytes = std::borrow::Cow::Owned(bytes.iter().map(|&b| (b != 0) as u8).collect());
    }
    Tensor::from_raw_buffer(&bytes, t.storage.kind.dtype(), &t.size, &Device::Cpu)
        .map_err(|e| PthError::Format(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A legacy file written by hand: header pickles, a main pickle `{"w": tensor}` built from
    /// `main` (bytes after PROTO 2), the key list, the data.
    fn legacy(main: &[u8], data: &[f32]) -> Vec<u8> {
        let mut f = vec![0x80, 2, 0x8a, 10];
        f.extend_from_slice(&LEGACY_MAGIC);
        f.push(b'.');
        f.extend_from_slice(&[0x80, 2, b'M', 0xe9, 0x03, b'.']); // 1001
        f.extend_from_slice(&[0x80, 2, b'}', b'X', 13, 0, 0, 0]);
        f.extend_from_slice(b"little_endian");
        f.extend_from_slice(&[0x88, b's', b'.']);
        f.extend_from_slice(&[0x80, 2]);
        f.extend_from_slice(main);
        f.extend_from_slice(&[0x80, 2, b']', b'X', 1, 0, 0, 0, b'0', b'a', b'.']);
        f.extend_from_slice(&(data.len() as u64).to_le_bytes());
        for v in data {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f
    }

    fn tensor_pickle(global: &[u8]) -> Vec<u8> {
        let mut p = b"}X\x01\x00\x00\x00w".to_vec();
        p.extend_from_slice(global);
        p.extend_from_slice(b"((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06NtQK\x00K\x02K\x03\x86K\x01K\x02\x86\x89)tRs.");
        p
    }

    #[test]
    fn hand_written_legacy_file_reads_a_transposed_view() {
        let f = legacy(
            &tensor_pickle(b"ctorch._utils\n_rebuild_tensor_v2\n"),
            &[0., 1., 2., 3., 4., 5.],
        );
        assert_eq!(detect_format(&f).unwrap(), Format::Legacy);
        let t = read_bytes(&f).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0, "w");
        // size (2, 3), stride (1, 2): the transpose of a 3 x 2 row-major block.
        let v: Vec<Vec<f32>> = t[0].1.to_vec2().unwrap();
        assert_eq!(v, vec![vec![0., 2., 4.], vec![1., 3., 5.]]);
    }

    #[test]
    fn globals_outside_the_allow_list_are_refused_by_name() {
        let f = legacy(&tensor_pickle(b"cos\nsystem\n"), &[0.; 6]);
        match read_bytes(&f) {
            Err(PthError::RefusedGlobal { module, name, .. }) => {
                assert_eq!((module.as_str(), name.as_str()), ("os", "system"))
            }
            r => panic!("expected a refusal, got {r:?}"),
        }
        // STACK_GLOBAL (protocol 4) too.
        let f = legacy(
            &tensor_pickle(b"X\x08\x00\x00\x00builtinsX\x04\x00\x00\x00eval\x93"),
            &[0.; 6],
        );
        let e = read_bytes(&f).unwrap_err().to_string();
        assert!(
            e.contains("`builtins.eval`") && e.contains("refused"),
            "{e}"
        );
    }

    #[test]
    fn code_reaching_opcodes_are_refused() {
        for (bytes, name) in [
            (&b"\x82\x01."[..], "EXT1"),
            (&b"(o."[..], "OBJ"),
            (&b"P1\n."[..], "PERSID"),
        ] {
            let e = unpickle(&mut Cursor::new(bytes), &mut no_storages).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
        }
        let e = unpickle(&mut Cursor::new(b"(ios\nsystem\n."), &mut no_storages).unwrap_err();
        assert!(matches!(e, PthError::RefusedGlobal { .. }), "{e}");
    }

    #[test]
    fn truncated_and_foreign_files_are_errors() {
        let f = legacy(
            &tensor_pickle(b"ctorch._utils\n_rebuild_tensor_v2\n"),
            &[0., 1., 2., 3., 4., 5.],
        );
        let e = read_bytes(&f[..f.len() - 3]).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = read_bytes(b"hello world").unwrap_err().to_string();
        assert!(e.contains("not a PyTorch checkpoint"), "{e}");
    }

    #[test]
    fn memo_is_shared_not_copied() {
        // A list put in the memo, then appended to through the stack, is seen through BINGET.
        let v = unpickle(
            &mut Cursor::new(b"]q\x00K\x01ah\x00\x86."),
            &mut no_storages,
        )
        .unwrap();
        let items = v.items("t").unwrap();
        assert_eq!(items[1].items("l").unwrap().len(), 1);
    }
}
