//! The run report: `report.json` (serialize-only types, [`REPORT_SCHEMA_VERSION`], documented in
//! the README), `report.html` (the gallery) and `report.md` (the corpus table).
//!
//! The report is a pure function of the run settings, the phrase records and the prompts' line
//! numbers, so a resumed, sharded-and-merged or uninterrupted run writes the same report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::record::{PhraseRecord, ScoredCaption};
use super::{Layout, Manifest, RunSettings, Shard};
use crate::fsutil::{write_atomic, write_json};
use crate::generate::GeneratorKind;
use crate::metrics::captions::{corpus_bleu_pair, diversity, BleuPair};
use crate::text::normalize;

/// Version of `report.json`; bumped on any incompatible change (2: model fingerprints, each
/// phrase's stage keys and file digests).
pub const REPORT_SCHEMA_VERSION: u32 = 2;

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
    /// In prompts-file order.
    pub phrases: Vec<PhraseEntry<'a>>,
    pub corpus: Corpus,
}

#[derive(Serialize)]
pub struct PhraseEntry<'a> {
    /// Line of the phrase in the prompts file.
    pub line: usize,
    #[serde(flatten)]
    pub record: &'a PhraseRecord,
}

/// Corpus figures over all phrases of the report.
#[derive(Serialize)]
pub struct Corpus {
    pub phrases: usize,
    pub with_photo: usize,
    /// Mean CLIPScore of the generated images (all phrases, and the phrases with a photo) and of
    /// the real photos.
    pub clip_score: ImageMeans,
    /// Mean similarity between phrase and whole generated image, as the guide sees it.
    pub mean_final_similarity: Option<f64>,
    /// Per captioner label.
    pub captioners: BTreeMap<String, CaptionerCorpus>,
}

#[derive(Serialize)]
pub struct ImageMeans {
    pub generated: Option<f64>,
    pub generated_with_photo: Option<f64>,
    pub photo: Option<f64>,
}

/// One captioner's corpus figures on generated images (all phrases, and the phrases that have
/// a photo, for a like-for-like comparison) and on real photos.
#[derive(Serialize)]
pub struct CaptionerCorpus {
    pub generated: Option<Figures>,
    pub generated_with_photo: Option<Figures>,
    pub photo: Option<Figures>,
}

/// Corpus figures of a set of captions against their phrases.
#[derive(Serialize)]
pub struct Figures {
    pub images: usize,
    /// Corpus BLEU-1..4 (nltk `corpus_bleu`), each phrase the single reference of its caption.
    pub bleu: BleuPair,
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
    Some(Figures {
        images: pairs.len(),
        bleu: corpus_bleu_pair(&hyps, &refs),
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

/// Corpus figures of records (in report order) for the given captioner labels.
pub fn corpus(records: &[PhraseRecord], settings: &RunSettings) -> Corpus {
    let with_photo: Vec<&PhraseRecord> = records.iter().filter(|r| r.photo.is_some()).collect();
    let mut captioners = BTreeMap::new();
    for c in &settings.captioners {
        let gen: Vec<(&PhraseRecord, &ScoredCaption)> = records
            .iter()
            .filter_map(|r| r.captions.get(&c.label).map(|x| (r, &x.generated)))
            .collect();
        let gen_photo: Vec<_> = gen
            .iter()
            .copied()
            .filter(|(r, _)| r.photo.is_some())
            .collect();
        let photo: Vec<(&PhraseRecord, &ScoredCaption)> = records
            .iter()
            .filter_map(|r| {
                r.captions
                    .get(&c.label)
                    .and_then(|x| x.photo.as_ref())
                    .map(|p| (r, p))
            })
            .collect();
        captioners.insert(
            c.label.clone(),
            CaptionerCorpus {
                generated: figures(&gen),
                generated_with_photo: figures(&gen_photo),
                photo: figures(&photo),
            },
        );
    }
    Corpus {
        phrases: records.len(),
        with_photo: with_photo.len(),
        clip_score: ImageMeans {
            generated: mean(records.iter().map(|r| r.clip_score.generated)),
            generated_with_photo: mean(with_photo.iter().map(|r| r.clip_score.generated)),
            photo: mean(records.iter().filter_map(|r| r.clip_score.photo)),
        },
        mean_final_similarity: mean(records.iter().map(|r| r.final_similarity)),
        captioners,
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
    }
}

/// Writes `report.json`, `report.html` and `report.md`; returns the JSON's path.
pub fn write_all(
    layout: &Layout,
    manifest: &Manifest,
    lines: &[usize],
    records: &[PhraseRecord],
) -> anyhow::Result<PathBuf> {
    let report = build(manifest, lines, records);
    let json = layout.root.join("report.json");
    write_json(&json, &report)?;
    let html = super::html::render(&report, layout)?;
    write_atomic(&layout.root.join("report.html"), html.as_bytes())?;
    write_atomic(&layout.root.join("report.md"), markdown(&report).as_bytes())?;
    Ok(json)
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
        [] => r.settings.generator.to_string(),
        [(g, _)] => g.to_string(),
        many => many
            .iter()
            .map(|(g, n)| format!("{g} ({n})"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.4}"))
}

/// `report.md`: the corpus table, then one row per phrase.
pub fn markdown(r: &Report) -> String {
    let c = &r.corpus;
    let mut s = String::new();
    let _ = writeln!(s, "# roundtrip report\n");
    let _ = writeln!(
        s,
        "{} phrases ({} with a real photo) from `{}`; generator {}, run seed {}, CLIP `{}`{}.\n",
        c.phrases,
        c.with_photo,
        md(r.prompts_file),
        md(&generators_summary(r)),
        r.settings.seed,
        md(&r.settings.clip),
        r.shard
            .as_ref()
            .map_or(String::new(), |k| format!(", shard {k}"))
    );
    let _ = writeln!(
        s,
        "Corpus BLEU of each caption against its phrase (unsmoothed; method1 in report.json).\n"
    );
    let _ = writeln!(
        s,
        "| captioner | images | n | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | CLIP text sim | distinct | most repeated caption |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for spec in &r.settings.captioners {
        let Some(cc) = c.captioners.get(&spec.label) else {
            continue;
        };
        for (what, f) in [
            ("generated", &cc.generated),
            ("generated (phrases with a photo)", &cc.generated_with_photo),
            ("real photo", &cc.photo),
        ] {
            let Some(f) = f else { continue };
            let b = f.bleu.unsmoothed;
            let _ = writeln!(
                s,
                "| {} | {what} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {} ({:.2}) | {} (x{}) |",
                md(&spec.label),
                f.images,
                b[0],
                b[1],
                b[2],
                b[3],
                f.mean_clip_text_similarity,
                f.distinct_captions,
                f.diversity,
                md(&f.most_common_caption),
                f.most_common_count
            );
        }
    }
    let _ = writeln!(
        s,
        "\nMean CLIPScore: generated {} (phrases with a photo: {}), real photos {}. Mean guide similarity of the final images: {}.\n",
        opt(c.clip_score.generated),
        opt(c.clip_score.generated_with_photo),
        opt(c.clip_score.photo),
        opt(c.mean_final_similarity)
    );
    let _ = writeln!(s, "## Phrases\n");
    let mut head = String::from("| line | phrase | CLIPScore generated | CLIPScore photo |");
    let mut rule = String::from("|---|---|---|---|");
    for spec in &r.settings.captioners {
        let l = md(&spec.label);
        let _ = write!(head, " {l} on generated | {l} on photo |");
        rule.push_str("---|---|");
    }
    let _ = writeln!(s, "{head}\n{rule}");
    for e in &r.phrases {
        let p = e.record;
        let _ = write!(
            s,
            "| {} | {} | {:.4} | {} |",
            e.line,
            md(&p.phrase),
            p.clip_score.generated,
            opt(p.clip_score.photo.map(f64::from))
        );
        for spec in &r.settings.captioners {
            let cell = |c: Option<&ScoredCaption>| {
                c.map_or("–".into(), |c| {
                    format!("{} (B1 {:.2})", md(&c.caption), c.bleu.unsmoothed[0])
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
