//! The PyTorch checkpoint reader (`roundtrip::weights::pth`) on files written by torch.save
//! (tests/fixtures/pth/, made by tests/fixtures/make_biggan_fixtures.py): the legacy format with
//! protocols 2 and 4 and the zip format give exactly the stored tensors, every dtype and strided
//! view included; pickles that name anything outside the allow-list (here `os.system`, pickled
//! as `posix.system`) are refused with an input error naming the global.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use roundtrip::weights::pth::{self, Format, PthError};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pth")
        .join(name)
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("expected.safetensors"), &Device::Cpu).unwrap()
}

/// Same dtype, shape and bytes.
fn assert_identical(name: &str, ours: &Tensor, want: &Tensor) {
    assert_eq!(ours.dtype(), want.dtype(), "{name}: dtype");
    assert_eq!(ours.dims(), want.dims(), "{name}: shape");
    let a = ours.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
    let b = want.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
    let (a, b): (Vec<f64>, Vec<f64>) = (a.to_vec1().unwrap(), b.to_vec1().unwrap());
    assert_eq!(a, b, "{name}: values");
}

#[test]
fn legacy_and_zip_files_give_the_stored_tensors() {
    let want = expected();
    for (file, format) in [
        ("tensors_legacy.pt", Format::Legacy),
        ("tensors_legacy_p4.pt", Format::Legacy),
        ("tensors_zip.pt", Format::Zip),
    ] {
        let bytes = std::fs::read(fixture(file)).unwrap();
        assert_eq!(pth::detect_format(&bytes).unwrap(), format, "{file}");
        let got = pth::read_bytes(&bytes).unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        // The file's (OrderedDict) order.
        assert_eq!(
            names,
            [
                "f32",
                "f32_transposed",
                "f32_row",
                "f64",
                "f16",
                "bf16",
                "i64",
                "i32",
                "i16",
                "u8",
                "bool",
                "scalar",
                "empty",
                "param"
            ],
            "{file}"
        );
        for (name, t) in &got {
            assert_identical(&format!("{file}: {name}"), t, &want[name]);
        }
        eprintln!("{file}: {} tensors identical to torch's", got.len());
    }
}

#[test]
fn malicious_pickles_are_refused_naming_the_global() {
    for file in ["malicious_legacy.pt", "malicious_zip.pt", "malicious_p4.pt"] {
        let e = pth::read_file(&fixture(file)).unwrap_err();
        match &e {
            PthError::RefusedGlobal { module, name, .. } => {
                assert_eq!(
                    (module.as_str(), name.as_str()),
                    ("posix", "system"),
                    "{file}"
                )
            }
            e => panic!("{file}: expected a refusal, got {e}"),
        }
        // Through the weights loader: an input error (exit code 2) naming the file and the global.
        let e = roundtrip::weights::load_weights_file(&fixture(file)).unwrap_err();
        let msg = format!("{e:#}");
        eprintln!("{msg}");
        assert!(
            msg.contains(file) && msg.contains("`posix.system`") && msg.contains("refused"),
            "{msg}"
        );
        assert_eq!(roundtrip::error::exit_code(&e), 2);
    }
}

#[test]
fn the_allow_list_is_the_documented_one() {
    let names: Vec<String> = pth::ALLOWED_GLOBALS
        .iter()
        .map(|(m, n)| format!("{m}.{n}"))
        .collect();
    assert!(names.contains(&"torch._utils._rebuild_tensor_v2".to_string()));
    assert!(names.contains(&"collections.OrderedDict".to_string()));
    assert!(names.contains(&"torch.FloatStorage".to_string()));
    assert!(!names.iter().any(|n| n.starts_with("builtins")
        || n.starts_with("os")
        || n.starts_with("posix")
        || n.contains("eval")));
}

#[test]
fn corrupt_files_are_input_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("tensors_legacy.pt")).unwrap();
    let cut = tmp.path().join("cut.pt");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let e = roundtrip::weights::load_weights_file(&cut).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("cut.pt") && msg.contains("truncated"), "{msg}");
    assert_eq!(roundtrip::error::exit_code(&e), 2);
    let junk = tmp.path().join("junk.bin");
    std::fs::write(&junk, b"\x00\x01 not a checkpoint").unwrap();
    let msg = format!(
        "{:#}",
        roundtrip::weights::load_weights_file(&junk).unwrap_err()
    );
    assert!(msg.contains("not a PyTorch checkpoint"), "{msg}");
}
