//! Redraw, re-render, compare: `generate --like RUN_DIR PHRASE` draws a run's image again byte
//! for byte, `report RUN_DIR` writes the report again from the records, `compare RUN_DIR...`
//! puts runs side by side (read back into the test's own types), and run.json's provenance,
//! which a rerun does not count as a change. Fast settings: the shipped shapes models, 3 steps.

use super::*;
use crate::common::fails_with;
use serde_json::json;

/// Two runs of the golden prompts differing only in the seed (0, 1), made once.
fn seed_runs() -> &'static [PathBuf; 2] {
    static R: OnceLock<[PathBuf; 2]> = OnceLock::new();
    R.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("redraw");
        let _ = std::fs::remove_dir_all(&root);
        [0, 1].map(|seed| {
            let out = root.join(format!("seed{seed}"));
            let stdout = ok(&roundtrip_owned(&shapes_run_args(&out, seed, &[])));
            assert!(stdout.contains("phrases 3\tcomputed 3"), "{stdout}");
            out
        })
    })
}

fn shapes_run_args(out: &Path, seed: u64, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "run",
        GOLDEN_PROMPTS,
        "--preset",
        "shapes",
        "--generator",
        "siren",
        "--steps",
        "3",
        "--save-every",
        "2",
        "--quiet",
        "--seed",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(seed.to_string());
    v.push("--out".into());
    v.push(out.display().to_string());
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// [`roundtrip`] with owned arguments.
fn roundtrip_owned(args: &[String]) -> Output {
    roundtrip(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A copy of a run folder (what a user moving it would have).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// `generate --like`'s output line: image, record, similarity, seed, run image.
fn redraw(run: &Path, phrase: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "generate",
        "--like",
        run.to_str().unwrap(),
        phrase,
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    args.extend(extra);
    roundtrip(&args)
}

#[test]
fn generate_like_redraws_a_runs_image_byte_for_byte() {
    let run = &seed_runs()[0];
    let r: Report = serde_json::from_value(read_json(&run.join("report.json"))).unwrap();
    let d = tempfile::tempdir().unwrap();
    for p in &r.phrases {
        let stdout = ok(&redraw(run, &p.phrase, d.path(), &[]));
        let fields: Vec<&str> = stdout.trim_end().split('\t').collect();
        assert_eq!(fields.len(), 5, "{stdout}");
        assert_eq!(fields[3], format!("seed {}", p.seed));
        assert_eq!(p.seed, roundtrip::run::phrase_seed(0, &p.phrase));
        assert_eq!(fields[4], "run image same", "{stdout}");
        assert_eq!(
            std::fs::read(fields[0]).unwrap(),
            std::fs::read(run.join(&p.image)).unwrap(),
            "{}: the PNG is the run's",
            p.phrase
        );
        // The run's frame interval too: a frame at step 2 of 3.
        let record = read_json(Path::new(fields[1].strip_prefix("record ").unwrap()));
        assert_eq!(record["frames"].as_array().unwrap().len(), 1, "{record}");
        assert_eq!(record["settings"]["steps"], 3);
    }
    // --json: one object with the line's keys; the record names the device in lower case.
    let p = &r.phrases[0];
    let v: serde_json::Value = serde_json::from_str(&ok(&redraw(
        run,
        &p.phrase,
        d.path(),
        &["--json", "--force"],
    )))
    .unwrap();
    assert_eq!(
        (&v["seed"], &v["run_image"]),
        (&json!(p.seed), &json!("same")),
        "{v}"
    );
    assert!(v["similarity"].as_f64().is_some(), "{v}");
    let record = read_json(Path::new(v["record"].as_str().unwrap()));
    assert_eq!(record["device"], "cpu", "{record}");
    // An option given overrides the run's value: another image, said so.
    let phrase = &r.phrases[0].phrase;
    let o = redraw(run, phrase, d.path(), &["--steps", "4", "--force"]);
    assert!(ok(&o).trim_end().ends_with("\trun image differs"));
    assert!(crate::common::stderr(&o).contains("differs from the run's"));

    // Bad input: named, exit 2.
    fails_with(
        &redraw(run, "a purple circle", d.path(), &["--force"]),
        &["`a purple circle` is not a phrase of the run", "run.json"],
    );
    fails_with(
        &redraw(run, phrase, d.path(), &["--generator", "biggan"]),
        &["--generator biggan", "with siren only"],
    );
    fails_with(
        &redraw(d.path(), phrase, d.path(), &[]),
        &["is not a run folder: it has no run.json"],
    );
    fails_with(
        &redraw(run, phrase, d.path(), &["--preset", "shapes"]),
        &["--preset"],
    );
}

/// A run of one phrase drawn by SIREN (3 steps) and BigGAN (the tiny fixture, the preset's
/// steps): the second generator's image has a seed of its own, and `--generator` picks it.
#[test]
fn generate_like_picks_a_generator_of_a_several_generator_run() {
    let d = tempfile::tempdir().unwrap();
    let prompts = d.path().join("p.txt");
    std::fs::write(&prompts, "a red circle\n").unwrap();
    let run = d.path().join("run");
    let args = [
        "run",
        prompts.to_str().unwrap(),
        "--preset",
        "shapes",
        "--generators",
        "siren,biggan",
        "--biggan",
        "tests/fixtures/biggan_tiny",
        "--steps",
        "3",
        "--save-every",
        "0",
        "--quiet",
        "--seed",
        "5",
        "--out",
        run.to_str().unwrap(),
    ];
    ok(&roundtrip(&args));
    let r: Report = serde_json::from_value(read_json(&run.join("report.json"))).unwrap();
    let biggan = r.phrases.iter().find(|p| p.generator == "biggan").unwrap();
    let out = d.path().join("redrawn");
    let stdout = ok(&redraw(
        &run,
        "a red circle",
        &out,
        &["--generator", "biggan"],
    ));
    assert!(
        stdout.contains(&format!("\tseed {}\t", biggan.seed)),
        "{stdout}"
    );
    assert_ne!(biggan.seed, roundtrip::run::phrase_seed(5, "a red circle"));
    assert!(stdout.trim_end().ends_with("\trun image same"), "{stdout}");
    assert_eq!(
        std::fs::read(out.join("a-red-circle.png")).unwrap(),
        std::fs::read(run.join(&biggan.image)).unwrap()
    );
}

#[test]
fn report_rewrites_the_report_from_the_records() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    copy_dir(&seed_runs()[0], &run);
    let before = std::fs::read(run.join("report.json")).unwrap();
    for f in ["report.json", "report.csv", "report.html", "report.md"] {
        std::fs::remove_file(run.join(f)).unwrap();
    }
    let stdout = ok(&roundtrip(&["report", run.to_str().unwrap(), "--quiet"]));
    assert!(
        stdout.ends_with("report.json\tphrases 3\timages 3\tunfinished 0\n"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(run.join("report.json")).unwrap(),
        before,
        "the same report, byte for byte"
    );
    for f in ["report.csv", "report.html", "report.md"] {
        assert!(run.join(f).is_file(), "{f}");
    }
    // --json: the line's keys, the same values.
    let v: serde_json::Value = serde_json::from_str(&ok(&roundtrip(&[
        "report",
        run.to_str().unwrap(),
        "--quiet",
        "--json",
    ])))
    .unwrap();
    assert_eq!(
        (&v["phrases"], &v["images"], &v["unfinished"]),
        (&json!(3), &json!(3), &json!(0)),
        "{v}"
    );
    assert!(
        v["report"].as_str().unwrap().ends_with("report.json"),
        "{v}"
    );
    assert!(!run.join(roundtrip::lock::LOCK_FILE).exists());

    // An image without its record: refused, or with --partial the others reported.
    let r: Report = serde_json::from_slice(&before).unwrap();
    std::fs::remove_file(
        run.join("phrases")
            .join(format!("{}.json", r.phrases[1].id)),
    )
    .unwrap();
    fails_with(
        &roundtrip(&["report", run.to_str().unwrap()]),
        &[
            "1 of 3 images are not finished",
            &r.phrases[1].phrase,
            "it has no record",
            "--partial",
        ],
    );
    let o = roundtrip(&["report", run.to_str().unwrap(), "--partial"]);
    assert!(ok(&o).contains("\tphrases 3\timages 2\tunfinished 1"));
    assert!(crate::common::stderr(&o).contains("covers 2 of 3 images"));
    let partial: Report = serde_json::from_value(read_json(&run.join("report.json"))).unwrap();
    assert_eq!(partial.phrases.len(), 2);

    fails_with(
        &roundtrip(&["report", d.path().join("nothing").to_str().unwrap()]),
        &["nothing is not a run folder: it does not exist"],
    );
}

/// Removes every `key` from a JSON value, at any depth.
fn strip_key(v: &mut Value, key: &str) {
    match v {
        Value::Object(m) => {
            m.remove(key);
            m.values_mut().for_each(|x| strip_key(x, key));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| strip_key(x, key)),
        _ => {}
    }
}

#[test]
fn a_folder_from_before_report_schema_6_is_compared_and_reported_again() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    copy_dir(&seed_runs()[0], &run);
    let new = read_json(&run.join("report.json"));
    // What schema 5 wrote: no ROUGE-L in the records, no CIDEr-D or ROUGE-L in the report.
    for e in std::fs::read_dir(run.join("phrases")).unwrap() {
        let path = e.unwrap().path();
        let mut rec = read_json(&path);
        strip_key(&mut rec, "rouge_l");
        std::fs::write(&path, serde_json::to_vec_pretty(&rec).unwrap()).unwrap();
    }
    let mut old = new.clone();
    strip_key(&mut old, "rouge_l");
    strip_key(&mut old, "cider_d");
    old["schema_version"] = json!(5);
    std::fs::write(
        run.join("report.json"),
        serde_json::to_vec_pretty(&old).unwrap(),
    )
    .unwrap();
    // compare reads it, the new figures absent.
    let c: Comparison = serde_json::from_str(&ok(&roundtrip(&[
        "compare",
        run.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    assert!(!c.corpus.is_empty());
    assert!(c
        .corpus
        .iter()
        .all(|r| r.cider_d.is_none() && r.rouge_l.is_none()));
    let text = ok(&roundtrip(&["compare", run.to_str().unwrap()]));
    assert!(text.contains("CIDEr-D"), "{text}");
    // report computes them from the records' captions: the report a new run writes.
    ok(&roundtrip(&["report", run.to_str().unwrap(), "--quiet"]));
    assert_eq!(
        without_timings(read_json(&run.join("report.json"))),
        without_timings(new)
    );
}

/// `compare --json` as a script reads it.
#[derive(serde::Deserialize)]
struct Comparison {
    schema_version: u32,
    runs: Vec<CompareRun>,
    differences: Vec<Difference>,
    corpus: Vec<Row>,
}

#[derive(serde::Deserialize)]
struct CompareRun {
    folder: String,
    phrases: usize,
    images: usize,
    provenance: Option<Provenance>,
}

#[derive(serde::Deserialize)]
struct Provenance {
    command_line: Vec<String>,
    started: String,
    tool: Tool,
}

#[derive(serde::Deserialize)]
struct Tool {
    name: String,
    version: String,
    git_commit: Option<String>,
    git_dirty: Option<bool>,
}

#[derive(serde::Deserialize)]
struct Difference {
    setting: String,
    values: Vec<Value>,
}

#[derive(serde::Deserialize)]
struct Row {
    run: usize,
    generator: Option<String>,
    captioner: String,
    images: String,
    n: usize,
    bleu: Bleu,
    /// `null` only for a report before schema 6.
    cider_d: Option<f64>,
    rouge_l: Option<f64>,
    clip_text_similarity: f64,
    clip_score: Option<f64>,
}

#[test]
fn compare_puts_two_seeds_side_by_side() {
    let [a, b] = seed_runs();
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let d = tempfile::tempdir().unwrap();
    let page = d.path().join("compare.html");
    let c: Comparison = serde_json::from_str(&ok(&roundtrip(&[
        "compare",
        a,
        b,
        "--json",
        "--html",
        page.to_str().unwrap(),
    ])))
    .unwrap();
    assert_eq!(c.schema_version, 1);
    assert_eq!(
        c.runs.iter().map(|r| r.folder.as_str()).collect::<Vec<_>>(),
        [a, b]
    );
    assert!(c.runs.iter().all(|r| (r.phrases, r.images) == (3, 3)));
    let p = c.runs[1].provenance.as_ref().unwrap();
    assert_eq!(p.command_line[1..], shapes_run_args(Path::new(b), 1, &[]));
    // The only setting that differs is the seed.
    assert_eq!(c.differences.len(), 1);
    assert_eq!(c.differences[0].setting, "seed");
    assert_eq!(c.differences[0].values, [json!(0), json!(1)]);

    // Per generator x captioner x images, each run's figures, those of its report.
    let reports: Vec<Report> = [a, b]
        .iter()
        .map(|r| serde_json::from_value(read_json(&Path::new(r).join("report.json"))).unwrap())
        .collect();
    let kinds: Vec<(Option<&str>, &str, &str, usize)> = c
        .corpus
        .iter()
        .map(|r| {
            (
                r.generator.as_deref(),
                r.captioner.as_str(),
                r.images.as_str(),
                r.run,
            )
        })
        .collect();
    let mut want = Vec::new();
    for captioner in ["vgg16", "xception"] {
        for images in ["generated", "generated_with_photo"] {
            for run in 0..2 {
                want.push((Some("siren"), captioner, images, run));
            }
        }
    }
    for captioner in ["vgg16", "xception"] {
        for run in 0..2 {
            want.push((None, captioner, "photo", run));
        }
    }
    assert_eq!(kinds, want);
    for row in &c.corpus {
        let corpus = &reports[row.run].corpus;
        let figures = match (row.generator.as_deref(), row.images.as_str()) {
            (Some(g), "generated") => {
                Some(&corpus.generators[g].captioners[&row.captioner].generated)
            }
            (Some(g), _) => corpus.generators[g].captioners[&row.captioner]
                .generated_with_photo
                .as_ref(),
            (None, _) => corpus.photo.captioners[&row.captioner].as_ref(),
        }
        .unwrap();
        assert_eq!(
            (row.n, row.bleu.unsmoothed),
            (figures.images, figures.bleu.unsmoothed)
        );
        assert_eq!(
            (row.cider_d, row.rouge_l),
            (Some(figures.cider_d), Some(figures.rouge_l))
        );
        assert!((-1.0..=1.0).contains(&row.clip_text_similarity));
        assert!(row.clip_score.is_some());
    }

    // The text: the seed row, a corpus row per run.
    let text = ok(&roundtrip(&["compare", a, b]));
    assert!(text.contains("settings that differ\n"), "{text}");
    let seed_row = text
        .lines()
        .find(|l| l.trim_start().starts_with("seed "))
        .unwrap();
    assert_eq!(
        seed_row.split_whitespace().collect::<Vec<_>>(),
        ["seed", "0", "1"]
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.trim_start().starts_with("siren "))
            .count(),
        8,
        "{text}"
    );
    // The page: three tables, the seed among the settings.
    let html = scraper::Html::parse_document(&std::fs::read_to_string(&page).unwrap());
    let tables = scraper::Selector::parse("table").unwrap();
    assert_eq!(html.select(&tables).count(), 3);
    let cells = scraper::Selector::parse("td code").unwrap();
    assert!(html
        .select(&cells)
        .any(|c| c.text().collect::<String>() == "seed"));

    // A folder that is not a run: named, with the missing file.
    let empty = d.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails_with(
        &roundtrip(&["compare", a, empty.to_str().unwrap()]),
        &["empty is not a finished run folder: it has no run.json"],
    );
    std::fs::copy(Path::new(a).join("run.json"), empty.join("run.json")).unwrap();
    fails_with(
        &roundtrip(&["compare", a, empty.to_str().unwrap()]),
        &[
            "empty is not a finished run folder: it has no report.json",
            "--partial",
        ],
    );
    fails_with(
        &roundtrip(&["compare", a, d.path().join("nothing").to_str().unwrap()]),
        &["nothing is not a run folder: it does not exist"],
    );
}

#[test]
fn run_json_records_provenance_and_a_rerun_still_reuses_everything() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    copy_dir(&seed_runs()[1], &run);
    let first = read_json(&run.join("run.json"));
    let p: Provenance = serde_json::from_value(first["provenance"].clone()).unwrap();
    assert_eq!(
        p.command_line[1..],
        shapes_run_args(&seed_runs()[1], 1, &[])
    );
    assert_eq!(p.tool.name, "roundtrip");
    assert_eq!(p.tool.version, env!("CARGO_PKG_VERSION"));
    let t = p.started.as_bytes();
    assert!(
        p.started.len() == 20 && t[4] == b'-' && t[10] == b'T' && t[19] == b'Z',
        "{}",
        p.started
    );
    if Path::new(env!("CARGO_MANIFEST_DIR")).join(".git").exists() {
        let c = p.tool.git_commit.as_deref().unwrap();
        assert!(
            c.len() == 40 && c.chars().all(|c| c.is_ascii_hexdigit()),
            "{c}"
        );
        assert!(p.tool.git_dirty.is_some());
    }

    // The same run again (another start, another command line: the moved folder) reuses all.
    std::thread::sleep(Duration::from_millis(1100));
    let stdout = ok(&roundtrip_owned(&shapes_run_args(&run, 1, &[])));
    assert!(
        stdout.contains("computed 0\treused 3\tupdated 0"),
        "{stdout}"
    );
    let again = read_json(&run.join("run.json"));
    let q: Provenance = serde_json::from_value(again["provenance"].clone()).unwrap();
    assert!(q.started > p.started, "{} then {}", p.started, q.started);
    assert_eq!(q.command_line[1..], shapes_run_args(&run, 1, &[]));
    let without = |mut v: Value| {
        v.as_object_mut().unwrap().remove("provenance");
        v
    };
    assert_eq!(without(again), without(first));

    // A merge records its own command and each shard's.
    let mut shards = Vec::new();
    for k in 1..=2 {
        let out = d.path().join(format!("shard{k}"));
        let spec = format!("{k}/2");
        ok(&roundtrip_owned(&shapes_run_args(
            &out,
            1,
            &["--shard", &spec],
        )));
        shards.push(out.to_str().unwrap().to_owned());
    }
    let merged = d.path().join("merged");
    let mut args = vec!["merge"];
    args.extend(shards.iter().map(String::as_str));
    args.extend(["--out", merged.to_str().unwrap()]);
    ok(&roundtrip(&args));
    let m = read_json(&merged.join("run.json"));
    assert_eq!(m["provenance"]["command_line"][1], "merge");
    let from: Vec<&Value> = m["merged_from"].as_array().unwrap().iter().collect();
    assert_eq!(from.len(), 2);
    for (f, s) in from.iter().zip(&shards) {
        assert_eq!(f["folder"], s.as_str());
        let line: Vec<&str> = f["provenance"]["command_line"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(line.contains(&"--shard"), "{line:?}");
    }
    // The merged run's figures are the whole run's: compare finds no setting apart.
    let text = ok(&roundtrip(&[
        "compare",
        merged.to_str().unwrap(),
        run.to_str().unwrap(),
    ]));
    assert!(text.contains("settings that differ: none"), "{text}");
}
