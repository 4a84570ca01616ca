//! Trainings that can always be retried, through the binary on the toy dataset of tests/common:
//! a training killed before its first checkpoint starts over to the model of an uninterrupted
//! run (with or without `--resume`); a corrupt image is refused before MODEL_DIR exists; a
//! second training on a locked MODEL_DIR names the holder; `--resume` with a changed setting
//! names it; absurd batch sizes are refused; a damaged (or old-format) feature-cache entry is
//! recomputed; model files get the permissions of every other file; `eval` names missing images.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::toy_dataset;
use crate::common::{bin, ok, roundtrip, stderr as err};

const ENCODER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vgg16_tiny");

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A captioner training on the frozen tiny VGG16 fixture (its features take seconds to compute
/// in a fresh cache: the window in which the tests below interrupt or contend with it).
fn frozen_args(ds: &Path, out: &Path, cache: &Path, epochs: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "train",
        "--encoder",
        "vgg16",
        "--weights",
        ENCODER,
        "--dataset",
        &s(ds),
        "--out",
        &s(out),
        "--cache",
        &s(cache),
        "--epochs",
        epochs,
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    a.extend(crate::common::TINY_DECODER.map(String::from));
    a
}

/// A captioner trained end to end with the tiny encoder geometry (about a second).
fn end_to_end_args(ds: &Path, out: &Path, epochs: &str, extra: &[(&str, &str)]) -> Vec<String> {
    let mut a: Vec<String> = [
        "train",
        "--encoder",
        "vgg16",
        "--train-encoder",
        "--encoder-config",
        "tiny",
        "--dataset",
        &s(ds),
        "--out",
        &s(out),
        "--epochs",
        epochs,
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    a.extend(crate::common::TINY_DECODER.map(String::from));
    set(a, extra)
}

/// A very small CLIP (as tests/clip_train.rs trains), with `extra` flags set.
fn clip_args(ds: &Path, out: &Path, epochs: &str, extra: &[(&str, &str)]) -> Vec<String> {
    let a: Vec<String> = [
        "train-clip",
        "--quiet",
        "--dataset",
        &s(ds),
        "--out",
        &s(out),
        "--epochs",
        epochs,
        "--batch-size",
        "16",
        "--lr",
        "0.001",
        "--image-size",
        "32",
        "--patch",
        "8",
        "--width",
        "32",
        "--layers",
        "2",
        "--heads",
        "2",
        "--embed",
        "32",
        "--context",
        "12",
        "--seed",
        "3",
    ]
    .map(String::from)
    .to_vec();
    set(a, extra)
}

/// `args` with `flag` set to `value` (replaced where present, else appended; an empty value
/// adds a bare flag).
fn set(mut args: Vec<String>, flags: &[(&str, &str)]) -> Vec<String> {
    for (flag, value) in flags {
        match args.iter().position(|a| a == flag) {
            Some(i) if !value.is_empty() => args[i + 1] = value.to_string(),
            Some(_) => {}
            None => {
                args.push(flag.to_string());
                if !value.is_empty() {
                    args.push(value.to_string());
                }
            }
        }
    }
    args
}

fn spawn(args: &[String]) -> Child {
    bin()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits (up to two minutes) until `path` exists or the child has ended; whether it exists.
fn wait_for(child: &mut Child, path: &Path) -> bool {
    let t0 = Instant::now();
    while !path.exists() && t0.elapsed() < Duration::from_secs(120) {
        if child.try_wait().unwrap().is_some() {
            return path.exists();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    path.exists()
}

/// Runs `args` and kills it (SIGKILL) as soon as `out/written` exists; true when no checkpoint
/// had been written by then (the kill fell before the first finished epoch).
fn kill_before_first_checkpoint(args: &[String], out: &Path, written: &str) -> bool {
    let mut child = spawn(args);
    let started = wait_for(&mut child, &out.join(written));
    let _ = child.kill();
    child.wait().unwrap();
    assert!(started, "the training never wrote {written}");
    !out.join("checkpoint.safetensors").exists()
}

fn bytes(dir: &Path, f: &str) -> Vec<u8> {
    std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{}/{f}: {e}", dir.display()))
}

#[test]
fn a_captioner_killed_before_its_first_checkpoint_starts_over_to_the_same_model() {
    let d = tempfile::tempdir().unwrap();
    let ds = toy_dataset(&d.path().join("shapes"));
    let straight = d.path().join("straight");
    ok(&roundtrip(&frozen_args(
        &ds,
        &straight,
        &d.path().join("cache-a"),
        "3",
    )));

    // Killed while it computes its features (config.json and vocab.json written, no epoch
    // finished); its own, fresh cache keeps that window seconds long.
    let killed = d.path().join("killed");
    let args = frozen_args(&ds, &killed, &d.path().join("cache-b"), "3");
    assert!(
        kill_before_first_checkpoint(&args, &killed, "vocab.json"),
        "the kill fell after the first checkpoint"
    );
    assert!(killed.join("config.json").is_file());

    // A plain rerun (no --resume) starts over and says so.
    let o = roundtrip(&args);
    ok(&o);
    assert!(
        err(&o).contains("starting the training over"),
        "{}",
        err(&o)
    );
    for f in ["model.safetensors", "checkpoint.safetensors", "vocab.json"] {
        assert!(
            bytes(&straight, f) == bytes(&killed, f),
            "{f} differs from the uninterrupted run's"
        );
    }
    assert!(!killed.join(".training-started").exists());

    // Once a checkpoint exists, a rerun without --resume is refused as before.
    let o = roundtrip(&args);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("--resume"), "{}", err(&o));

    // A finished captioner whose checkpoint was left out (as the shipped ones are) is neither
    // resumed nor overwritten.
    std::fs::remove_file(straight.join("checkpoint.safetensors")).unwrap();
    let before = bytes(&straight, "model.safetensors");
    for extra in [vec![], vec!["--resume".to_string()]] {
        let args = [
            frozen_args(&ds, &straight, &d.path().join("cache-a"), "3"),
            extra,
        ]
        .concat();
        let o = roundtrip(&args);
        assert_eq!(o.status.code(), Some(2), "{}", err(&o));
        assert!(err(&o).contains("is not overwritten"), "{}", err(&o));
    }
    assert!(bytes(&straight, "model.safetensors") == before);
}

#[test]
fn a_clip_killed_before_its_first_checkpoint_resumes_by_starting_over() {
    let d = tempfile::tempdir().unwrap();
    let ds = toy_dataset(&d.path().join("shapes"));
    let straight = d.path().join("straight");
    ok(&roundtrip(&clip_args(&ds, &straight, "3", &[])));

    // The window between config.json and the first checkpoint is short for this tiny model:
    // try a few times until a kill falls inside it.
    let mut killed = None;
    for attempt in 0..20 {
        let out = d.path().join(format!("killed{attempt}"));
        if kill_before_first_checkpoint(&clip_args(&ds, &out, "3", &[]), &out, "config.json") {
            killed = Some(out);
            break;
        }
    }
    let killed = killed.expect("no kill fell before the first checkpoint in 20 attempts");
    assert!(killed.join("tokenizer.json").is_file() && killed.join("config.json").is_file());

    // --resume without a checkpoint starts over too, with one line saying so.
    let o = roundtrip(&clip_args(&ds, &killed, "3", &[("--resume", "")]));
    ok(&o);
    let notes: Vec<&str> = std::str::from_utf8(&o.stderr)
        .unwrap()
        .lines()
        .filter(|l| l.contains("starting the training"))
        .collect();
    assert_eq!(notes.len(), 1, "{}", err(&o));
    for f in [
        "model.safetensors",
        "checkpoint.safetensors",
        "tokenizer.json",
    ] {
        assert!(
            bytes(&straight, f) == bytes(&killed, f),
            "{f} differs from the uninterrupted run's"
        );
    }
    let log = |dir: &Path| {
        std::fs::read_to_string(dir.join("train_log.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(log(&killed), 3);
}

/// Truncates the first training image of a copy of the toy dataset to half its bytes.
fn corrupt_copy(ds: &Path, to: &Path) -> PathBuf {
    let bad = toy_dataset(to);
    let img = bad.join("Flicker8k_Dataset/0000.png");
    let b = std::fs::read(ds.join("Flicker8k_Dataset/0000.png")).unwrap();
    std::fs::write(&img, &b[..b.len() / 2]).unwrap();
    bad
}

#[test]
fn a_corrupt_dataset_image_is_refused_before_the_model_folder_exists() {
    let d = tempfile::tempdir().unwrap();
    let ds = toy_dataset(&d.path().join("shapes"));
    let bad = corrupt_copy(&ds, &d.path().join("bad"));
    let cache = d.path().join("cache");
    let out = d.path().join("m");
    for args in [
        frozen_args(&bad, &out, &cache, "1"),
        end_to_end_args(&bad, &out, "1", &[]),
        clip_args(&bad, &out, "1", &[]),
    ] {
        let o = roundtrip(&args);
        assert_eq!(o.status.code(), Some(2), "{:?}: {}", args[0], err(&o));
        assert!(
            err(&o).contains("0000.png") && err(&o).contains("not a readable image"),
            "{}",
            err(&o)
        );
        assert!(!out.exists(), "{} created by a refused {:?}", s(&out), args);
    }
    // Nothing reached the feature cache either.
    assert!(!cache.join("features-v2").exists());
}

#[test]
fn a_second_training_on_a_locked_model_folder_names_the_holder() {
    let d = tempfile::tempdir().unwrap();
    let ds = toy_dataset(&d.path().join("shapes"));
    let out = d.path().join("cap");
    let mut first = spawn(&frozen_args(&ds, &out, &d.path().join("cache-a"), "2"));
    assert!(
        wait_for(&mut first, &out.join("config.json")),
        "the first training never started"
    );
    // The first one computes its features for seconds yet: the second finds the lock.
    let mut results = Vec::new();
    for args in [
        frozen_args(&ds, &out, &d.path().join("cache-b"), "2"),
        [
            frozen_args(&ds, &out, &d.path().join("cache-b"), "2"),
            vec!["--resume".into()],
        ]
        .concat(),
        clip_args(&ds, &out, "1", &[("--resume", "")]),
    ] {
        results.push(roundtrip(&args));
    }
    let still_running = first.try_wait().unwrap().is_none();
    let pid = first.id();
    let status = first.wait().unwrap();
    assert!(
        still_running,
        "the first training ended before the others were tried"
    );
    assert!(status.success());
    for o in results {
        assert_eq!(o.status.code(), Some(2), "{}", err(&o));
        let e = err(&o);
        assert!(
            e.contains("in use by") && e.contains(&format!("pid {pid}")),
            "{e}"
        );
    }
    // The first training was not disturbed: its folder is complete and unlocked.
    assert!(out.join("checkpoint.safetensors").is_file());
    assert!(!out.join(".roundtrip.lock").exists());
}

#[test]
fn resume_with_a_changed_setting_names_it() {
    let d = tempfile::tempdir().unwrap();
    let ds = toy_dataset(&d.path().join("shapes"));
    let clip = d.path().join("clip");
    ok(&roundtrip(&clip_args(&ds, &clip, "1", &[])));
    let o = roundtrip(&clip_args(&ds, &clip, "2", &[("--resume", "")]));
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("settings.epochs: 1 -> 2"),
        "the first differing setting is named: {}",
        err(&o)
    );
    let o = roundtrip(&clip_args(
        &ds,
        &clip,
        "1",
        &[("--resume", ""), ("--width", "64")],
    ));
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("settings.width: 32 -> 64"), "{}", err(&o));

    let cap = d.path().join("cap");
    ok(&roundtrip(&end_to_end_args(&ds, &cap, "1", &[])));
    let o = roundtrip(&end_to_end_args(
        &ds,
        &cap,
        "2",
        &[("--resume", ""), ("--hidden", "48")],
    ));
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("decoder.hidden: 32 -> 48"), "{}", err(&o));
    // Unchanged settings (more epochs) resume.
    ok(&roundtrip(&end_to_end_args(
        &ds,
        &cap,
        "2",
        &[("--resume", "")],
    )));
}

#[test]
fn absurd_batch_and_image_sizes_are_refused_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let ds = toy_dataset(&d.path().join("shapes"));
    let out = d.path().join("m");
    // An encoder geometry whose middle blocks alone could not be listed in memory.
    let deep = d.path().join("deep.json");
    std::fs::write(
        &deep,
        r#"{"stem": [4, 8], "entry": [8, 16, 16], "middle_blocks": 100000000000, "exit": 24,
            "exit_convs": [32, 32], "image_size": 32, "bn_eps": 1e-5}"#,
    )
    .unwrap();
    let mut xception = set(
        end_to_end_args(&ds, &out, "1", &[("--batch-size", "1")]),
        &[("--encoder-config", &s(&deep))],
    );
    xception[2] = "xception".into();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (xception, "memory"),
        (
            end_to_end_args(&ds, &out, "1", &[("--batch-size", "100000000")]),
            "--batch-size 100000000",
        ),
        (
            set(
                frozen_args(&ds, &out, &d.path().join("cache"), "1"),
                &[("--batch-size", "1000000000000")],
            ),
            "--batch-size 1000000000000",
        ),
        (
            clip_args(&ds, &out, "1", &[("--batch-size", "10000000")]),
            "--batch-size 10000000",
        ),
        (
            clip_args(&ds, &out, "1", &[("--image-size", "800000")]),
            "--image-size 800000",
        ),
    ];
    for (args, setting) in cases {
        let o = roundtrip(&args);
        assert_eq!(o.status.code(), Some(2), "{setting}: {}", err(&o));
        let e = err(&o);
        assert!(
            e.contains(setting) && e.contains("memory"),
            "{setting}: {e}"
        );
        assert!(!out.exists(), "{setting}: the model folder was created");
    }
}

#[cfg(unix)]
#[test]
fn model_files_get_the_permissions_of_every_other_file() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let ds = toy_dataset(&d.path().join("shapes"));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let cap = d.path().join("cap");
    ok(&roundtrip(&end_to_end_args(&ds, &cap, "1", &[])));
    let clip = d.path().join("clip");
    ok(&roundtrip(&clip_args(&ds, &clip, "1", &[])));
    for (dir, json) in [(&cap, "config.json"), (&clip, "training.json")] {
        let want = mode(&dir.join(json));
        for f in [
            "model.safetensors",
            "checkpoint.safetensors",
            "encoder/model.safetensors",
        ] {
            let p = dir.join(f);
            if p.exists() {
                assert_eq!(mode(&p), want, "{} vs {json}", s(&p));
            }
        }
    }
}

/// The files of the only encoder folder under `cache/features-v2`.
fn cache_entries(cache: &Path) -> (PathBuf, Vec<PathBuf>) {
    let root = cache.join("features-v2");
    let dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dirs[0])
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    (dirs[0].clone(), files)
}

#[test]
fn damaged_and_old_format_feature_cache_entries_are_recomputed() {
    let d = tempfile::tempdir().unwrap();
    let ds = toy_dataset(&d.path().join("shapes"));
    let cache = d.path().join("cache");
    let fresh = d.path().join("fresh");
    let first = ok(&roundtrip(&frozen_args(&ds, &fresh, &cache, "2")));
    assert!(
        first.contains("features computed 56\tfeatures cached 0"),
        "{first}"
    );
    let (dir, files) = cache_entries(&cache);
    assert_eq!(files.len(), 56);

    // Garbage of the right size, a truncated entry and a well-formed one (its checksum
    // matches) holding a NaN: each recomputed with a warning naming its file.
    let size = std::fs::metadata(&files[0]).unwrap().len() as usize;
    let garbage: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&files[0], &garbage).unwrap();
    let b = std::fs::read(&files[1]).unwrap();
    std::fs::write(&files[1], &b[..b.len() - 5]).unwrap();
    let mut nan = std::fs::read(&files[2]).unwrap();
    nan[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let payload = nan.len() - 32;
    let sum = sha2::Digest::finalize(sha2::Digest::chain_update(
        <sha2::Sha256 as sha2::Digest>::new(),
        &nan[..payload],
    ));
    nan[payload..].copy_from_slice(&sum);
    std::fs::write(&files[2], &nan).unwrap();
    let again = d.path().join("again");
    let o = roundtrip(&frozen_args(&ds, &again, &cache, "2"));
    let out = ok(&o);
    assert!(
        out.contains("features computed 3\tfeatures cached 53"),
        "{out}"
    );
    let e = err(&o);
    for f in &files[..3] {
        assert!(
            e.lines()
                .any(|l| l.contains("warning") && l.contains(&s(f))),
            "{} not named: {e}",
            s(f)
        );
    }
    assert!(bytes(&fresh, "model.safetensors") == bytes(&again, "model.safetensors"));
    // The recomputed entries are whole again.
    let third = ok(&roundtrip(&frozen_args(
        &ds,
        &d.path().join("third"),
        &cache,
        "1",
    )));
    assert!(
        third.contains("features computed 0\tfeatures cached 56"),
        "{third}"
    );

    // Entries of the first format (bare f32s under features/) are never read: a cache holding
    // only those, even of the right size, computes everything.
    let old_cache = d.path().join("old-cache");
    let key = dir.file_name().unwrap();
    let old_dir = old_cache.join("features").join(key);
    std::fs::create_dir_all(&old_dir).unwrap();
    for f in &files {
        let stem = f.file_stem().unwrap().to_str().unwrap();
        std::fs::write(old_dir.join(format!("{stem}.f32")), vec![0u8; size - 32]).unwrap();
    }
    let old = d.path().join("old");
    let out = ok(&roundtrip(&frozen_args(&ds, &old, &old_cache, "2")));
    assert!(
        out.contains("features computed 56\tfeatures cached 0"),
        "{out}"
    );
    assert!(bytes(&fresh, "model.safetensors") == bytes(&old, "model.safetensors"));
}

#[test]
fn eval_names_missing_test_images_and_refuses_impossible_beams() {
    let d = tempfile::tempdir().unwrap();
    let ds = toy_dataset(&d.path().join("shapes"));
    let cap = d.path().join("cap");
    ok(&roundtrip(&end_to_end_args(&ds, &cap, "1", &[])));
    // Test images are the last eight (0056..0063); remove two.
    for n in ["0057.png", "0060.png"] {
        std::fs::remove_file(ds.join("Flicker8k_Dataset").join(n)).unwrap();
    }
    let o = roundtrip(&[
        "eval",
        "--captioner",
        &s(&cap),
        "--dataset",
        &s(&ds),
        "--json",
        "--quiet",
        "--cache",
        &s(&d.path().join("cache")),
    ]);
    let out = ok(&o);
    let lines: Vec<String> = err(&o)
        .lines()
        .filter(|l| l.contains("missing"))
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 1, "{}", err(&o));
    assert!(
        lines[0].contains("2 images")
            && lines[0].contains("0057.png")
            && lines[0].contains("0060.png"),
        "{}",
        lines[0]
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["images"], 6);
    assert_eq!(v["missing_images"], 2);

    // Beams that cannot run are refused before any captioning.
    for (beam, says) in [("0", "at least 1"), ("1000000000", "memory")] {
        let o = roundtrip(&[
            "eval",
            "--captioner",
            &s(&cap),
            "--dataset",
            &s(&ds),
            "--beam",
            beam,
            "--cache",
            &s(&d.path().join("cache")),
        ]);
        assert_eq!(o.status.code(), Some(2), "--beam {beam}: {}", err(&o));
        assert!(err(&o).contains(says), "--beam {beam}: {}", err(&o));
    }
}
