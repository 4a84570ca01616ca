//! Progress on stderr without a terminal (the tests' stderr is a pipe): with
//! `ROUNDTRIP_HEARTBEAT_SECS=0` every step of a long command is a heartbeat line, so each test
//! checks the lines themselves, not their timing; a run ends with the corpus summary and the
//! report paths; a bad heartbeat setting is an input error before anything runs.

use std::path::Path;
use std::process::Output;

use crate::common::{fails_with, ok, stderr};

const CLIP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clip_tiny");

/// The binary with `ROUNDTRIP_HEARTBEAT_SECS=secs`, offline.
fn roundtrip(secs: &str, args: &[&str]) -> Output {
    crate::common::bin()
        .args(args)
        .env("ROUNDTRIP_HEARTBEAT_SECS", secs)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

/// The lines of `text` that start with `prefix`.
fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn generate_logs_every_step_with_its_similarity() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().to_str().unwrap();
    let o = roundtrip(
        "0",
        &[
            "generate",
            "a red circle",
            "--out",
            out,
            "--clip",
            CLIP,
            "--steps",
            "5",
            "--size",
            "32",
            "--layers",
            "3",
            "--hidden",
            "32",
            "--cutouts",
            "2",
            "--save-every",
            "0",
        ],
    );
    ok(&o);
    let err = stderr(&o);
    let beats = lines_starting(&err, "a-red-circle ");
    assert_eq!(beats.len(), 5, "{err}");
    for (i, l) in beats.iter().enumerate() {
        let head = format!("a-red-circle {}/5 sim ", i + 1);
        assert!(l.starts_with(&head), "{l}");
        // The time left, except at the last step.
        assert_eq!(l.contains(", ETA "), i < 4, "{l}");
    }
}

#[test]
fn quiet_prints_nothing_and_a_long_interval_only_the_first_beat() {
    let d = tempfile::tempdir().unwrap();
    let args = |out: &str| {
        [
            "generate",
            "a red circle",
            "--out",
            out,
            "--clip",
            CLIP,
            "--steps",
            "3",
            "--size",
            "32",
            "--layers",
            "3",
            "--hidden",
            "32",
            "--cutouts",
            "2",
            "--save-every",
            "0",
        ]
        .map(str::to_owned)
    };
    let out = d.path().join("a").display().to_string();
    let mut quiet = args(&out).to_vec();
    quiet.push("--quiet".into());
    let quiet: Vec<&str> = quiet.iter().map(String::as_str).collect();
    let o = roundtrip("0", &quiet);
    ok(&o);
    assert_eq!(stderr(&o), "");
    // An hour between heartbeats: in a command of seconds, only the first (at its first step,
    // no line having been printed yet), which says that it is alive.
    let out = d.path().join("b").display().to_string();
    let slow = args(&out);
    let slow: Vec<&str> = slow.iter().map(String::as_str).collect();
    let o = roundtrip("3600", &slow);
    ok(&o);
    let err = stderr(&o);
    assert_eq!(lines_starting(&err, "a-red-circle ").len(), 1, "{err}");
}

#[test]
fn a_bad_heartbeat_setting_is_an_input_error_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path().join("h.txt");
    std::fs::write(&h, "a dog\n").unwrap();
    let h = h.to_str().unwrap();
    for bad in ["soon", "-5"] {
        fails_with(
            &roundtrip(bad, &["bleu", h, h]),
            &[
                &format!("ROUNDTRIP_HEARTBEAT_SECS=`{bad}`: expected"),
                "number >= 0",
            ],
        );
    }
}

#[test]
fn captioner_training_logs_its_batches_between_epoch_lines() {
    let d = tempfile::tempdir().unwrap();
    let ds = crate::common::toy_dataset(&d.path().join("toy"));
    let (out, cache) = (d.path().join("out"), d.path().join("cache"));
    let mut args = vec![
        "train",
        "--encoder",
        "vgg16",
        "--weights",
        "tests/fixtures/vgg16_tiny",
        "--dataset",
        ds.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--epochs",
        "2",
    ];
    args.extend(crate::common::TINY_DECODER);
    let o = roundtrip("0", &args);
    ok(&o);
    let err = stderr(&o);
    // 48 training images, five captions each, batches of 16: 15 batches an epoch.
    let steps = lines_starting(&err, "steps ");
    assert_eq!(steps.len(), 30, "{err}");
    for (i, l) in steps.iter().enumerate() {
        assert!(l.starts_with(&format!("steps {}/30", i + 1)), "{l}");
    }
    // The epoch's line follows its last batch.
    let epoch1 = err.find("epoch 1: loss").expect("epoch 1's line");
    assert!(err.find("steps 15/30").unwrap() < epoch1);
    assert!(epoch1 < err.find("steps 16/30").unwrap(), "{err}");
}

/// `run` on the shipped shapes models, SIREN only, 3 steps per image, `jobs` images at once.
fn shapes_run(out: &Path, jobs: &str) -> Output {
    roundtrip(
        "0",
        &[
            "run",
            "--jobs",
            jobs,
            "tests/data/run/shapes.txt",
            "--preset",
            "shapes",
            "--generator",
            "siren",
            "--out",
            out.to_str().unwrap(),
            "--seed",
            "11",
            "--steps",
            "3",
            "--save-every",
            "0",
        ],
    )
}

#[test]
fn run_logs_each_step_with_the_runs_progress_and_ends_with_a_summary() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    let o = shapes_run(&out, "1");
    // stdout keeps its one machine-readable line.
    let stdout = ok(&o);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("phrases 3\tcomputed 3"), "{stdout}");
    let err = stderr(&o);

    // Each image: its line, a heartbeat per step (its similarity, then the run's steps and
    // images), and a line at its end.
    for i in 1..=3 {
        let beats = lines_starting(&err, &format!("[{i}/3] "));
        assert_eq!(beats.len(), 5, "{err}");
        for (step, l) in (1..=3).zip(&beats[1..4]) {
            let run_steps = 3 * (i - 1) + step;
            assert!(
                l.starts_with(&format!("[{i}/3] {step}/3 steps, sim "))
                    && l.contains(&format!(" | run {run_steps}/9 steps, {}/3 images", i - 1)),
                "{l}"
            );
        }
        let end = beats[4];
        let run = if i < 3 {
            format!(" | run {}/9 steps, {i}/3 images, ETA ", 3 * i)
        } else {
            " | run 9/9 steps, 3/3 images".to_owned()
        };
        assert!(
            end.starts_with(&format!("[{i}/3] computed in "))
                && end.contains(" s: sim ")
                && end.contains(", CLIPScore ")
                && end.contains(&run)
                && (i < 3 || end.ends_with(&run)),
            "{end}"
        );
    }

    // The summary: the counts, the corpus table (each captioner on the generated images, those
    // of phrases with a photo, and the photos), the mean scores and the report files.
    let tail: Vec<&str> = err
        .lines()
        .skip_while(|l| !l.starts_with("3 phrases ("))
        .collect();
    assert!(
        !tail.is_empty() && tail[0].starts_with("3 phrases (3 computed, 0 updated, 0 reused) in "),
        "{err}"
    );
    let header: Vec<&str> = tail[1].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "captioner",
            "images",
            "n",
            "BLEU-1",
            "BLEU-4",
            "CLIP",
            "unique"
        ]
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let corpus = &report["corpus"];
    let rows: Vec<Vec<&str>> = tail[2..8]
        .iter()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    let mut i = 0;
    for label in ["vgg16", "xception"] {
        let siren = &corpus["generators"]["siren"]["captioners"][label];
        for (what, figures) in [
            ("siren", &siren["generated"]),
            ("siren w/ photo", &siren["generated_with_photo"]),
            ("real photo", &corpus["photo"]["captioners"][label]),
        ] {
            let f = |x: &serde_json::Value| format!("{:.4}", x.as_f64().unwrap());
            let want = [
                label.to_owned(),
                what.to_owned(),
                figures["images"].to_string(),
                f(&figures["bleu"]["bleu1"]),
                f(&figures["bleu"]["bleu4"]),
                f(&figures["mean_clip_text_similarity"]),
                format!("{}/{}", figures["distinct_captions"], figures["images"]),
            ];
            assert_eq!(rows[i], want, "row {i}: {}", tail[2 + i]);
            i += 1;
        }
    }
    assert!(tail[8].starts_with("mean CLIPScore: siren "), "{}", tail[8]);
    assert!(tail[8].contains(", real photos "), "{}", tail[8]);
    assert!(
        tail[9].starts_with("mean guide similarity: siren "),
        "{}",
        tail[9]
    );
    assert_eq!(
        tail[10..],
        [
            format!("gallery: {}", out.join("report.html").display()),
            format!("table:   {}", out.join("report.md").display()),
            format!("csv:     {}", out.join("report.csv").display()),
        ]
    );
    for f in ["report.html", "report.md", "report.csv"] {
        assert!(out.join(f).is_file(), "{f}");
    }

    // Run again: every image reused, no step lines, the run's bar emptied of their steps.
    let o = shapes_run(&out, "1");
    ok(&o);
    let err = stderr(&o);
    for i in 1..=3 {
        let beats = lines_starting(&err, &format!("[{i}/3] "));
        assert_eq!(beats.len(), 2, "{err}");
        assert!(
            beats[1].starts_with(&format!("[{i}/3] reused in "))
                && beats[1].ends_with(&format!(" | run 0/{} steps, {i}/3 images", 9 - 3 * i)),
            "{}",
            beats[1]
        );
    }
    assert!(
        err.contains("3 phrases (0 computed, 0 updated, 3 reused) in "),
        "{err}"
    );
}

/// Two images at a time: their lines interleave, but each image still logs its start, a
/// heartbeat per step and its end, every line whole and naming its image, and the run's counts
/// add up.
#[test]
fn run_with_two_jobs_logs_every_images_lines_whole() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    let o = shapes_run(&out, "2");
    let stdout = ok(&o);
    assert!(stdout.contains("phrases 3\tcomputed 3"), "{stdout}");
    let err = stderr(&o);
    for i in 1..=3 {
        let lines = lines_starting(&err, &format!("[{i}/3] "));
        assert_eq!(lines.len(), 5, "{err}");
        for (step, l) in (1..=3).zip(&lines[1..4]) {
            assert!(
                l.starts_with(&format!("[{i}/3] {step}/3 steps, sim ")) && l.contains(" | run "),
                "{l}"
            );
        }
        assert!(
            lines[4].starts_with(&format!("[{i}/3] computed in ")),
            "{}",
            lines[4]
        );
    }
    // The last image to end sees the whole run done.
    assert!(err.contains(" | run 9/9 steps, 3/3 images"), "{err}");
    assert!(
        err.contains("3 phrases (3 computed, 0 updated, 0 reused) in "),
        "{err}"
    );
}
