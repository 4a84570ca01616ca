//! The pickle virtual machine of the PyTorch checkpoint reader ([`super`]), restricted to data.
//!
//! It interprets only the opcodes that describe data (numbers, strings, tuples, lists, dicts, the
//! memo) and the globals of [`ALLOWED_GLOBALS`], which it interprets itself (an `OrderedDict`
//! becomes a list of pairs, `_rebuild_tensor_v2` a [`TensorRef`], a storage class plus a
//! persistent id a [`StorageRef`]); any other global, and every opcode that can reach code
//! (EXT1/2/4, OBJ, INST of a foreign class, PERSID), is refused with a [`PthError`] naming it.
//! Nothing is ever imported or executed. The container formats (legacy, zip) that hold these
//! pickles are read in [`super`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use candle_core::DType;

use super::{bad, PResult, PthError};

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

fn allowed_list() -> String {
    ALLOWED_GLOBALS
        .iter()
        .map(|(m, n)| format!("{m}.{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Element types of the allowed storage classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StorageKind {
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

    pub(super) fn elem_size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::U8 | Self::Bool => 1,
        }
    }

    /// The candle dtype a tensor of this storage gets (bool as u8 0/1).
    pub(super) fn dtype(self) -> DType {
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
pub(super) enum Global {
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
pub(super) struct StorageRef {
    pub(super) kind: StorageKind,
    pub(super) key: String,
    /// Elements, as the persistent id records them.
    pub(super) numel: usize,
}

#[derive(Debug)]
pub(super) struct TensorRef {
    pub(super) storage: Rc<StorageRef>,
    pub(super) offset: usize,
    pub(super) size: Vec<usize>,
    pub(super) stride: Vec<usize>,
}

/// A pickled value. Containers are shared (`Rc`) so that the memo behaves as Python's (a memo
/// get is a reference, not a copy) and a hostile pickle cannot blow up memory by copying.
#[derive(Debug, Clone)]
pub(super) enum Value {
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
    pub(super) fn kind(&self) -> &'static str {
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

    pub(super) fn int(&self, what: &str) -> PResult<i64> {
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

    pub(super) fn str(&self, what: &str) -> PResult<Rc<str>> {
        match self {
            Self::Str(s) => Ok(s.clone()),
            v => bad(format!("{what}: expected a str, got {}", v.kind())),
        }
    }

    /// The items of a tuple or list.
    pub(super) fn items(&self, what: &str) -> PResult<Vec<Value>> {
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
pub(super) struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub(super) fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
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

    pub(super) fn len_u64(&mut self) -> PResult<usize> {
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
pub(super) fn unpickle(
    r: &mut Cursor,
    persistent: &mut dyn FnMut(Value) -> PResult<Value>,
) -> PResult<Value> {
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
pub(super) fn storage_pid(
    pid: Value,
    storages: &mut HashMap<String, Rc<StorageRef>>,
) -> PResult<Value> {
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

/// The persistent-id handler of pickles that hold no storages (the legacy header pickles).
pub(super) fn no_storages(_: Value) -> PResult<Value> {
    bad("unexpected persistent id in a legacy header pickle")
}

#[cfg(test)]
mod tests {
    use super::*;

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
