//! The run report: `report.json` (serialize-only types, [`REPORT_SCHEMA_VERSION`], documented in
//! the README), `report.html` (the gallery), `report.md` (the corpus table) and `report.csv`
//! (one row per caption, [`super::table`]).
//!
//! The report is a pure function of the run settings, the phrase records and the prompts' line
//! numbers, so a resumed, sharded-and-merged or uninterrupted run writes the same report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::html::GalleryImages;
use super::preset::Preset;
use super::record::{PhraseRecord, ScoredCaption};
use super::{Layout, Manifest, RunSettings, Shard};
use crate::diff::all_differences;
use crate::fsutil::{write_atomic, write_json};
use crate::generate::GeneratorKind;
use crate::metrics::captions::{corpus_bleu_pair, diversity, BleuPair};
use crate::metrics::scores::{score, Metric};
use crate::text::normalize;

/// Version of `report.json`; bumped on any incompatible change (2: model fingerprints, each
/// phrase's stage keys and file digests; 3: several generators: `settings.generators`, one
/// `phrases` entry per image, corpus figures per generator and once for the photos; 4: a
/// generator's `generated_with_photo` figures are `null` when every phrase it drew has a photo,
/// where they would repeat `generated`; 5: BLEU objects are `bleu1`..`bleu4` and
/// `bleu1_method1`..`bleu4_method1`, the key names of every other output, where they were
/// `unsmoothed` / `method1` arrays;
/// 6: the captioning community's figures: corpus `cider_d` and `rouge_l` per captioner and
/// images, and each caption's `rouge_l`).
pub const REPORT_SCHEMA_VERSION: u32 = 6;

#[derive(Serialize)]
pub struct Tool {
    pub name: &'static str,
    pub version: &'static str,
}

/// `report.json`.
#[derive(Serialize)]
pub struct Report<'a> {
    pub schema_version: u32,
    pub tool: Tool,
    pub prompts_file: &'a str,
    /// The share of the phrases this report covers; `null` for a whole run or a merge.
    pub shard: Option<String>,
    pub settings: &'a RunSettings,
    pub models: &'a BTreeMap<String, serde_json::Value>,
    /// One per image (a phrase drawn by one generator), in prompts-file order and, within a
    /// phrase, in generator column order.
    pub phrases: Vec<PhraseEntry<'a>>,
    pub corpus: Corpus,
    /// The generators in column order ([`generator_columns`]).
    #[serde(skip)]
    pub columns: Vec<GeneratorKind>,
    /// The settings that differ from the nearest preset's defaults (the headers' list).
    #[serde(skip)]
    pub changes: SettingsChanges,
}

/// A setting that differs from the defaults, as the headers show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Changed {
    /// Its path in `settings` (`siren.steps`, `seed`, `biggan.model`).
    pub name: String,
    pub value: String,
    pub default: String,
}

/// The settings of a run that differ from the defaults of the preset they differ least from
/// (`real` on a tie), which is the preset the run was most likely made with: the list that tells
/// apart the galleries of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingsChanges {
    pub preset: Preset,
    pub changed: Vec<Changed>,
}

impl SettingsChanges {
    /// Whether setting `name` (a path in `settings`) differs from the defaults.
    pub fn contains(&self, name: &str) -> bool {
        self.changed.iter().any(|c| c.name == name)
    }

    /// `siren.steps 20 (default 150), seed 11 (default 0)`, or `none` when nothing differs.
    pub fn summary(&self) -> String {
        if self.changed.is_empty() {
            return "none".into();
        }
        self.changed
            .iter()
            .map(|c| format!("{} {} (default {})", c.name, c.value, c.default))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A setting's value as the headers write it: strings bare, `null`, `[]` and absent (a setting
/// off by default, which records leave out) as `–`, lists as `[a, b]`, captioners `label=dir`.
pub fn setting_text(v: Option<&serde_json::Value>) -> String {
    use serde_json::Value;
    match v {
        None | Some(Value::Null) => "–".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.is_empty() => "–".into(),
        Some(Value::Array(a)) => format!(
            "[{}]",
            a.iter()
                .map(|x| setting_text(Some(x)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(Value::Object(m)) => match (m.get("label"), m.get("dir")) {
            (Some(Value::String(l)), Some(Value::String(d))) if m.len() == 2 => format!("{l}={d}"),
            _ => Value::Object(m.clone()).to_string(),
        },
        Some(other) => other.to_string(),
    }
}

/// [`SettingsChanges`] of a run's settings.
pub fn settings_changes(settings: &RunSettings) -> SettingsChanges {
    let value = serde_json::to_value(settings).unwrap_or_default();
    Preset::ALL
        .iter()
        .map(|&preset| {
            let defaults = preset.run_settings(settings.biggan.is_some());
            let defaults = serde_json::to_value(&defaults).unwrap_or_default();
            let changed = all_differences(&defaults, &value)
                .into_iter()
                .map(|d| Changed {
                    name: d.path,
                    value: setting_text(d.new.as_ref()),
                    default: setting_text(d.old.as_ref()),
                })
                .collect();
            SettingsChanges { preset, changed }
        })
        // The first of equals: `real`.
        .min_by_key(|c| c.changed.len())
        .unwrap_or(SettingsChanges {
            preset: Preset::Real,
            changed: Vec::new(),
        })
}

#[derive(Serialize)]
pub struct PhraseEntry<'a> {
    /// Line of the phrase in the prompts file.
    pub line: usize,
    #[serde(flatten)]
    pub record: &'a PhraseRecord,
}

/// Corpus figures over all phrases of the report: per generator (its images), and once for
/// the real photos (which no generator changes).
#[derive(Serialize)]
pub struct Corpus {
    pub phrases: usize,
    pub with_photo: usize,
    /// Per generator name, over the phrases it drew.
    pub generators: BTreeMap<String, GeneratorCorpus>,
    /// The real photos (each phrase's once).
    pub photo: PhotoCorpus,
}

/// One generator's corpus figures. The `generated_with_photo` figures are `None` when no phrase
/// it drew has a photo, and when every one has (they would repeat `generated`).
#[derive(Serialize)]
pub struct GeneratorCorpus {
    /// Phrases it drew (all of them, and those with a photo).
    pub images: usize,
    pub with_photo: usize,
    /// Mean CLIPScore of its images (all, and those of phrases with a photo).
    pub clip_score: GeneratedMeans,
    /// Mean similarity between phrase and whole generated image, as the guide sees it.
    pub mean_final_similarity: Option<f64>,
    /// Per captioner label.
    pub captioners: BTreeMap<String, GeneratedFigures>,
}

#[derive(Serialize)]
pub struct GeneratedMeans {
    pub generated: Option<f64>,
    pub generated_with_photo: Option<f64>,
}

/// One captioner's corpus figures on a generator's images (all phrases, and the phrases that
/// have a photo, for a like-for-like comparison with the photos).
#[derive(Serialize)]
pub struct GeneratedFigures {
    pub generated: Option<Figures>,
    pub generated_with_photo: Option<Figures>,
}

/// Corpus figures of the real photos.
#[derive(Serialize)]
pub struct PhotoCorpus {
    /// Mean CLIPScore of the photos.
    pub clip_score: Option<f64>,
    /// Per captioner label: its captions of the photos.
    pub captioners: BTreeMap<String, Option<Figures>>,
}

/// Corpus figures of a set of captions against their phrases.
#[derive(Serialize)]
pub struct Figures {
    pub images: usize,
    /// Corpus BLEU-1..4 (nltk `corpus_bleu`), each phrase the single reference of its caption.
    pub bleu: BleuPair,
    /// CIDEr-D (pycocoevalcap's), each phrase the single reference of its caption: the document
    /// frequencies are those of these phrases.
    pub cider_d: f64,
    /// ROUGE-L (pycocoevalcap's): the mean of the captions' `rouge_l`.
    pub rouge_l: f64,
    pub mean_clip_text_similarity: f64,
    pub distinct_captions: usize,
    /// Distinct captions / images.
    pub diversity: f64,
    pub most_common_caption: String,
    pub most_common_count: usize,
}

fn figures(pairs: &[(&PhraseRecord, &ScoredCaption)]) -> Option<Figures> {
    if pairs.is_empty() {
        return None;
    }
    let hyps: Vec<Vec<String>> = pairs.iter().map(|(_, c)| normalize(&c.caption)).collect();
    let refs: Vec<Vec<Vec<String>>> = pairs
        .iter()
        .map(|(r, _)| vec![r.reference_tokens.clone()])
        .collect();
    let captions: Vec<String> = pairs.iter().map(|(_, c)| c.caption.clone()).collect();
    let (distinct, top, top_n) = diversity(&captions);
    let coco = score(&hyps, &refs, &[Metric::CiderD, Metric::RougeL]).corpus;
    Some(Figures {
        images: pairs.len(),
        bleu: corpus_bleu_pair(&hyps, &refs),
        cider_d: coco.cider_d.unwrap_or_default(),
        rouge_l: coco.rouge_l.unwrap_or_default(),
        mean_clip_text_similarity: mean(pairs.iter().map(|(_, c)| c.clip_text_similarity))
            .unwrap_or(0.0),
        distinct_captions: distinct,
        diversity: distinct as f64 / pairs.len() as f64,
        most_common_caption: top,
        most_common_count: top_n,
    })
}

fn mean(xs: impl Iterator<Item = f32>) -> Option<f64> {
    let (mut sum, mut n) = (0f64, 0usize);
    for x in xs {
        sum += x as f64;
        n += 1;
    }
    (n > 0).then(|| sum / n as f64)
}

/// The generators of a report in column order: the run's list, then those only `[prefix]` lines
/// use, in order of first appearance.
pub fn generator_columns(settings: &RunSettings, records: &[PhraseRecord]) -> Vec<GeneratorKind> {
    let mut out = settings.generators.clone();
    for r in records {
        if !out.contains(&r.generator) {
            out.push(r.generator);
        }
    }
    out
}

/// Corpus figures of records (in report order) for the run's captioner labels.
pub fn corpus(records: &[PhraseRecord], settings: &RunSettings) -> Corpus {
    // Each phrase once (its first image's record carries its photo's captions and score).
    let mut phrases: Vec<&PhraseRecord> = Vec::new();
    for r in records {
        if !phrases.iter().any(|p| p.phrase == r.phrase) {
            phrases.push(r);
        }
    }
    let photo_captions = |label: &str| -> Vec<(&PhraseRecord, &ScoredCaption)> {
        phrases
            .iter()
            .filter_map(|r| {
                r.captions
                    .get(label)
                    .and_then(|x| x.photo.as_ref())
                    .map(|p| (*r, p))
            })
            .collect()
    };
    let photo = PhotoCorpus {
        clip_score: mean(phrases.iter().filter_map(|r| r.clip_score.photo)),
        captioners: settings
            .captioners
            .iter()
            .map(|c| (c.label.clone(), figures(&photo_captions(&c.label))))
            .collect(),
    };
    let mut generators = BTreeMap::new();
    for g in generator_columns(settings, records) {
        let drawn: Vec<&PhraseRecord> = records.iter().filter(|r| r.generator == g).collect();
        let with_photo: Vec<&PhraseRecord> = drawn
            .iter()
            .copied()
            .filter(|r| r.photo.is_some())
            .collect();
        // Figures of the phrases with a photo only where they are a part of all phrases: where
        // every phrase has one they would repeat the figures of all.
        let some_with_photo = with_photo.len() < drawn.len();
        let mut captioners = BTreeMap::new();
        for c in &settings.captioners {
            let gen: Vec<(&PhraseRecord, &ScoredCaption)> = drawn
                .iter()
                .filter_map(|r| r.captions.get(&c.label).map(|x| (*r, &x.generated)))
                .collect();
            let gen_photo: Vec<_> = gen
                .iter()
                .copied()
                .filter(|(r, _)| r.photo.is_some())
                .collect();
            captioners.insert(
                c.label.clone(),
                GeneratedFigures {
                    generated: figures(&gen),
                    generated_with_photo: figures(&gen_photo).filter(|_| some_with_photo),
                },
            );
        }
        generators.insert(
            g.to_string(),
            GeneratorCorpus {
                images: drawn.len(),
                with_photo: with_photo.len(),
                clip_score: GeneratedMeans {
                    generated: mean(drawn.iter().map(|r| r.clip_score.generated)),
                    generated_with_photo: mean(with_photo.iter().map(|r| r.clip_score.generated))
                        .filter(|_| some_with_photo),
                },
                mean_final_similarity: mean(drawn.iter().map(|r| r.final_similarity)),
                captioners,
            },
        );
    }
    Corpus {
        phrases: phrases.len(),
        with_photo: phrases.iter().filter(|r| r.photo.is_some()).count(),
        generators,
        photo,
    }
}

/// Builds the report of `records`, whose prompts lines are `lines`.
pub fn build<'a>(
    manifest: &'a Manifest,
    lines: &[usize],
    records: &'a [PhraseRecord],
) -> Report<'a> {
    Report {
        schema_version: REPORT_SCHEMA_VERSION,
        tool: Tool {
            name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
        },
        prompts_file: &manifest.prompts_file,
        shard: manifest.shard.map(|s: Shard| s.to_string()),
        settings: &manifest.settings,
        models: &manifest.models,
        phrases: lines
            .iter()
            .zip(records)
            .map(|(&line, record)| PhraseEntry { line, record })
            .collect(),
        corpus: corpus(records, &manifest.settings),
        columns: generator_columns(&manifest.settings, records),
        changes: settings_changes(&manifest.settings),
    }
}

/// The files [`write_all`] wrote, and the report's [`summary`].
pub struct Written {
    pub json: PathBuf,
    pub csv: PathBuf,
    pub html: PathBuf,
    pub markdown: PathBuf,
    pub summary: String,
}

/// Writes `report.json`, `report.csv`, `report.html` (its images as `gallery` says) and
/// `report.md`.
pub fn write_all(
    layout: &Layout,
    manifest: &Manifest,
    lines: &[usize],
    records: &[PhraseRecord],
    gallery: GalleryImages,
) -> anyhow::Result<Written> {
    let report = build(manifest, lines, records);
    let json = layout.root.join("report.json");
    write_json(&json, &report)?;
    let csv = layout.root.join("report.csv");
    write_atomic(&csv, &super::table::csv(&report)?)?;
    let html = layout.root.join("report.html");
    write_atomic(
        &html,
        super::html::render(&report, layout, gallery)?.as_bytes(),
    )?;
    let markdown = layout.root.join("report.md");
    write_atomic(&markdown, self::markdown(&report).as_bytes())?;
    Ok(Written {
        json,
        csv,
        html,
        markdown,
        summary: summary(&report),
    })
}

/// Rows of cells as a plain-text table: columns padded to their widest cell, two spaces apart,
/// left-aligned but for the columns `right` says, each line after `indent`. Shared by the end
/// summary and `roundtrip compare`.
pub(crate) fn text_table(
    rows: &[Vec<String>],
    indent: &str,
    right: impl Fn(usize) -> bool,
) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for row in rows {
        let mut line = indent.to_owned();
        for (c, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            if right(c) {
                let _ = write!(line, "{cell:>w$}");
            } else {
                let _ = write!(line, "{cell:<w$}");
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// The corpus figures in short, for the end of a run on stderr: per captioner and images
/// (each generator's, those of phrases with a photo, the real photos) the corpus BLEU-1 and
/// BLEU-4 (unsmoothed; report.md has all four), the mean CLIP similarity of caption and phrase
/// (`CLIP`) and the distinct captions (`unique`); then the mean CLIPScores and guide
/// similarities. Narrow enough for a 60-column terminal.
pub fn summary(r: &Report) -> String {
    let c = &r.corpus;
    let mut rows = vec![[
        "captioner",
        "images",
        "n",
        "BLEU-1",
        "BLEU-4",
        "CLIP",
        "unique",
    ]
    .map(str::to_owned)
    .to_vec()];
    let mut row = |label: &str, what: String, f: &Option<Figures>| {
        if let Some(f) = f {
            let b = f.bleu.unsmoothed;
            rows.push(vec![
                label.to_owned(),
                what,
                f.images.to_string(),
                format!("{:.4}", b[0]),
                format!("{:.4}", b[3]),
                format!("{:.4}", f.mean_clip_text_similarity),
                format!("{}/{}", f.distinct_captions, f.images),
            ]);
        }
    };
    for spec in &r.settings.captioners {
        for g in &r.columns {
            if let Some(gc) = c
                .generators
                .get(g.name())
                .and_then(|x| x.captioners.get(&spec.label))
            {
                row(&spec.label, g.to_string(), &gc.generated);
                row(
                    &spec.label,
                    format!("{g} w/ photo"),
                    &gc.generated_with_photo,
                );
            }
        }
        if let Some(f) = c.photo.captioners.get(&spec.label) {
            row(&spec.label, "real photo".to_owned(), f);
        }
    }
    let mut s = if rows.len() > 1 {
        text_table(&rows, "", |c| c >= 2)
    } else {
        String::new()
    };
    let mut scores: Vec<String> = Vec::new();
    let mut sims: Vec<String> = Vec::new();
    for g in &r.columns {
        if let Some(gc) = c.generators.get(g.name()) {
            scores.push(format!("{g} {}", opt(gc.clip_score.generated)));
            sims.push(format!("{g} {}", opt(gc.mean_final_similarity)));
        }
    }
    if let Some(photo) = c.photo.clip_score {
        scores.push(format!("real photos {photo:.4}"));
    }
    let _ = writeln!(s, "mean CLIPScore: {}", scores.join(", "));
    let _ = writeln!(s, "mean guide similarity: {}", sims.join(", "));
    s
}

/// A path relative to the run folder as a relative URL: each segment percent-encoded except
/// the characters that need none, so a link works whatever the file is named.
pub fn url_path(rel: &str) -> String {
    let mut s = String::with_capacity(rel.len());
    for b in rel.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                s.push(b as char)
            }
            _ => {
                let _ = write!(s, "%{b:02X}");
            }
        }
    }
    s
}

/// Escapes text for a Markdown table cell (and for the HTML that Markdown passes through).
fn md(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '|' | '\\' | '*' | '_' | '`' | '[' | ']' => {
                s.push('\\');
                s.push(c);
            }
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '&' => s.push_str("&amp;"),
            '\n' | '\r' => s.push(' '),
            _ => s.push(c),
        }
    }
    s
}

/// `siren`, or `siren (9), biggan (1)` when the phrases were drawn by several generators.
pub fn generators_summary(r: &Report) -> String {
    let mut counts: Vec<(GeneratorKind, usize)> = Vec::new();
    for p in &r.phrases {
        match counts.iter_mut().find(|(g, _)| *g == p.record.generator) {
            Some((_, n)) => *n += 1,
            None => counts.push((p.record.generator, 1)),
        }
    }
    match counts.as_slice() {
        [] => r.settings.primary().to_string(),
        [(g, _)] => g.to_string(),
        many => many
            .iter()
            .map(|(g, n)| format!("{g} ({n})"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// A generator's settings as the report's header names them: `steps 30, size 32, ...` (BigGAN's
/// with its model), from the run settings as recorded.
pub fn generator_settings(settings: &RunSettings, g: GeneratorKind) -> String {
    generator_setting_items(settings, g)
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// [`generator_settings`] as (name, value) pairs.
pub fn generator_setting_items(settings: &RunSettings, g: GeneratorKind) -> Vec<(String, String)> {
    let value = match g {
        GeneratorKind::Siren => serde_json::to_value(&settings.siren).ok(),
        GeneratorKind::BigGan => settings
            .biggan
            .as_ref()
            .and_then(|b| serde_json::to_value(b).ok()),
    };
    let Some(serde_json::Value::Object(m)) = value else {
        return Vec::new();
    };
    m.iter()
        .map(|(k, v)| (k.clone(), setting_text(Some(v))))
        .collect()
}

fn opt(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.4}"))
}

/// One row of the corpus table.
fn md_figures(s: &mut String, label: &str, what: &str, f: &Option<Figures>) {
    let Some(f) = f else { return };
    let b = f.bleu.unsmoothed;
    let _ = writeln!(
        s,
        "| {} | {what} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {} ({:.2}) | {} (x{}) |",
        md(label),
        f.images,
        b[0],
        b[1],
        b[2],
        b[3],
        f.cider_d,
        f.rouge_l,
        f.mean_clip_text_similarity,
        f.distinct_captions,
        f.diversity,
        md(&f.most_common_caption),
        f.most_common_count
    );
}

/// `report.md`: the settings that differ from the defaults and each generator's, the corpus
/// table (per captioner: each generator's images, then the real photos), then one row per image
/// with links to the image, its frames and the photo beside the report.
pub fn markdown(r: &Report) -> String {
    let c = &r.corpus;
    let columns = &r.columns;
    let mut s = String::new();
    let _ = writeln!(s, "# roundtrip report\n");
    let _ = writeln!(
        s,
        "{} phrases ({} with a real photo) from `{}`; generator {}, run seed {}, CLIP `{}`, captioners {} (beam {}){}.\n",
        c.phrases,
        c.with_photo,
        md(r.prompts_file),
        md(&generators_summary(r)),
        r.settings.seed,
        md(&r.settings.clip),
        md(&captioner_labels(r.settings)),
        r.settings.beam,
        r.shard
            .as_ref()
            .map_or(String::new(), |k| format!(", shard {k}"))
    );
    let preset = r.changes.preset.name();
    if r.changes.changed.is_empty() {
        let _ = writeln!(s, "Every setting is the `{preset}` preset's default.\n");
    } else {
        let _ = writeln!(
            s,
            "Settings that differ from the `{preset}` preset's defaults: {}.\n",
            md(&r.changes.summary())
        );
    }
    for g in columns {
        let _ = writeln!(s, "- {g}: {}", md(&generator_settings(r.settings, *g)));
    }
    let _ = writeln!(
        s,
        "\nCorpus BLEU of each caption against its phrase (unsmoothed; method1 in report.json), CIDEr-D (document frequencies over these phrases) and ROUGE-L, as pycocoevalcap computes them.{}\n",
        if any_all_with_photo(c) {
            " A generator's \"(phrases with a photo)\" row is left out where every phrase it drew has a photo: its own row is then like for like with the photos'."
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "| captioner | images | n | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | CIDEr-D | ROUGE-L | CLIP text sim | distinct | most repeated caption |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for spec in &r.settings.captioners {
        for g in columns {
            let Some(gc) = c
                .generators
                .get(g.name())
                .and_then(|x| x.captioners.get(&spec.label))
            else {
                continue;
            };
            md_figures(&mut s, &spec.label, g.name(), &gc.generated);
            let what = format!("{g} (phrases with a photo)");
            md_figures(&mut s, &spec.label, &what, &gc.generated_with_photo);
        }
        if let Some(f) = c.photo.captioners.get(&spec.label) {
            md_figures(&mut s, &spec.label, "real photo", f);
        }
    }
    s.push('\n');
    for g in columns {
        let Some(gc) = c.generators.get(g.name()) else {
            continue;
        };
        let with_photo = match gc.clip_score.generated_with_photo {
            Some(x) => format!(" (phrases with a photo: {})", opt(Some(x))),
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "Mean CLIPScore of {g}'s images: {}{with_photo}; mean guide similarity of its final images: {}.\n",
            opt(gc.clip_score.generated),
            opt(gc.mean_final_similarity)
        );
    }
    let _ = writeln!(
        s,
        "Mean CLIPScore of the real photos: {}.\n",
        opt(c.photo.clip_score)
    );
    let _ = writeln!(s, "## Phrases\n");
    let mut head = String::from(
        "| line | phrase | generator | image | CLIPScore generated | photo | CLIPScore photo |",
    );
    let mut rule = String::from("|---|---|---|---|---|---|---|");
    for spec in &r.settings.captioners {
        let l = md(&spec.label);
        let _ = write!(head, " {l} on generated | {l} on photo |");
        rule.push_str("---|---|");
    }
    let _ = writeln!(s, "{head}\n{rule}");
    for e in &r.phrases {
        let p = e.record;
        let mut image = format!("[image]({})", url_path(&p.image));
        if let Some(dir) = p.frames.first().and_then(|f| f.rsplit_once('/')) {
            let _ = write!(image, ", [{} frames]({}/)", p.frames.len(), url_path(dir.0));
        }
        let photo = p.photo.as_ref().map_or("–".into(), |ph| {
            format!("[photo]({})", url_path(&ph.file))
        });
        let _ = write!(
            s,
            "| {} | {} | {} | {image} | {:.4} | {photo} | {} |",
            e.line,
            md(&p.phrase),
            p.generator,
            p.clip_score.generated,
            opt(p.clip_score.photo.map(f64::from))
        );
        for spec in &r.settings.captioners {
            let cell = |c: Option<&ScoredCaption>| {
                c.map_or("–".into(), |c| {
                    format!(
                        "{} (B1 {:.2}, ROUGE-L {})",
                        md(&c.caption),
                        c.bleu.unsmoothed[0],
                        c.rouge_l.map_or("–".into(), |x| format!("{x:.2}"))
                    )
                })
            };
            let res = p.captions.get(&spec.label);
            let _ = write!(
                s,
                " {} | {} |",
                cell(res.map(|x| &x.generated)),
                cell(res.and_then(|x| x.photo.as_ref()))
            );
        }
        s.push('\n');
    }
    s
}

/// `vgg16, xception`.
pub fn captioner_labels(settings: &RunSettings) -> String {
    settings
        .captioners
        .iter()
        .map(|c| c.label.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether some generator drew only phrases with a photo (so its "(phrases with a photo)" rows
/// are left out).
pub fn any_all_with_photo(c: &Corpus) -> bool {
    c.generators
        .values()
        .any(|g| g.images > 0 && g.with_photo == g.images)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::GeneratorKind;

    #[test]
    fn changes_are_named_against_the_nearest_preset() {
        let shapes = Preset::Shapes.run_settings(false);
        let c = settings_changes(&shapes);
        assert_eq!((c.preset, c.changed.len()), (Preset::Shapes, 0));
        assert_eq!(c.summary(), "none");
        let mut s = shapes.clone();
        s.siren.steps = 20;
        s.seed = 11;
        s.generators = vec![GeneratorKind::Siren];
        let c = settings_changes(&s);
        assert_eq!(c.preset, Preset::Shapes);
        assert_eq!(
            c.summary(),
            "generators [siren] (default [siren, biggan]), seed 11 (default 0), siren.steps 20 (default 150)"
        );
        assert!(c.contains("siren.steps") && !c.contains("siren.size"));
        // A setting that records leave out while off reads `–` as its default.
        let mut r = Preset::Real.run_settings(false);
        r.siren.tv_weight = 0.5;
        let c = settings_changes(&r);
        assert_eq!(c.preset, Preset::Real);
        assert_eq!(c.summary(), "siren.tv_weight 0.5 (default –)");
    }

    #[test]
    fn urls_escape_what_a_path_may_hold() {
        assert_eq!(url_path("images/a-b_c.png"), "images/a-b_c.png");
        assert_eq!(url_path("photos/a b(1)#.png"), "photos/a%20b%281%29%23.png");
        assert_eq!(url_path("é"), "%C3%A9");
    }
}
