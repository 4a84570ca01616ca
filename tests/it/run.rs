//! `roundtrip run` end to end: the fixed-seed golden report on the shipped shapes models
//! (models/shapes/), and, with tiny models (the tiny CLIP fixture, and two captioners trained here
//! on a toy dataset with the tiny VGG16 and Xception fixtures), resume after a kill, shards merged
//! to the single-run report, the HTML gallery, BigGAN lines, stage-by-stage reuse (changed
//! settings, captioners replaced in place, corrupt files), one writer per folder and bad input.
//!
//! Regenerate the golden report after an intended change with
//! `ROUNDTRIP_BLESS=1 cargo test --release --test it run::golden` (it rewrites the file and fails) (see results/README.md).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::{fails, ok};
use serde_json::Value;

const CLIP: &str = "tests/fixtures/clip_tiny";
const PROMPTS: &str = "tests/data/run/prompts.txt";
const GOLDEN_PROMPTS: &str = "tests/data/run/shapes.txt";
const GOLDEN: &str = "results/golden/run-shapes.json";
/// Numbers in the golden report must match to this relative tolerance (absolute below 1): the
/// computation is deterministic, so this only absorbs floating-point differences between CPUs
/// (SIMD widths) over the 30 guidance steps. Captions, ids, seeds and counts must match exactly.
const TOLERANCE: f64 = 1e-4;

fn roundtrip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_roundtrip"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

struct Fixture {
    root: PathBuf,
    /// `--captioners` value of the two trained captioners.
    captioners: String,
}

/// Trains the two tiny captioners once per test binary.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("run-fixture");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let ds = crate::common::toy_dataset(&root.join("toy"));
        let mut caps = Vec::new();
        for (kind, weights) in [("vgg16", "vgg16_tiny"), ("xception", "xception_tiny")] {
            let out = root.join(kind);
            let w = format!("tests/fixtures/{weights}");
            let (ds, out_s) = (ds.to_str().unwrap(), out.to_str().unwrap());
            let cache = root.join("cache");
            let mut args = vec![
                "train",
                "--encoder",
                kind,
                "--weights",
                &w,
                "--dataset",
                ds,
                "--out",
                out_s,
                "--cache",
                cache.to_str().unwrap(),
                "--epochs",
                "6",
                "--quiet",
            ];
            args.extend(crate::common::TINY_DECODER);
            ok(&roundtrip(&args));
            caps.push(format!("{kind}={}", out.display()));
        }
        Fixture {
            captioners: caps.join(","),
            root,
        }
    })
}

fn run_args(prompts: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let f = fixture();
    let mut v: Vec<String> = [
        "run",
        prompts,
        "--out",
        out.to_str().unwrap(),
        "--clip",
        CLIP,
        "--captioners",
        &f.captioners,
        "--seed",
        "11",
        "--steps",
        "30",
        "--size",
        "32",
        "--layers",
        "3",
        "--hidden",
        "32",
        "--cutouts",
        "4",
        "--save-every",
        "10",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run(prompts: &str, out: &Path, extra: &[&str]) -> Output {
    let args = run_args(prompts, out, extra);
    roundtrip(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// An uninterrupted run of the golden prompts, made once.
fn complete_run() -> &'static Path {
    static R: OnceLock<PathBuf> = OnceLock::new();
    R.get_or_init(|| {
        let out = fixture().root.join("complete");
        let stdout = ok(&run(PROMPTS, &out, &[]));
        assert!(
            stdout.contains("phrases 4\tcomputed 4\treused 0\tupdated 0"),
            "{stdout}"
        );
        out
    })
}

/// The number after `word ` in a run's summary line.
fn count(stdout: &str, word: &str) -> usize {
    stdout
        .split(&format!("{word} "))
        .nth(1)
        .and_then(|s| s.split(['\t', '\n']).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no `{word}` in {stdout}"))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A report without what legitimately differs between two executions of the same run: the
/// `seconds` timings.
fn without_timings(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("seconds");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

/// The golden form: no timings, and nothing that names this machine's paths or this build.
fn golden_form(report: Value) -> Value {
    let mut v = without_timings(report);
    let m = v.as_object_mut().unwrap();
    m.remove("tool");
    m.remove("models");
    // Stage keys and file digests identify inputs and outputs byte for byte; the golden figures
    // are compared with a tolerance instead.
    for p in m["phrases"].as_array_mut().unwrap() {
        let p = p.as_object_mut().unwrap();
        p.remove("stages");
        p.remove("sha256");
    }
    if let Some(caps) = m["settings"]["captioners"].as_array_mut() {
        for c in caps {
            c.as_object_mut().unwrap().remove("dir");
        }
    }
    v
}

/// Compares JSON values: numbers within [`TOLERANCE`], everything else exactly.
fn assert_close(path: &str, got: &Value, want: &Value) {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!(
                (a - b).abs() <= TOLERANCE * b.abs().max(1.0),
                "{path}: {a} vs golden {b}"
            );
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: length");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_close(&format!("{path}[{i}]"), x, y);
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            let (ka, kb): (Vec<_>, Vec<_>) = (a.keys().collect(), b.keys().collect());
            assert_eq!(ka, kb, "{path}: keys");
            for (k, x) in a {
                assert_close(&format!("{path}.{k}"), x, &b[k]);
            }
        }
        _ => assert_eq!(got, want, "{path}"),
    }
}

#[derive(serde::Deserialize)]
struct Report {
    schema_version: u32,
    phrases: Vec<Phrase>,
    corpus: Corpus,
}

#[derive(serde::Deserialize)]
struct Phrase {
    line: usize,
    phrase: String,
    seed: u64,
    image: String,
    frames: Vec<String>,
    photo: Option<Photo>,
    clip_score: ClipScore,
    captions: std::collections::BTreeMap<String, Captions>,
    steps: Vec<Value>,
}

#[derive(serde::Deserialize)]
struct Photo {
    file: String,
}

#[derive(serde::Deserialize)]
struct ClipScore {
    generated: f64,
    photo: Option<f64>,
}

#[derive(serde::Deserialize)]
struct Captions {
    generated: Caption,
    photo: Option<Caption>,
}

#[derive(serde::Deserialize)]
struct Caption {
    caption: String,
    bleu: Bleu,
    clip_text_similarity: f64,
}

#[derive(serde::Deserialize)]
struct Bleu {
    unsmoothed: [f64; 4],
    method1: [f64; 4],
}

#[derive(serde::Deserialize)]
struct Corpus {
    phrases: usize,
    with_photo: usize,
    captioners: std::collections::BTreeMap<String, CaptionerCorpus>,
}

#[derive(serde::Deserialize)]
struct CaptionerCorpus {
    generated: Figures,
    generated_with_photo: Figures,
    photo: Figures,
}

#[derive(serde::Deserialize)]
struct Figures {
    images: usize,
    bleu: Bleu,
    distinct_captions: usize,
    most_common_count: usize,
}

/// The golden run: the shipped shapes models (`--preset shapes`), three phrases (two with
/// photos), run seed 11, 30 guidance steps.
fn golden_run() -> PathBuf {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("run-golden");
    let _ = std::fs::remove_dir_all(&out);
    let o = roundtrip(&[
        "run",
        GOLDEN_PROMPTS,
        "--preset",
        "shapes",
        "--out",
        out.to_str().unwrap(),
        "--seed",
        "11",
        "--steps",
        "30",
        "--save-every",
        "10",
        "--quiet",
    ]);
    let stdout = ok(&o);
    assert!(stdout.contains("phrases 3\tcomputed 3"), "{stdout}");
    out
}

#[test]
fn golden_report_matches() {
    let dir = golden_run();
    let report = read_json(&dir.join("report.json"));
    let r: Report = serde_json::from_value(report.clone()).unwrap();
    assert_eq!(r.schema_version, 2);
    let phrases: Vec<&str> = r.phrases.iter().map(|p| p.phrase.as_str()).collect();
    assert_eq!(
        phrases,
        [
            "a big red circle in the middle",
            "a small green circle below a big yellow triangle",
            "a blue star and a red square"
        ]
    );
    assert_eq!(
        r.phrases.iter().map(|p| p.line).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    for p in &r.phrases {
        assert!(dir.join(&p.image).is_file(), "{}", p.image);
        assert_eq!(p.frames.len(), 2, "frames at steps 10 and 20");
        assert!(p.frames.iter().all(|f| dir.join(f).is_file()));
        assert_eq!(p.steps.len(), 30);
        assert_eq!(p.photo.is_some(), p.clip_score.photo.is_some());
        assert!((0.0..=2.5).contains(&p.clip_score.generated));
        assert_eq!(p.seed, { roundtrip::run::phrase_seed(11, &p.phrase) });
        for (label, c) in &p.captions {
            assert_eq!(c.photo.is_some(), p.photo.is_some(), "{label}");
            for cap in std::iter::once(&c.generated).chain(&c.photo) {
                // Recomputed BLEU agrees with the report's.
                let b = roundtrip::metrics::captions::caption_bleu(&p.phrase, &cap.caption);
                assert_eq!(b.unsmoothed, cap.bleu.unsmoothed);
                assert_eq!(b.method1, cap.bleu.method1);
                assert!((-1.0..=1.0).contains(&cap.clip_text_similarity));
            }
        }
        if let Some(ph) = &p.photo {
            assert!(dir.join(&ph.file).is_file());
        }
    }
    assert_eq!((r.corpus.phrases, r.corpus.with_photo), (3, 2));
    for label in ["vgg16", "xception"] {
        let c = &r.corpus.captioners[label];
        assert_eq!(
            (
                c.generated.images,
                c.generated_with_photo.images,
                c.photo.images
            ),
            (3, 2, 2)
        );
        assert!(c.generated.distinct_captions >= 1 && c.generated.most_common_count >= 1);
        assert!(c.photo.bleu.method1[0] >= 0.0 && c.generated.bleu.unsmoothed[0] <= 1.0);
    }

    let got = golden_form(report);
    if std::env::var_os("ROUNDTRIP_BLESS").is_some() {
        std::fs::create_dir_all("results/golden").unwrap();
        let mut text = serde_json::to_string_pretty(&got).unwrap();
        text.push('\n');
        std::fs::write(GOLDEN, text).unwrap();
        panic!(
            "ROUNDTRIP_BLESS is set: {GOLDEN} was rewritten from this run, so nothing was \
             checked; review its diff, commit it, and rerun without ROUNDTRIP_BLESS"
        );
    }
    let want: Value = read_json(Path::new(GOLDEN));
    assert_close("report", &got, &want);
}

#[test]
fn the_gallery_is_self_contained_and_escaped() {
    let dir = complete_run();
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let doc = scraper::Html::parse_document(&html);
    assert!(doc.errors.is_empty(), "HTML parse errors: {:?}", doc.errors);
    let sel = |s: &str| scraper::Selector::parse(s).unwrap();
    let rows: Vec<_> = doc.select(&sel("table.phrases > tbody > tr")).collect();
    assert_eq!(rows.len(), 4);
    let first = rows[0].text().collect::<String>();
    assert!(first.contains("a red square"), "{first}");
    let imgs: Vec<_> = doc.select(&sel("img")).collect();
    assert_eq!(imgs.len(), 4 + 2, "four generated images and two photos");
    for i in &imgs {
        let src = i.value().attr("src").unwrap();
        assert!(
            src.starts_with("data:image/"),
            "{}",
            &src[..40.min(src.len())]
        );
    }
    assert_eq!(
        doc.select(&sel("svg polyline")).count(),
        4,
        "one chart per phrase"
    );
    assert_eq!(doc.select(&sel("script, link, iframe")).count(), 0);
    assert!(!html.contains("http://") && !html.contains("https://"));
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("| vgg16 | real photo | 2 |"), "{md}");
    assert!(md.contains("| xception | generated | 4 |"), "{md}");
}

#[test]
fn a_killed_run_resumes_to_the_same_report() {
    let want = without_timings(read_json(&complete_run().join("report.json")));
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    let args = run_args(PROMPTS, &out, &[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_roundtrip"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it as soon as the first phrase is finished: mid-way through the second.
    let t0 = Instant::now();
    let first = loop {
        let done: Vec<PathBuf> = std::fs::read_dir(out.join("phrases"))
            .map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        if let Some(p) = done
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "json"))
        {
            break p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no phrase finished"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the run finished before it was killed: make its phrases slower"
    );
    assert!(!out.join("report.json").exists());
    let before = std::fs::read(&first).unwrap();
    let stdout = ok(&run(PROMPTS, &out, &[]));
    let (computed, reused) = (count(&stdout, "computed"), count(&stdout, "reused"));
    assert!(
        reused >= 1 && computed >= 1 && computed + reused == 4,
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(&first).unwrap(),
        before,
        "the finished phrase is kept"
    );
    let got = without_timings(read_json(&out.join("report.json")));
    assert_eq!(got, want);
    // A third run has nothing left to do.
    let again = ok(&run(PROMPTS, &out, &[]));
    assert!(again.contains("computed 0\treused 4"), "{again}");
}

#[test]
fn shards_merge_to_the_single_run_report() {
    let whole = complete_run();
    let d = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    let mut counts = 0;
    for k in 1..=3 {
        let out = d.path().join(format!("shard{k}"));
        let stdout = ok(&run(PROMPTS, &out, &["--shard", &format!("{k}/3")]));
        counts += count(&stdout, "phrases");
        let shard_report = read_json(&out.join("report.json"));
        assert_eq!(shard_report["shard"], format!("{k}/3"));
        dirs.push(out.to_str().unwrap().to_owned());
    }
    assert_eq!(counts, 4, "the shards partition the phrases");

    let merged = d.path().join("merged");
    let missing = fails(&roundtrip(&[
        "merge",
        &dirs[0],
        &dirs[2],
        "--out",
        merged.to_str().unwrap(),
    ]));
    assert!(missing.contains("shards 2/3 are missing"), "{missing}");
    assert!(!merged.exists(), "nothing written on a refused merge");

    let mut args = vec!["merge"];
    args.extend(dirs.iter().map(String::as_str));
    args.extend(["--out", merged.to_str().unwrap()]);
    let stdout = ok(&roundtrip(&args));
    assert!(stdout.contains("phrases 4\tshards 3"), "{stdout}");
    assert_eq!(
        without_timings(read_json(&merged.join("report.json"))),
        without_timings(read_json(&whole.join("report.json")))
    );
    // The merged folder is a complete run: running it again recomputes nothing.
    let again = ok(&run(PROMPTS, &merged, &[]));
    assert!(again.contains("computed 0\treused 4"), "{again}");
}

#[test]
fn changed_settings_recompute_only_what_depends_on_them() {
    let d = tempfile::tempdir().unwrap();
    let prompts = d.path().join("p.txt");
    std::fs::write(&prompts, "a red <script>alert(1)</script> & \"square\"\n").unwrap();
    let p = prompts.to_str().unwrap();
    let out = d.path().join("run");
    ok(&run(p, &out, &["--steps", "2"]));
    // Other generator settings: the image is generated again, named on stderr.
    let o = run(p, &out, &["--steps", "3"]);
    let stdout = ok(&o);
    assert!(stdout.contains("computed 1\treused 0"), "{stdout}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("siren.steps: 2 -> 3"), "{err}");
    let fresh = d.path().join("fresh");
    ok(&run(p, &fresh, &["--steps", "3"]));
    let report = |dir: &Path| without_timings(read_json(&dir.join("report.json")));
    assert_eq!(report(&out), report(&fresh));
    // Another beam: the image is kept, the captions recomputed.
    let o = run(p, &out, &["--steps", "3", "--beam", "2"]);
    let stdout = ok(&o);
    assert!(
        stdout.contains("computed 0\treused 0\tupdated 1"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("beam: 1 -> 2"));
    // --force throws everything away.
    let stdout = ok(&run(p, &out, &["--steps", "3", "--force"]));
    assert!(stdout.contains("computed 1\treused 0"), "{stdout}");
    assert_eq!(report(&out), report(&fresh));

    // The phrase is text in the gallery, never markup.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let doc = scraper::Html::parse_document(&html);
    let script = scraper::Selector::parse("script").unwrap();
    assert_eq!(doc.select(&script).count(), 0);
    let td = scraper::Selector::parse("table.phrases td").unwrap();
    let cell: String = doc.select(&td).next().unwrap().text().collect();
    assert!(
        cell.starts_with("a red <script>alert(1)</script> & \"square\""),
        "{cell}"
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("a red &lt;script&gt;alert(1)&lt;/script&gt; &amp; \"square\""),
        "{md}"
    );
}

#[test]
fn bad_input_fails_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let o = out.as_path();
    let write = |name: &str, text: &[u8]| {
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let good = write("good.txt", b"a red square\n");

    let e = fails(&run("no/such/prompts.txt", o, &[]));
    assert!(e.contains("no/such/prompts.txt"), "{e}");
    let e = fails(&run(&write("empty.txt", b"# nothing\n\n"), o, &[]));
    assert!(e.contains("no phrases"), "{e}");
    let e = fails(&run(&write("photo.txt", b"a cat\tmissing.jpg\n"), o, &[]));
    assert!(
        e.contains("photo.txt:1") && e.contains("missing.jpg"),
        "{e}"
    );
    write("corrupt.jpg", b"not an image at all");
    let e = fails(&run(
        &write("corrupt.txt", b"\n\na cat\tcorrupt.jpg\n"),
        o,
        &[],
    ));
    assert!(
        e.contains("corrupt.txt:3") && e.contains("corrupt.jpg"),
        "{e}"
    );
    let e = fails(&run(&good, o, &["--captioners", "vgg16=tests/data"]));
    let first_line = e.lines().next().unwrap_or_default();
    assert!(
        first_line.contains("--captioners vgg16")
            && first_line.contains("tests/data")
            && first_line.contains("captioner"),
        "{e}"
    );
    let e = fails(&run(&write("words.txt", b"a cat\n!!!\n"), o, &[]));
    assert!(e.contains("words.txt:2") && e.contains("no word"), "{e}");
    let e = fails(&run(&good, o, &["--captioners", "vgg16"]));
    assert!(e.contains("LABEL=FOLDER"), "{e}");
    let e = fails(&run(&good, o, &["--shard", "3/2"]));
    assert!(e.contains("K/N"), "{e}");
    let e = fails(&run(&good, o, &["--steps", "0"]));
    assert!(e.contains("--steps"), "{e}");
    assert!(!o.exists(), "nothing written before validation passes");

    let file = write("a-file", b"");
    let e = fails(&run(&good, Path::new(&file).join("sub").as_path(), &[]));
    assert!(e.contains("a-file"), "{e}");

    // A hub model that is not in the offline cache.
    let args = run_args(&good, o, &["--clip", "nobody/no-such-clip"]);
    let out = Command::new(env!("CARGO_BIN_EXE_roundtrip"))
        .args(&args)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", d.path().join("hf"))
        .output()
        .unwrap();
    let e = fails(&out);
    assert!(e.contains("nobody/no-such-clip"), "{e}");
    assert!(!o.join("images").exists() && !o.join("report.json").exists());
}

#[test]
fn a_bracket_prefix_draws_that_line_with_biggan() {
    let dir = fixture().root.join("biggan");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let prompts = dir.join("p.txt");
    std::fs::write(&prompts, "a red circle\n[biggan] a blue square\n").unwrap();
    let out = dir.join("run");
    let p = prompts.to_str().unwrap();
    let extra = [
        "--biggan",
        "tests/fixtures/biggan_tiny",
        "--save-every",
        "0",
    ];
    ok(&run(p, &out, &extra));
    let mut recs: Vec<Value> = std::fs::read_dir(out.join("phrases"))
        .unwrap()
        .map(|e| read_json(&e.unwrap().path()))
        .collect();
    recs.sort_by_key(|r| r["phrase"].as_str().unwrap().to_owned());
    let got: Vec<(&str, &str, bool)> = recs
        .iter()
        .map(|r| {
            (
                r["phrase"].as_str().unwrap(),
                r["generator"].as_str().unwrap(),
                r.get("latents").is_some(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("a blue square", "biggan", true),
            ("a red circle", "siren", false)
        ]
    );
    assert!(out.join(recs[0]["latents"].as_str().unwrap()).is_file());
    assert_eq!(
        recs[0]["steps"].as_array().unwrap().len(),
        100,
        "BigGAN keeps its defaults"
    );
    assert_eq!(
        recs[1]["steps"].as_array().unwrap().len(),
        30,
        "--steps sets SIREN's"
    );
    let manifest = read_json(&out.join("run.json"));
    assert_eq!(
        manifest["settings"]["biggan"]["model"],
        "tests/fixtures/biggan_tiny"
    );
    assert_eq!(manifest["prompts"][1]["generator"], "biggan");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("siren (1), biggan (1)"),
        "the gallery names both generators"
    );
    // Resuming reuses both records; without any [biggan] line BigGAN is not recorded at all.
    assert_eq!(count(&ok(&run(p, &out, &extra)), "computed"), 0);
    let plain = read_json(&complete_run().join("run.json"));
    assert!(
        plain["settings"].get("biggan").is_none(),
        "{}",
        plain["settings"]
    );
    // Two shards merged: the BigGAN phrase's latents come along, and the merged folder resumes
    // with nothing to compute.
    let mut shards = Vec::new();
    for k in 1..=2 {
        let d = dir.join(format!("shard{k}"));
        let spec = format!("{k}/2");
        let mut e = extra.to_vec();
        e.extend(["--shard", spec.as_str()]);
        ok(&run(p, &d, &e));
        shards.push(d.to_str().unwrap().to_owned());
    }
    let merged = dir.join("merged");
    let mut args = vec!["merge"];
    args.extend(shards.iter().map(String::as_str));
    args.extend(["--out", merged.to_str().unwrap()]);
    ok(&roundtrip(&args));
    let id = recs[0]["id"].as_str().unwrap();
    let rec = read_json(&merged.join("phrases").join(format!("{id}.json")));
    assert!(merged.join(rec["latents"].as_str().unwrap()).is_file());
    assert_eq!(count(&ok(&run(p, &merged, &extra)), "computed"), 0);
}

#[test]
fn a_captioner_replaced_in_place_recaptions_the_kept_images() {
    let f = fixture();
    let d = tempfile::tempdir().unwrap();
    let cap = d.path().join("cap");
    crate::common::copy_dir(&f.root.join("vgg16"), &cap);
    let spec = format!("v={}", cap.display());
    let out = d.path().join("run");
    ok(&run(PROMPTS, &out, &["--captioners", &spec]));
    // The folder now holds another captioner: same path, other content.
    std::fs::remove_dir_all(&cap).unwrap();
    crate::common::copy_dir(&f.root.join("xception"), &cap);
    let o = run(PROMPTS, &out, &["--captioners", &spec]);
    let stdout = ok(&o);
    assert!(
        stdout.contains("computed 0\treused 0\tupdated 4"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("v captions recomputed (captioner"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let fresh = d.path().join("fresh");
    ok(&run(PROMPTS, &fresh, &["--captioners", &spec]));
    assert_eq!(
        without_timings(read_json(&out.join("report.json"))),
        without_timings(read_json(&fresh.join("report.json")))
    );
    let fp = |dir: &Path| {
        read_json(&dir.join("run.json"))["models"]["captioner:v"]["fingerprint"].clone()
    };
    assert!(fp(&out).is_string());
    assert_eq!(fp(&out), fp(&fresh));
}

#[test]
fn corrupt_or_missing_files_are_recomputed_with_a_note() {
    let want = without_timings(read_json(&complete_run().join("report.json")));
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    crate::common::copy_dir(complete_run(), &out);
    let report: Report = serde_json::from_value(read_json(&out.join("report.json"))).unwrap();
    let with_photo = report.phrases.iter().find(|p| p.photo.is_some()).unwrap();
    let other = report.phrases.iter().find(|p| p.photo.is_none()).unwrap();
    // A truncated generated image, a photo copy with other bytes, a garbage record, a frame
    // missing, and a temporary file a killed writer left.
    let image = out.join(&with_photo.image);
    let bytes = std::fs::read(&image).unwrap();
    std::fs::write(&image, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(
        out.join(&with_photo.photo.as_ref().unwrap().file),
        b"not the photo",
    )
    .unwrap();
    let third = report
        .phrases
        .iter()
        .find(|p| p.phrase != with_photo.phrase && p.phrase != other.phrase)
        .unwrap();
    let record = out
        .join("phrases")
        .join(format!("{}.json", roundtrip::run::phrase_id(&third.phrase)));
    std::fs::write(&record, b"{\"schema_version\": 2, \"id\": ").unwrap();
    std::fs::remove_file(out.join(&other.frames[0])).unwrap();
    let stale = out.join("phrases").join(".x.json.tmp4242");
    std::fs::write(&stale, b"").unwrap();

    let o = run(PROMPTS, &out, &[]);
    let stdout = ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(stdout.contains("computed 3\treused 1"), "{stdout}\n{err}");
    for what in [
        "does not match its recorded SHA-256",
        "is missing",
        "is unreadable",
        "removed 1 temporary file",
    ] {
        assert!(err.contains(what), "{what:?} not in: {err}");
    }
    assert!(!stale.exists());
    assert_eq!(without_timings(read_json(&out.join("report.json"))), want);
    // A photo copy alone is copied again, nothing else recomputed.
    std::fs::write(out.join(&with_photo.photo.as_ref().unwrap().file), b"x").unwrap();
    let o = run(PROMPTS, &out, &[]);
    assert!(ok(&o).contains("computed 0\treused 3\tupdated 1"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("photo copied again"));
    assert_eq!(without_timings(read_json(&out.join("report.json"))), want);
}

#[test]
fn one_writer_per_folder() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    let args = run_args(PROMPTS, &out, &[]);
    let mut first = Command::new(env!("CARGO_BIN_EXE_roundtrip"))
        .args(&args)
        .env("HF_HUB_OFFLINE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !out.join(".roundtrip.lock").exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "no lock taken");
        std::thread::sleep(Duration::from_millis(2));
    }
    let second = fails(&run(PROMPTS, &out, &["--force"]));
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first run finished before the second started: make its phrases slower"
    );
    assert!(
        second.contains(&out.display().to_string())
            && second.contains("in use")
            && second.contains(&format!("pid {}", first.id())),
        "{second}"
    );
    assert!(first.wait().unwrap().success());
    assert!(
        !out.join(".roundtrip.lock").exists(),
        "the lock file is removed"
    );
    assert_eq!(
        without_timings(read_json(&out.join("report.json"))),
        without_timings(read_json(&complete_run().join("report.json")))
    );
}

#[test]
fn a_folder_that_is_not_a_run_is_not_written_without_force() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("mine");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("report.md"), b"my own notes").unwrap();
    let prompts = d.path().join("p.txt");
    std::fs::write(&prompts, "a red square\n").unwrap();
    let p = prompts.to_str().unwrap();
    let e = fails(&run(p, &out, &["--steps", "2"]));
    assert!(
        e.contains("not empty") && e.contains("report.md") && e.contains("--force"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(out.join("report.md")).unwrap(),
        b"my own notes"
    );
    ok(&run(p, &out, &["--steps", "2", "--force"]));
    assert!(out.join("run.json").is_file());
}
