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
//!
//! Files: the pickle machine and its allow-list in [`pickle`]; here the error type, format
//! detection, the two containers and the copy of each tensor view out of its storage.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::{Device, Tensor};

mod pickle;

pub use pickle::ALLOWED_GLOBALS;
use pickle::{
    no_storages, storage_pid, unpickle, Cursor, StorageKind, StorageRef, TensorRef, Value,
};

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
}
