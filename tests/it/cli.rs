//! End-to-end tests of the `roundtrip` binary: outputs, exit codes and error messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::stderr;
use roundtrip::run::preset::Preset;
use serde::Deserialize;

/// The binary with no hub settings from the environment (the tests set their own).
fn roundtrip() -> Command {
    let mut c = crate::common::bin();
    c.env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HOME")
        .env_remove("HF_HUB_CACHE");
    c
}

fn run(args: &[&str]) -> Output {
    roundtrip().args(args).output().unwrap()
}

fn data(name: &str) -> String {
    format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The `bleu --json` object as a script would read it.
#[derive(Deserialize)]
struct BleuJson {
    bleu1: f64,
    bleu2: f64,
    bleu3: f64,
    bleu4: f64,
    precisions: Vec<Prec>,
    hyp_len: u64,
    ref_len: u64,
    brevity_penalty: f64,
    smooth: String,
    tokenize: String,
}

#[derive(Deserialize)]
struct Prec {
    order: usize,
    matched: u64,
    total: u64,
}

#[test]
fn bleu_json_reproduces_the_corpus_vector() {
    let (h, r1, r2, r3) = (
        data("bleu/hyps.txt"),
        data("bleu/refs1.txt"),
        data("bleu/refs2.txt"),
        data("bleu/refs3.txt"),
    );
    let o = run(&[
        "bleu",
        &h,
        &r1,
        &r2,
        &r3,
        "--json",
        "--tokenize",
        "whitespace",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        text.trim().lines().count(),
        1,
        "exactly one JSON object on one line"
    );
    let j: BleuJson = serde_json::from_str(&text).unwrap();
    let want = [
        0.9444444444444444,
        0.7934920476158722,
        0.5942756934710404,
        0.39077821812841235,
    ];
    for (g, w) in [j.bleu1, j.bleu2, j.bleu3, j.bleu4].iter().zip(want) {
        assert!((g - w).abs() < 1e-12, "{g} vs {w}");
    }
    let counts: Vec<_> = j
        .precisions
        .iter()
        .map(|p| (p.order, p.matched, p.total))
        .collect();
    assert_eq!(counts, [(1, 17, 18), (2, 10, 15), (3, 4, 12), (4, 1, 9)]);
    assert_eq!((j.hyp_len, j.ref_len, j.brevity_penalty), (18, 17, 1.0));
    assert_eq!(
        (j.smooth.as_str(), j.tokenize.as_str()),
        ("none", "whitespace")
    );
}

#[test]
fn bleu_caption_tokenizer_drops_short_words_and_smoothing_is_reported() {
    let o = run(&[
        "bleu",
        &data("bleu/hyps.txt"),
        &data("bleu/refs1.txt"),
        "--json",
        "--smooth",
        "method3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: BleuJson = serde_json::from_slice(&o.stdout).unwrap();
    // "a" is dropped by the caption normalisation: 15 hypothesis tokens, not 18.
    assert_eq!(
        (j.hyp_len, j.tokenize.as_str(), j.smooth.as_str()),
        (15, "caption", "method3")
    );
    assert!(j.bleu4 > 0.0 && j.bleu4 < j.bleu1);
}

fn tmp_file(dir: &Path, name: &str, body: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

#[test]
fn bleu_bad_input_exits_2_naming_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let h = tmp_file(d.path(), "h.txt", b"a dog\na cat\n");
    let cases = [
        (
            vec![h.clone(), d.path().join("none.txt").display().to_string()],
            "none.txt",
        ),
        (
            vec![h.clone(), tmp_file(d.path(), "short.txt", b"a dog\n")],
            "short.txt has 1 lines but",
        ),
        (
            vec![h.clone(), tmp_file(d.path(), "gap.txt", b"a dog\n\n")],
            "h.txt:2: hypothesis has no reference",
        ),
        (
            vec![h.clone(), tmp_file(d.path(), "bad.txt", b"ok\n\xff\n")],
            "bad.txt:2: invalid UTF-8",
        ),
        (
            vec![tmp_file(d.path(), "empty.txt", b""), h.clone()],
            "empty.txt: no hypotheses",
        ),
    ];
    for (files, want) in cases {
        let mut args = vec!["bleu".to_string()];
        args.extend(files);
        let o = roundtrip().args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{want:?} not in {}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
}

/// `roundtrip ARGS` with `stdin` piped in.
fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = roundtrip()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses its arguments exits without reading standard input: the pipe then
    // breaks, which is that command's business, not the test's.
    match std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.unwrap(),
    }
    child.wait_with_output().unwrap()
}

#[test]
fn bleu_reads_a_dash_from_standard_input() {
    let (h, r1, r2) = (
        data("bleu/hyps.txt"),
        data("bleu/refs1.txt"),
        data("bleu/refs2.txt"),
    );
    let files = run(&["bleu", &h, &r1, &r2, "--json"]);
    assert!(files.status.success(), "{}", stderr(&files));
    let hyps = std::fs::read(&h).unwrap();
    let o = run_with_stdin(&["bleu", "-", &r1, &r2, "--json"], &hyps);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, files.stdout);
    let o = run_with_stdin(
        &["bleu", &h, &r1, "-", "--json"],
        &std::fs::read(&r2).unwrap(),
    );
    assert_eq!(o.stdout, files.stdout, "{}", stderr(&o));

    // Twice `-`, and bad input on standard input: exit 2, naming it.
    let o = run_with_stdin(&["bleu", "-", "-"], &hyps);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("`-` (standard input) is given 2 times"),
        "{}",
        stderr(&o)
    );
    let o = run_with_stdin(&["bleu", "-", &r1], b"a dog\n\xff\n");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("<stdin>:2: invalid UTF-8"),
        "{}",
        stderr(&o)
    );
}

/// A `bleu --sentences --json` line.
#[derive(Deserialize)]
struct SentenceJson {
    line: usize,
    bleu1: f64,
    bleu2: f64,
    bleu3: f64,
    bleu4: f64,
    hyp_len: u64,
    ref_len: u64,
}

#[test]
fn bleu_sentences_prints_nltks_sentence_bleu_of_each_line() {
    use roundtrip::metrics::bleu::{sentence_bleu, Smoothing};
    use roundtrip::text::whitespace;

    let paths = [
        data("bleu/hyps.txt"),
        data("bleu/refs1.txt"),
        data("bleu/refs2.txt"),
        data("bleu/refs3.txt"),
    ];
    let lines = |p: &str| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let hyps = lines(&paths[0]);
    let refs: Vec<Vec<String>> = paths[1..].iter().map(|p| lines(p)).collect();
    let mut args = vec!["bleu"];
    args.extend(paths.iter().map(String::as_str));
    args.extend([
        "--tokenize",
        "whitespace",
        "--smooth",
        "method1",
        "--sentences",
    ]);

    let mut json = args.clone();
    json.push("--json");
    let o = run(&json);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    let got: Vec<SentenceJson> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), hyps.len(), "one line per sentence: {text}");
    for (i, g) in got.iter().enumerate() {
        let hyp = whitespace(&hyps[i]);
        let rs: Vec<Vec<String>> = refs.iter().map(|r| whitespace(&r[i])).collect();
        let want = sentence_bleu(&hyp, &rs, Smoothing::Method1);
        assert_eq!(g.line, i + 1);
        assert_eq!([g.bleu1, g.bleu2, g.bleu3, g.bleu4], want, "line {}", i + 1);
        assert_eq!(g.hyp_len, hyp.len() as u64);
        assert!(rs.iter().any(|r| r.len() as u64 == g.ref_len));
    }

    // The table: a header, then the same scores to 4 decimals, tab-separated.
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(
        rows[0],
        ["line", "bleu1", "bleu2", "bleu3", "bleu4", "hyp_len", "ref_len"]
    );
    assert_eq!(rows.len(), hyps.len() + 1, "{text}");
    for (row, g) in rows[1..].iter().zip(&got) {
        let want = [
            g.line.to_string(),
            format!("{:.4}", g.bleu1),
            format!("{:.4}", g.bleu2),
            format!("{:.4}", g.bleu3),
            format!("{:.4}", g.bleu4),
            g.hyp_len.to_string(),
            g.ref_len.to_string(),
        ];
        assert_eq!(*row, want);
    }
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(run(&["bleu", "only-hyps.txt"]).status.code(), Some(2));
    assert_eq!(
        run(&["bleu", "h", "r", "--smooth", "method9"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(run(&["no-such-command"]).status.code(), Some(2));
}

/// The help stands alone: `presets` prints each preset's values (table and JSON), `run --help`
/// points at it, `--help` ends with the exit codes and environment variables.
#[test]
fn presets_and_help_are_printed_with_exit_0() {
    let o = run(&["presets"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8(o.stdout).unwrap();
    let steps = table
        .lines()
        .find(|l| l.trim_start().starts_with("--steps"))
        .unwrap_or_else(|| panic!("no --steps row: {table}"));
    let (real, shapes) = (Preset::Real.defaults(), Preset::Shapes.defaults());
    assert_eq!(
        steps.split_whitespace().collect::<Vec<_>>(),
        [
            "--steps",
            &real.siren.steps.to_string(),
            &shapes.siren.steps.to_string(),
            &Preset::RealBlip.defaults().siren.steps.to_string()
        ]
    );
    assert!(
        table.contains(shapes.biggan.model.expect("the shapes BigGAN")),
        "{table}"
    );

    let o = run(&["presets", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[1]["name"], "shapes");
    assert_eq!(v[1]["siren"]["w0"], shapes.siren.w0);
    assert_eq!(v[1]["generators"], serde_json::json!(["siren", "biggan"]));
    assert_eq!(v[0]["generators"], serde_json::json!(["siren"]));

    let o = run(&["run", "--help"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let help = String::from_utf8(o.stdout).unwrap();
    assert!(
        help.contains("`roundtrip presets`") && help.contains("Scale-out:"),
        "{help}"
    );

    let o = run(&["--help"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let help = String::from_utf8(o.stdout).unwrap();
    assert!(
        help.contains("Exit codes:") && help.contains("HF_HUB_OFFLINE"),
        "{help}"
    );
}

#[test]
fn prompts_check_lists_phrases_and_rejects_bad_lines() {
    let seed = format!("{}/prompts/seed.txt", env!("CARGO_MANIFEST_DIR"));
    let o = run(&["prompts", "check", &seed]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.contains("10 phrases")
            && out.contains("1 pinned to one generator")
            && out.contains("two guys playing chess")
            && out.contains("[biggan] a macaw flying over a forest"),
        "{out}"
    );

    let d = tempfile::tempdir().unwrap();
    let bad = tmp_file(d.path(), "p.txt", b"a cat\n\tphoto.jpg\n");
    let o = run(&["prompts", "check", &bad]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("p.txt:2: empty phrase"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn broken_pipe_on_stdout_is_not_an_error() {
    let d = tempfile::tempdir().unwrap();
    let body: String = (0..20_000)
        .map(|i| format!("phrase number {i}\n"))
        .collect();
    let p = tmp_file(d.path(), "many.txt", body.as_bytes());
    let mut child = roundtrip()
        .args(["prompts", "check", &p])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
}

/// A hub cache in Python's layout: models--org--name/refs/REV and snapshots/COMMIT/FILE.
fn fake_hub(home: &Path, repo: &str, commit: &str, files: &[&str]) -> PathBuf {
    let dir = home
        .join("hub")
        .join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(dir.join("refs")).unwrap();
    std::fs::write(dir.join("refs/main"), commit).unwrap();
    let snap = dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    for f in files {
        std::fs::write(snap.join(f), "{}").unwrap();
    }
    snap
}

#[derive(Deserialize)]
struct Resolved {
    model: Record,
    files: std::collections::HashMap<String, String>,
}

#[derive(Deserialize)]
struct Record {
    source: String,
    repo: Option<String>,
    revision: Option<String>,
    commit: Option<String>,
}

#[test]
fn models_resolve_reads_the_hub_cache_under_hf_home_offline() {
    let home = tempfile::tempdir().unwrap();
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    let snap = fake_hub(
        home.path(),
        "org/tiny-clip",
        commit,
        &["config.json", "model.safetensors"],
    );
    let o = roundtrip()
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", "http://127.0.0.1:9") // never contacted
        .args([
            "models",
            "resolve",
            "org/tiny-clip",
            "--file",
            "config.json",
            "--file",
            "model.safetensors",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Resolved = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r.model.source, "hub");
    assert_eq!(r.model.repo.as_deref(), Some("org/tiny-clip"));
    assert_eq!(r.model.revision.as_deref(), Some("main"));
    assert_eq!(r.model.commit.as_deref(), Some(commit));
    assert_eq!(
        PathBuf::from(&r.files["config.json"]),
        snap.join("config.json")
    );

    let o = roundtrip()
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .args([
            "models",
            "resolve",
            "org/tiny-clip",
            "--file",
            "tokenizer.json",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    for part in [
        "org/tiny-clip",
        "tokenizer.json",
        "HF_HUB_OFFLINE",
        "network",
        "folder",
    ] {
        assert!(e.contains(part), "{part:?} not in {e}");
    }
}

#[test]
fn models_resolve_accepts_a_folder() {
    let d = tempfile::tempdir().unwrap();
    tmp_file(d.path(), "config.json", b"{}");
    let o = run(&["models", "resolve", &d.path().display().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Resolved = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r.model.source, "folder");
    let o = run(&["models", "resolve", "./no/such/model"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("does not exist"));
}

/// `--device` on every command that runs a model: a bad name is a usage error, and a GPU this
/// build was not compiled for is an input error that says how to build it (CI builds the CPU
/// path only).
#[test]
fn device_flag_is_checked_on_every_model_command() {
    let commands: [&[&str]; 8] = [
        &["run", "p.txt", "--out", "o"],
        &["generate", "a cat", "--out", "o"],
        &["features", "--weights", "w", "--text", "a"],
        &[
            "train",
            "--encoder",
            "vgg16",
            "--dataset",
            "d",
            "--out",
            "o",
        ],
        &["eval", "--captioner", "c", "--dataset", "d"],
        &["caption", "--captioner", "c", "x.png"],
        &["train-clip", "--dataset", "d", "--out", "o"],
        &["eval-clip", "--clip", "c", "--dataset", "d"],
    ];
    for args in commands {
        let o = run(&[args, &["--device", "gpu"]].concat());
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("expected cpu, cuda, metal or auto"),
            "{args:?}"
        );
        if cfg!(not(any(feature = "cuda", feature = "metal"))) {
            let o = run(&[args, &["--device", "cuda"]].concat());
            assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
            assert!(
                stderr(&o).contains("--features cuda"),
                "{args:?}: {}",
                stderr(&o)
            );
        }
    }
}

/// The memory bound the tests fix (`ROUNDTRIP_MEMORY_LIMIT`, bytes): 16 GiB.
const MEMORY_16_GIB: &str = "17179869184";

/// `roundtrip ARGS` with the machine's memory taken as `memory` bytes, killed after `secs`
/// seconds (where a bound is missing, some of these inputs run for ever instead of failing).
fn run_bounded(args: &[&str], memory: &str, secs: u64) -> Output {
    let mut child = roundtrip()
        .env("ROUNDTRIP_MEMORY_LIMIT", memory)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() && t0.elapsed().as_secs() < secs {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

/// Exit 2, naming the setting, the estimate and the machine's memory.
fn refused_for_memory(o: &Output, setting: &str, memory: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{setting}: {e}");
    let want = format!("more than this machine's {memory}");
    assert!(
        e.contains(setting) && e.contains("of memory") && e.contains("needs about"),
        "{setting} not named with an estimate in: {e}"
    );
    assert!(e.contains(&want), "{want:?} not in: {e}");
}

/// Settings too large for the machine, each with the setting its refusal names. `--layers` goes
/// with an absurd `--hidden`, so that without the bound it fails at once (an allocation abort)
/// instead of building layers until the machine runs out of memory.
const TOO_MUCH: [(&[&str], &str); 4] = [
    (&["--size", "1000000"], "--size 1000000"),
    (&["--cutouts", "1000000000000"], "--cutouts 1000000000000"),
    (&["--hidden", "10000000000"], "--hidden 10000000000"),
    (
        &["--layers", "1000000000000", "--hidden", "10000000000"],
        "--layers 1000000000000",
    ),
];

#[test]
fn run_refuses_settings_beyond_the_memory_before_writing_anything() {
    let d = tempfile::tempdir().unwrap();
    let prompts = tmp_file(d.path(), "p.txt", b"a big red circle in the middle\n");
    for (flags, setting) in TOO_MUCH {
        let out = d.path().join("R");
        let mut args = vec![
            "run",
            &prompts,
            "--out",
            out.to_str().unwrap(),
            "--preset",
            "shapes",
            "--quiet",
        ];
        args.extend(flags);
        let o = run_bounded(&args, MEMORY_16_GIB, 120);
        refused_for_memory(&o, setting, "16.0 GiB");
        assert!(!out.exists(), "{setting}: {} was created", out.display());
    }
}

/// `run` bounds the cutouts with the guiding CLIP's config and the beam with the captioners'
/// vocabularies, before its folder exists.
#[test]
fn run_bounds_cutouts_and_beams_with_the_models_configs() {
    let d = tempfile::tempdir().unwrap();
    let prompts = tmp_file(d.path(), "p.txt", b"a big red circle in the middle\n");
    let out = d.path().join("R");
    let base = [
        "run",
        prompts.as_str(),
        "--out",
        out.to_str().unwrap(),
        "--preset",
        "shapes",
        "--quiet",
    ];
    let with = |extra: &[&'static str]| {
        let mut a = base.to_vec();
        a.extend(extra);
        a
    };
    let o = run_bounded(&with(&["--cutouts", "1000"]), "536870912", 120);
    refused_for_memory(&o, "--cutouts 1000", "512.0 MiB");
    assert!(!out.exists());
    let o = run_bounded(&with(&["--beam", "1000000000"]), MEMORY_16_GIB, 120);
    refused_for_memory(&o, "--beam 1000000000", "16.0 GiB");
    assert!(!out.exists());
}

#[test]
fn generate_refuses_settings_beyond_the_memory_before_writing_anything() {
    let d = tempfile::tempdir().unwrap();
    let clip = format!("{}/tests/fixtures/clip_tiny", env!("CARGO_MANIFEST_DIR"));
    for (flags, setting) in TOO_MUCH {
        let out = d.path().join("R");
        let mut args = vec![
            "generate",
            "a red circle",
            "--out",
            out.to_str().unwrap(),
            "--clip",
            &clip,
            "--steps",
            "1",
            "--quiet",
        ];
        args.extend(flags);
        let o = run_bounded(&args, MEMORY_16_GIB, 120);
        refused_for_memory(&o, setting, "16.0 GiB");
        assert!(!out.exists(), "{setting}: {} was created", out.display());
    }
}

/// `generate` bounds the cutouts with the guiding CLIP's own per-cutout cost (its config.json),
/// before anything is written: 1000 cutouts of the shapes CLIP (64 px input, about 0.75 MB each)
/// do not fit in 512 MiB, though they pass the model-free check; 8 do, and run.
#[test]
fn generate_bounds_cutouts_with_the_clips_config() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("R");
    let clip = format!("{}/models/shapes/clip", env!("CARGO_MANIFEST_DIR"));
    let args = |cutouts: &'static str| {
        vec![
            "generate".to_string(),
            "a red circle".into(),
            "--out".into(),
            out.display().to_string(),
            "--clip".into(),
            clip.clone(),
            "--size".into(),
            "32".into(),
            "--layers".into(),
            "3".into(),
            "--hidden".into(),
            "32".into(),
            "--steps".into(),
            "1".into(),
            "--cutouts".into(),
            cutouts.into(),
            "--quiet".into(),
        ]
    };
    let memory = (512u64 << 20).to_string();
    let many = args("1000");
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let o = run_bounded(&many, &memory, 300);
    refused_for_memory(&o, "--cutouts 1000", "512.0 MiB");
    assert!(!out.exists(), "{} was created", out.display());

    let few = args("8");
    let few: Vec<&str> = few.iter().map(String::as_str).collect();
    let o = run_bounded(&few, &memory, 300);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("a-red-circle.png").is_file());
}

fn caption(beam: &str) -> Output {
    let root = env!("CARGO_MANIFEST_DIR");
    let captioner = format!("{root}/models/shapes/vgg16");
    let image = format!("{root}/prompts/shapes/a-big-blue-square-on-the-left.png");
    run_bounded(
        &["caption", "--captioner", &captioner, "--beam", beam, &image],
        MEMORY_16_GIB,
        60,
    )
}

#[test]
fn caption_refuses_beam_zero_and_beams_beyond_the_memory() {
    let o = caption("0");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--beam must be at least 1 (1 is greedy decoding)"),
        "{}",
        stderr(&o)
    );
    assert!(o.stdout.is_empty());

    // A billion-wide beam over the shapes vocabulary (31 words): about 7 TiB of candidates.
    let o = caption("1000000000");
    refused_for_memory(&o, "--beam 1000000000", "16.0 GiB");
    assert!(o.stdout.is_empty());

    let o = caption("3");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("a-big-blue-square-on-the-left.png\t"), "{out}");
}

/// The `score --json` object as a script would read it: every key, nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreJson {
    hyps: String,
    sentences: usize,
    reference_streams: usize,
    tokenize: String,
    bleu1: Option<f64>,
    bleu2: Option<f64>,
    bleu3: Option<f64>,
    bleu4: Option<f64>,
    coco_bleu1: Option<f64>,
    coco_bleu2: Option<f64>,
    coco_bleu3: Option<f64>,
    coco_bleu4: Option<f64>,
    cider_d: Option<f64>,
    rouge_l: Option<f64>,
}

#[test]
fn score_prints_every_caption_metric_as_pycocoevalcap_computes_it() {
    let paths = [
        data("bleu/hyps.txt"),
        data("bleu/refs1.txt"),
        data("bleu/refs2.txt"),
        data("bleu/refs3.txt"),
    ];
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v = vec!["score".to_string()];
        v.extend(paths.iter().cloned());
        v.extend(["--tokenize".into(), "whitespace".into()]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let o = roundtrip().args(args(&["--json"])).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let s: ScoreJson = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (s.hyps.as_str(), s.sentences, s.reference_streams),
        (paths[0].as_str(), 3, 3)
    );
    assert_eq!(s.tokenize, "whitespace");
    // pycocoevalcap 1.2's Bleu(4), Cider() and Rouge() of these files, split on whitespace.
    let close = |got: Option<f64>, want: f64| {
        let g = got.unwrap();
        assert!((g - want).abs() <= 1e-12, "{g} vs pycocoevalcap {want}");
    };
    close(s.coco_bleu1, 0.9444444443919753);
    close(s.coco_bleu2, 0.7934920475673811);
    close(s.coco_bleu3, 0.5942756934303216);
    close(s.coco_bleu4, 0.3907782180974759);
    close(s.cider_d, 2.323283203034752);
    close(s.rouge_l, 0.718440463645943);
    // nltk's BLEU: `bleu`'s.
    let b = run(&[
        "bleu",
        &paths[0],
        &paths[1],
        &paths[2],
        &paths[3],
        "--tokenize",
        "whitespace",
        "--json",
    ]);
    let b: BleuJson = serde_json::from_slice(&b.stdout).unwrap();
    assert_eq!(
        [s.bleu1, s.bleu2, s.bleu3, s.bleu4].map(Option::unwrap),
        [b.bleu1, b.bleu2, b.bleu3, b.bleu4]
    );

    // The line: the hypotheses' file, then `key value` pairs; metrics left out are left out.
    let o = roundtrip()
        .args(args(&["--metrics", "cider-d,rouge-l"]))
        .output()
        .unwrap();
    let line = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        line,
        format!(
            "{}\tsentences 3\treference streams 3\ttokenize whitespace\tcider d 2.3233\trouge l 0.7184\n",
            paths[0]
        )
    );
    let o = roundtrip()
        .args(args(&["--metrics", "rouge-l", "--json"]))
        .output()
        .unwrap();
    let s: ScoreJson = serde_json::from_slice(&o.stdout).unwrap();
    assert!(s.bleu1.is_none() && s.coco_bleu4.is_none() && s.cider_d.is_none());
    close(s.rouge_l, 0.718440463645943);

    // Per sentence: a header, one line each; with --json the full values, CIDEr-D with the
    // corpus' document frequencies (pycocoevalcap's per-image scores).
    let o = roundtrip().args(args(&["--sentences"])).output().unwrap();
    let text = String::from_utf8(o.stdout).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(
        rows[0],
        "line\tbleu1\tbleu2\tbleu3\tbleu4\tcoco_bleu1\tcoco_bleu2\tcoco_bleu3\tcoco_bleu4\tcider_d\trouge_l"
    );
    assert_eq!(
        rows[1],
        "1\t1.0000\t0.8944\t0.7368\t0.0000\t1.0000\t0.8944\t0.7368\t0.0001\t2.5321\t0.6963"
    );
    assert_eq!(rows.len(), 4);
    let o = roundtrip()
        .args(args(&["--sentences", "--json"]))
        .output()
        .unwrap();
    let per: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want_cider = [2.532056496486769, 3.23747962575004, 1.2003134868674485];
    let want_rouge = [0.6963470319634703, 0.8333333333333334, 0.6256410256410255];
    let want_coco4 = [
        0.00010745699313892367,
        0.604275079227126,
        1.2909944484291946e-08,
    ];
    for (i, p) in per.iter().enumerate() {
        assert_eq!(p["line"], i + 1);
        assert!((p["cider_d"].as_f64().unwrap() - want_cider[i]).abs() < 1e-12);
        assert!((p["rouge_l"].as_f64().unwrap() - want_rouge[i]).abs() < 1e-12);
        assert!((p["coco_bleu4"].as_f64().unwrap() - want_coco4[i]).abs() < 1e-15);
    }
}

#[test]
fn score_reads_files_as_bleu_does_and_names_bad_input() {
    let (h, r1) = (data("bleu/hyps.txt"), data("bleu/refs1.txt"));
    let files = run(&["score", &h, &r1, "--json"]);
    assert!(files.status.success(), "{}", stderr(&files));
    let o = run_with_stdin(&["score", "-", &r1, "--json"], &std::fs::read(&h).unwrap());
    assert!(o.status.success(), "{}", stderr(&o));
    // The same object but for the hypotheses' name.
    let a: ScoreJson = serde_json::from_slice(&files.stdout).unwrap();
    let b: ScoreJson = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (a.cider_d, a.rouge_l, a.bleu4),
        (b.cider_d, b.rouge_l, b.bleu4)
    );
    assert_eq!((a.tokenize.as_str(), b.hyps.as_str()), ("caption", "-"));

    let d = tempfile::tempdir().unwrap();
    let hf = tmp_file(d.path(), "h.txt", b"a dog\na cat\n");
    let gap = tmp_file(d.path(), "gap.txt", b"a dog\n\n");
    for (args, want) in [
        (
            vec!["score", &hf, &gap],
            "h.txt:2: hypothesis has no reference",
        ),
        (
            vec!["score", &hf, &hf, "--metrics", "bleu,meteor"],
            "unknown metric `meteor`",
        ),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{want:?} not in {}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
}
