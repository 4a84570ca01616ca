//! Helpers shared by the test modules (each uses a subset).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use image::{Rgb, RgbImage};

pub fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// max |ours - reference| / max |reference|, shapes checked; printed under `name` (shown with
/// `--nocapture`) so that parity numbers can be quoted.
pub fn rel(name: &str, ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.dims(), reference.dims(), "{name}: shapes differ");
    let (a, b) = (flat(ours), flat(reference));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    assert!(scale > 0.0, "{name}: all-zero reference");
    let r = diff / scale;
    eprintln!("{name:<34} max rel err {r:.3e}");
    r
}

/// [`rel`] without a name.
pub fn rel_err(ours: &Tensor, reference: &Tensor) -> f64 {
    rel("", ours, reference)
}

pub const COLOURS: [(&str, [u8; 3]); 4] = [
    ("red", [220, 30, 30]),
    ("green", [30, 180, 40]),
    ("blue", [30, 60, 220]),
    ("yellow", [230, 210, 30]),
];
pub const SHAPES: [&str; 2] = ["square", "circle"];

pub fn draw(colour: [u8; 3], shape: &str, jitter: u32) -> RgbImage {
    let mut img = RgbImage::from_pixel(32, 32, Rgb([245, 245, 245]));
    let (cx, cy, r) = (12 + jitter % 8, 12 + (jitter / 8) % 8, 7i64);
    for y in 0..32u32 {
        for x in 0..32u32 {
            let (dx, dy) = (x as i64 - cx as i64, y as i64 - cy as i64);
            let inside = if shape == "square" {
                dx.abs() <= r && dy.abs() <= r
            } else {
                dx * dx + dy * dy <= r * r
            };
            if inside {
                img.put_pixel(x, y, Rgb(colour));
            }
        }
    }
    img
}

/// Writes a toy captioning dataset of coloured shapes in the original Flickr8k layout (64 images:
/// 48 train, 8 dev, 8 test; five captions each); returns its folder.
pub fn toy_dataset(root: &Path) -> PathBuf {
    let imgs = root.join("Flicker8k_Dataset");
    let text = root.join("Flickr8k_text");
    std::fs::create_dir_all(&imgs).unwrap();
    std::fs::create_dir_all(&text).unwrap();
    let (mut tokens, mut train, mut dev, mut test) =
        (String::new(), String::new(), String::new(), String::new());
    let mut n = 0;
    for jitter in 0..8u32 {
        for (cname, c) in COLOURS {
            for shape in SHAPES {
                let name = format!("{n:04}.png");
                draw(c, shape, jitter * 7).save(imgs.join(&name)).unwrap();
                let caps = [
                    format!("A {cname} {shape}."),
                    format!("a {cname} {shape} on a white background"),
                    format!("There is a {cname} {shape}"),
                    format!("the {shape} is {cname}"),
                    format!("a {shape} coloured {cname}"),
                ];
                for (k, cap) in caps.iter().enumerate() {
                    tokens += &format!("{name}#{k}\t{cap}\n");
                }
                match jitter {
                    0..=5 => train += &format!("{name}\n"),
                    6 => dev += &format!("{name}\n"),
                    _ => test += &format!("{name}\n"),
                }
                n += 1;
            }
        }
    }
    std::fs::write(text.join("Flickr8k.token.txt"), tokens).unwrap();
    std::fs::write(text.join("Flickr_8k.trainImages.txt"), train).unwrap();
    std::fs::write(text.join("Flickr_8k.devImages.txt"), dev).unwrap();
    std::fs::write(text.join("Flickr_8k.testImages.txt"), test).unwrap();
    root.to_path_buf()
}

/// Decoder settings of the toy-dataset trainings: small and fast, enough to learn the toy captions.
pub const TINY_DECODER: [&str; 14] = [
    "--embed",
    "32",
    "--hidden",
    "32",
    "--batch-size",
    "16",
    "--lr",
    "0.01",
    "--dropout",
    "0.1",
    "--patience",
    "100",
    "--seed",
    "5",
];

/// Starts `roundtrip ARGS` and kills it as soon as `checkpoint` exists (its first finished
/// epoch), failing if none appears within two minutes.
pub fn kill_at_first_checkpoint<S: AsRef<std::ffi::OsStr>>(args: &[S], checkpoint: &Path) {
    let mut child = bin().args(args).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while !checkpoint.exists() && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(checkpoint.exists(), "no checkpoint was written");
}

/// Copies a folder recursively (files and sub-folders).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// The `roundtrip` binary this test build made, as a command to add arguments to.
pub fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_roundtrip"))
}

/// Runs the binary with `args` and waits for it.
pub fn roundtrip<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    bin().args(args).output().unwrap()
}

/// Asserts a successful exit (showing the exit code and stderr otherwise); returns stdout.
pub fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Asserts exit code 2 (bad input); returns stderr.
pub fn fails(o: &std::process::Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(2),
        "expected exit 2, got {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    stderr(o)
}

/// A command's stderr as text.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit code 2 and that stderr contains every one of `needles`.
pub fn fails_with(o: &std::process::Output, needles: &[&str]) {
    let e = fails(o);
    for n in needles {
        assert!(e.contains(n), "`{n}` missing from: {e}");
    }
}

/// `root` and every folder below it.
pub fn dirs_under(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    for e in std::fs::read_dir(root).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(dirs_under(&e.path()));
        }
    }
    out
}
