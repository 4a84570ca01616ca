//! `roundtrip compare RUN_DIR...`: runs side by side (a seed or settings sweep): the settings
//! that differ between them, and the corpus figures of each run per generator, captioner and
//! image kind, as text, JSON ([`Comparison`], [`COMPARE_SCHEMA_VERSION`]) or a small HTML page.
//!
//! It reads each folder's `report.json` (schema 3 and later, through its own types: the report's
//! are serialize-only) and `run.json` (the provenance: command line, start, tool); nothing is
//! computed again.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use html_escape::encode_text as esc;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::report::{text_table, REPORT_SCHEMA_VERSION};
use crate::input_err;
use crate::metrics::captions::BleuPair;
use crate::provenance::Provenance;

/// Version of `compare --json`'s object; bumped on any incompatible change.
pub const COMPARE_SCHEMA_VERSION: u32 = 1;

/// The first `report.json` schema compare reads (3: corpus figures per generator).
const FIRST_REPORT_SCHEMA: u32 = 3;

// What compare reads of report.json and run.json.

#[derive(Deserialize)]
struct SchemaOnly {
    schema_version: u32,
}

#[derive(Deserialize)]
struct ReportIn {
    schema_version: u32,
    prompts_file: String,
    #[serde(default)]
    shard: Option<String>,
    settings: Value,
    #[serde(default)]
    models: BTreeMap<String, Value>,
    phrases: Vec<IgnoredAny>,
    corpus: CorpusIn,
}

#[derive(Deserialize)]
struct CorpusIn {
    phrases: usize,
    with_photo: usize,
    generators: BTreeMap<String, GeneratorIn>,
    photo: PhotoIn,
}

#[derive(Deserialize)]
struct GeneratorIn {
    clip_score: MeansIn,
    captioners: BTreeMap<String, GeneratedIn>,
}

#[derive(Deserialize)]
struct MeansIn {
    generated: Option<f64>,
    #[serde(default)]
    generated_with_photo: Option<f64>,
}

#[derive(Deserialize)]
struct GeneratedIn {
    generated: Option<FiguresIn>,
    #[serde(default)]
    generated_with_photo: Option<FiguresIn>,
}

#[derive(Deserialize)]
struct PhotoIn {
    clip_score: Option<f64>,
    captioners: BTreeMap<String, Option<FiguresIn>>,
}

#[derive(Deserialize)]
struct FiguresIn {
    images: usize,
    bleu: BleuPair,
    /// Absent from reports before schema 6.
    #[serde(default)]
    cider_d: Option<f64>,
    #[serde(default)]
    rouge_l: Option<f64>,
    mean_clip_text_similarity: f64,
    distinct_captions: usize,
}

#[derive(Deserialize)]
struct RunIn {
    #[serde(default)]
    provenance: Option<Provenance>,
}

/// One run folder, read.
struct Loaded {
    folder: String,
    report: ReportIn,
    provenance: Option<Provenance>,
}

/// Reads a file of a run folder, naming the folder and the file when it is missing.
fn read_run_file(dir: &Path, name: &str, missing_hint: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(input_err!(
            "{} is not a finished run folder: it has no {name}{missing_hint}",
            dir.display()
        )),
        Err(e) => Err(input_err!("cannot read {}: {e}", path.display())),
    }
}

fn load(dir: &Path) -> anyhow::Result<Loaded> {
    if !dir.is_dir() {
        return Err(input_err!(
            "{} is not a run folder: {}",
            dir.display(),
            if dir.exists() {
                "it is a file"
            } else {
                "it does not exist"
            }
        ));
    }
    let run = read_run_file(
        dir,
        "run.json",
        " (the folder `roundtrip run --out` writes)",
    )?;
    let report = read_run_file(
        dir,
        "report.json",
        &format!(
            " (an unfinished run? `roundtrip report {} --partial` reports its finished images)",
            dir.display()
        ),
    )?;
    let report_path = dir.join("report.json");
    let bad = |e: serde_json::Error, path: &Path| {
        input_err!("{} is not a roundtrip report: {e}", path.display())
    };
    let version: SchemaOnly = serde_json::from_slice(&report).map_err(|e| bad(e, &report_path))?;
    if !(FIRST_REPORT_SCHEMA..=REPORT_SCHEMA_VERSION).contains(&version.schema_version) {
        return Err(input_err!(
            "{} has report schema version {}, this roundtrip compares {FIRST_REPORT_SCHEMA} to {REPORT_SCHEMA_VERSION}: write it again with `roundtrip report {}`",
            report_path.display(),
            version.schema_version,
            dir.display()
        ));
    }
    let report: ReportIn = serde_json::from_slice(&report).map_err(|e| bad(e, &report_path))?;
    let run_path = dir.join("run.json");
    let run: RunIn = serde_json::from_slice(&run).map_err(|e| {
        input_err!(
            "{} is not a roundtrip run manifest: {e}",
            run_path.display()
        )
    })?;
    Ok(Loaded {
        folder: dir.display().to_string(),
        report,
        provenance: run.provenance,
    })
}

// What compare writes.

/// `compare --json`.
#[derive(Debug, Serialize)]
pub struct Comparison {
    pub schema_version: u32,
    /// In the order given; `run` of [`CorpusRow`] is an index into it.
    pub runs: Vec<RunInfo>,
    /// The settings whose values are not the same in every run, in the settings' order.
    pub differences: Vec<Difference>,
    /// Grouped by generator, captioner and image kind (the real photos last), the runs of a
    /// group in the order given.
    pub corpus: Vec<CorpusRow>,
}

/// A run as compare names it.
#[derive(Debug, Serialize)]
pub struct RunInfo {
    /// The folder as given.
    pub folder: String,
    pub prompts_file: String,
    /// The share of the phrases the folder holds; `null` for a whole run or a merge.
    pub shard: Option<String>,
    pub phrases: usize,
    pub with_photo: usize,
    /// One per phrase and generator drawing it.
    pub images: usize,
    pub report_schema_version: u32,
    /// From run.json: command line, start, tool; `null` for a run written before it was
    /// recorded.
    pub provenance: Option<Provenance>,
}

/// A setting that differs, by its dotted path: `seed`, `siren.steps`, `captioners.vgg16.dir`
/// (list items by their label), `models.clip` (a model's content fingerprint), `prompts_file`,
/// `shard`.
#[derive(Debug, Serialize)]
pub struct Difference {
    pub setting: String,
    /// One per run; `null` where a run has no such setting.
    pub values: Vec<Option<Value>>,
}

/// Which images a row's figures are of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    /// A generator's images of every phrase.
    Generated,
    /// A generator's images of the phrases that have a real photo.
    GeneratedWithPhoto,
    /// The real photos.
    Photo,
}

impl ImageKind {
    fn label(self) -> &'static str {
        match self {
            Self::Generated => "generated",
            Self::GeneratedWithPhoto => "w/ photo",
            Self::Photo => "real photo",
        }
    }
}

/// One run's corpus figures of one captioner on one kind of images.
#[derive(Debug, Serialize)]
pub struct CorpusRow {
    /// Index into `runs`.
    pub run: usize,
    /// `null` for the real photos.
    pub generator: Option<String>,
    pub captioner: String,
    pub images: ImageKind,
    /// Images captioned.
    pub n: usize,
    /// Corpus BLEU-1..4 of the captions against their phrases, unsmoothed and with nltk's
    /// method1 (`bleu1`..`bleu4`, `bleu1_method1`..`bleu4_method1`, as in report.json).
    pub bleu: BleuPair,
    /// CIDEr-D and ROUGE-L of the captions against their phrases (pycocoevalcap's), as in
    /// report.json; `null` for a report written before schema 6 (`roundtrip report` writes it
    /// again with them).
    pub cider_d: Option<f64>,
    pub rouge_l: Option<f64>,
    /// Mean CLIP similarity of caption and phrase.
    pub clip_text_similarity: f64,
    pub distinct_captions: usize,
    /// Mean CLIPScore of these images against their phrases.
    pub clip_score: Option<f64>,
}

/// `path.key`, or `key` at the top.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The leaves of a settings value by dotted path; a list whose items all have a `label` (the
/// captioners) by label, any other list as one value.
fn flatten(path: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                flatten(&join(path, k), x, out);
            }
        }
        Value::Array(a)
            if !a.is_empty()
                && a.iter()
                    .all(|x| x.get("label").is_some_and(Value::is_string)) =>
        {
            for x in a {
                let mut rest = x.clone();
                let label = rest
                    .as_object_mut()
                    .and_then(|m| m.remove("label"))
                    .and_then(|l| l.as_str().map(str::to_owned))
                    .unwrap_or_default();
                flatten(&join(path, &label), &rest, out);
            }
        }
        _ => out.push((path.to_owned(), v.clone())),
    }
}

/// A run's comparable values by path: where its phrases come from, its settings, its models'
/// fingerprints.
fn values_of(r: &ReportIn) -> Vec<(String, Value)> {
    let mut out = vec![
        (
            "prompts_file".to_owned(),
            Value::from(r.prompts_file.clone()),
        ),
        (
            "shard".to_owned(),
            r.shard.clone().map_or(Value::Null, Value::from),
        ),
    ];
    flatten("", &r.settings, &mut out);
    for (name, m) in &r.models {
        let fp = m.get("fingerprint").cloned().unwrap_or(Value::Null);
        out.push((format!("models.{name}"), fp));
    }
    out
}

/// The names in `lists` (each run's, in its order), each once, in order of first appearance.
fn union(lists: impl IntoIterator<Item = Vec<String>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in lists {
        for n in l {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

/// The strings of a settings list (`generators`), or of its items' `label` (`captioners`).
fn names_in(settings: &Value, key: &str) -> Vec<String> {
    settings
        .get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| {
                    x.as_str()
                        .or_else(|| x.get("label").and_then(Value::as_str))
                })
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Reads the run folders and puts them side by side.
pub fn compare(dirs: &[PathBuf]) -> anyhow::Result<Comparison> {
    if dirs.is_empty() {
        return Err(input_err!("compare needs at least one run folder"));
    }
    let runs: Vec<Loaded> = dirs.iter().map(|d| load(d)).collect::<Result<_, _>>()?;

    let values: Vec<Vec<(String, Value)>> = runs.iter().map(|r| values_of(&r.report)).collect();
    let paths = union(
        values
            .iter()
            .map(|v| v.iter().map(|(p, _)| p.clone()).collect()),
    );
    let differences = paths
        .into_iter()
        .filter_map(|path| {
            let vals: Vec<Option<Value>> = values
                .iter()
                .map(|v| v.iter().find(|(p, _)| *p == path).map(|(_, x)| x.clone()))
                .collect();
            vals.iter().any(|v| *v != vals[0]).then_some(Difference {
                setting: path,
                values: vals,
            })
        })
        .collect();

    let generators = union(runs.iter().map(|r| {
        let mut g = names_in(&r.report.settings, "generators");
        g.extend(r.report.corpus.generators.keys().cloned());
        g
    }));
    let captioners = union(runs.iter().map(|r| {
        let mut c = names_in(&r.report.settings, "captioners");
        c.extend(r.report.corpus.photo.captioners.keys().cloned());
        c
    }));
    let mut corpus = Vec::new();
    let row = |run: usize, generator: Option<&str>, captioner: &str, kind, f: &FiguresIn, score| {
        CorpusRow {
            run,
            generator: generator.map(str::to_owned),
            captioner: captioner.to_owned(),
            images: kind,
            n: f.images,
            bleu: f.bleu.clone(),
            cider_d: f.cider_d,
            rouge_l: f.rouge_l,
            clip_text_similarity: f.mean_clip_text_similarity,
            distinct_captions: f.distinct_captions,
            clip_score: score,
        }
    };
    for g in &generators {
        for c in &captioners {
            for kind in [ImageKind::Generated, ImageKind::GeneratedWithPhoto] {
                for (i, r) in runs.iter().enumerate() {
                    let Some(gc) = r.report.corpus.generators.get(g) else {
                        continue;
                    };
                    let Some(figures) = gc.captioners.get(c) else {
                        continue;
                    };
                    let (f, score) = match kind {
                        ImageKind::Generated => (&figures.generated, gc.clip_score.generated),
                        _ => (
                            &figures.generated_with_photo,
                            gc.clip_score.generated_with_photo,
                        ),
                    };
                    if let Some(f) = f {
                        corpus.push(row(i, Some(g), c, kind, f, score));
                    }
                }
            }
        }
    }
    for c in &captioners {
        for (i, r) in runs.iter().enumerate() {
            let photo = &r.report.corpus.photo;
            if let Some(Some(f)) = photo.captioners.get(c) {
                corpus.push(row(i, None, c, ImageKind::Photo, f, photo.clip_score));
            }
        }
    }

    let runs = runs
        .into_iter()
        .map(|r| RunInfo {
            folder: r.folder,
            prompts_file: r.report.prompts_file,
            shard: r.report.shard,
            phrases: r.report.corpus.phrases,
            with_photo: r.report.corpus.with_photo,
            images: r.report.phrases.len(),
            report_schema_version: r.report.schema_version,
            provenance: r.provenance,
        })
        .collect();
    Ok(Comparison {
        schema_version: COMPARE_SCHEMA_VERSION,
        runs,
        differences,
        corpus,
    })
}

/// A setting's value as the tables show it: strings bare (a model's fingerprint cut to 12
/// digits), lists as `a, b`, `none` for null or an empty list, `–` where the run has no such
/// setting.
fn value_text(path: &str, v: Option<&Value>) -> String {
    match v {
        None => "–".into(),
        Some(Value::Null) => "none".into(),
        Some(Value::String(s)) if path.starts_with("models.") => s.chars().take(12).collect(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.is_empty() => "none".into(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| value_text("", Some(x)))
            .collect::<Vec<_>>()
            .join(", "),
        Some(other) => other.to_string(),
    }
}

/// `#1`, `#2`, ...: a run's column name.
fn tag(i: usize) -> String {
    format!("#{}", i + 1)
}

fn opt(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.4}"))
}

/// A row's cells from BLEU-1 on, as the text table and the page show them.
fn figure_cells(r: &CorpusRow) -> Vec<String> {
    let mut cells: Vec<String> = r
        .bleu
        .unsmoothed
        .iter()
        .map(|b| format!("{b:.4}"))
        .collect();
    cells.push(opt(r.cider_d));
    cells.push(opt(r.rouge_l));
    cells.push(format!("{:.4}", r.clip_text_similarity));
    cells.push(format!("{}/{}", r.distinct_captions, r.n));
    cells.push(opt(r.clip_score));
    cells
}

const FIGURE_HEADS: [&str; 9] = [
    "BLEU-1",
    "BLEU-2",
    "BLEU-3",
    "BLEU-4",
    "CIDEr-D",
    "ROUGE-L",
    "CLIP text",
    "distinct",
    "CLIPScore",
];

/// The tool and commit of a run, `–` where run.json does not record them.
fn tool_text(r: &RunInfo) -> String {
    r.provenance
        .as_ref()
        .map_or("–".into(), |p| p.tool.describe())
}

/// The comparison as text: the runs, the settings that differ, the corpus table.
pub fn text(c: &Comparison) -> String {
    let mut s = String::from("runs\n");
    let mut rows = vec![[
        "run", "folder", "phrases", "images", "started", "tool", "prompts",
    ]
    .map(str::to_owned)
    .to_vec()];
    for (i, r) in c.runs.iter().enumerate() {
        rows.push(vec![
            tag(i),
            r.folder.clone(),
            r.phrases.to_string(),
            r.images.to_string(),
            r.provenance
                .as_ref()
                .map_or("–".into(), |p| p.started.clone()),
            tool_text(r),
            match &r.shard {
                Some(k) => format!("{} (shard {k})", r.prompts_file),
                None => r.prompts_file.clone(),
            },
        ]);
    }
    s.push_str(&text_table(&rows, "  ", |c| c == 2 || c == 3));
    for (i, r) in c.runs.iter().enumerate() {
        if let Some(p) = &r.provenance {
            let _ = writeln!(s, "  {}: {}", tag(i), p.shell_line());
        }
    }

    s.push('\n');
    if c.differences.is_empty() {
        s.push_str("settings that differ: none\n");
    } else {
        s.push_str("settings that differ\n");
        let mut rows = vec![std::iter::once("setting".to_owned())
            .chain((0..c.runs.len()).map(tag))
            .collect::<Vec<_>>()];
        for d in &c.differences {
            rows.push(
                std::iter::once(d.setting.clone())
                    .chain(d.values.iter().map(|v| value_text(&d.setting, v.as_ref())))
                    .collect(),
            );
        }
        s.push_str(&text_table(&rows, "  ", |_| false));
    }

    s.push_str(
        "\ncorpus (BLEU of each caption against its phrase, unsmoothed, CIDEr-D and ROUGE-L; CLIP text: caption-phrase similarity; CLIPScore: image-phrase)\n",
    );
    let mut rows = vec![["generator", "captioner", "images", "run", "n"]
        .iter()
        .chain(&FIGURE_HEADS)
        .map(|h| h.to_string())
        .collect::<Vec<_>>()];
    for r in &c.corpus {
        let mut cells = vec![
            r.generator.clone().unwrap_or_else(|| "–".into()),
            r.captioner.clone(),
            r.images.label().to_owned(),
            tag(r.run),
            r.n.to_string(),
        ];
        cells.extend(figure_cells(r));
        rows.push(cells);
    }
    if rows.len() == 1 {
        s.push_str("  no figures\n");
    } else {
        s.push_str(&text_table(&rows, "  ", |c| c >= 4));
    }
    s
}

/// The comparison as a small self-contained HTML page: the same three tables, the best value of
/// each group of runs in bold.
pub fn html(c: &Comparison) -> String {
    let mut s = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>roundtrip compare</title>\n<style>\n\
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }\n\
table { border-collapse: collapse; margin-bottom: 2em; }\n\
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }\n\
td.n { text-align: right; font-variant-numeric: tabular-nums; }\n\
td.k { white-space: nowrap; }\n\
tr.first td { border-top: 2px solid #999; }\n\
code { font-size: 0.9em; }\n\
</style>\n</head>\n<body>\n<h1>roundtrip compare</h1>\n",
    );
    s.push_str("<h2>Runs</h2>\n<table>\n<tr><th>run</th><th>folder</th><th>phrases</th><th>images</th><th>started</th><th>tool</th><th>prompts</th></tr>\n");
    for (i, r) in c.runs.iter().enumerate() {
        let p = r.provenance.as_ref();
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td class=\"k\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"k\">{}</td><td class=\"k\">{}</td><td>{}{}</td></tr>",
            tag(i),
            esc(&r.folder),
            r.phrases,
            r.images,
            esc(&p.map_or("–".into(), |p| p.started.clone())),
            esc(&tool_text(r)),
            esc(&r.prompts_file),
            r.shard
                .as_ref()
                .map_or(String::new(), |k| format!(" (shard {})", esc(k))),
        );
    }
    s.push_str("</table>\n");
    for (i, r) in c.runs.iter().enumerate() {
        if let Some(p) = &r.provenance {
            let _ = writeln!(
                s,
                "<p>{}: <code>{}</code></p>",
                tag(i),
                esc(&p.shell_line())
            );
        }
    }
    s.push_str("<h2>Settings that differ</h2>\n");
    if c.differences.is_empty() {
        s.push_str("<p>None.</p>\n");
    } else {
        s.push_str("<table>\n<tr><th>setting</th>");
        for i in 0..c.runs.len() {
            let _ = write!(s, "<th>{}</th>", tag(i));
        }
        s.push_str("</tr>\n");
        for d in &c.differences {
            let _ = write!(s, "<tr><td><code>{}</code></td>", esc(&d.setting));
            for v in &d.values {
                let _ = write!(s, "<td>{}</td>", esc(&value_text(&d.setting, v.as_ref())));
            }
            s.push_str("</tr>\n");
        }
        s.push_str("</table>\n");
    }
    s.push_str("<h2>Corpus figures</h2>\n<p>Corpus BLEU of each caption against its phrase (unsmoothed), CIDEr-D and ROUGE-L, mean CLIP similarity of caption and phrase (CLIP text), distinct captions, mean CLIPScore of the images; the best of each group in bold.</p>\n<table>\n<tr><th>generator</th><th>captioner</th><th>images</th><th>run</th><th>n</th>");
    for h in FIGURE_HEADS {
        let _ = write!(s, "<th>{h}</th>");
    }
    s.push_str("</tr>\n");
    let key = |r: &CorpusRow| (r.generator.clone(), r.captioner.clone(), r.images);
    let mut start = 0;
    while start < c.corpus.len() {
        let k = key(&c.corpus[start]);
        let end = start + c.corpus[start..].iter().take_while(|r| key(r) == k).count();
        let group = &c.corpus[start..end];
        // Per figure column (BLEU-1..4, CIDEr-D, ROUGE-L, CLIP text, CLIPScore): the best
        // value, where the runs of the group do not all share it.
        let figures = |r: &CorpusRow| -> [Option<f64>; 8] {
            [
                Some(r.bleu.unsmoothed[0]),
                Some(r.bleu.unsmoothed[1]),
                Some(r.bleu.unsmoothed[2]),
                Some(r.bleu.unsmoothed[3]),
                r.cider_d,
                r.rouge_l,
                Some(r.clip_text_similarity),
                r.clip_score,
            ]
        };
        let best: Vec<Option<f64>> = (0..8)
            .map(|j| {
                let vals: Vec<f64> = group.iter().filter_map(|r| figures(r)[j]).collect();
                let max = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                (vals.len() > 1 && vals.iter().any(|v| *v != max)).then_some(max)
            })
            .collect();
        for (n, r) in group.iter().enumerate() {
            let _ = write!(
                s,
                "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td>",
                if n == 0 { " class=\"first\"" } else { "" },
                esc(r.generator.as_deref().unwrap_or("–")),
                esc(&r.captioner),
                r.images.label(),
                tag(r.run),
                r.n
            );
            let cells = figure_cells(r);
            let f = figures(r);
            // Cells 0..6 are BLEU, CIDEr-D, ROUGE-L and CLIP text (figures 0..6), 7 distinct,
            // 8 CLIPScore (7).
            for (j, cell) in cells.iter().enumerate() {
                let fig = match j {
                    0..=6 => Some(j),
                    8 => Some(7),
                    _ => None,
                };
                let bold = fig.is_some_and(|k| best[k].is_some() && f[k] == best[k]);
                if bold {
                    let _ = write!(s, "<td class=\"n\"><strong>{cell}</strong></td>");
                } else {
                    let _ = write!(s, "<td class=\"n\">{cell}</td>");
                }
            }
            s.push_str("</tr>\n");
        }
        start = end;
    }
    s.push_str("</table>\n</body>\n</html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn settings_flatten_to_dotted_paths_and_captioners_by_label() {
        let mut out = Vec::new();
        flatten(
            "",
            &json!({
                "seed": 3,
                "siren": {"steps": 10, "lr": 0.1},
                "generators": ["siren", "biggan"],
                "captioners": [{"label": "vgg16", "dir": "a"}, {"label": "x", "dir": "b"}],
                "biggan": {"avoid": []},
            }),
            &mut out,
        );
        let paths: Vec<&str> = out.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "biggan.avoid",
                "captioners.vgg16.dir",
                "captioners.x.dir",
                "generators",
                "seed",
                "siren.lr",
                "siren.steps"
            ]
        );
        assert_eq!(value_text("generators", Some(&out[3].1)), "siren, biggan");
        assert_eq!(value_text("biggan.avoid", Some(&out[0].1)), "none");
        assert_eq!(value_text("biggan.max_classes", Some(&Value::Null)), "none");
        assert_eq!(value_text("x", None), "–");
        assert_eq!(
            value_text("models.clip", Some(&json!("0123456789abcdef"))),
            "0123456789ab"
        );
    }
}
