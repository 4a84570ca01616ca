//! `report.csv`: the report's captions as one table for a spreadsheet or a dataframe, one row per
//! phrase x generator x captioner x image kind (the generated image, and the real photo where the
//! line has one), in `report.json`'s order: prompts-file line, generator column, captioner,
//! generated before photo.
//!
//! A photo row repeats once per generator drawing the phrase (its caption and scores are the
//! same in each), so that filtering on one generator gives its images and the photos of the same
//! phrases, like for like; count photos once by keeping one generator's rows.

use super::record::{PhraseRecord, ScoredCaption};
use super::report::Report;

/// The columns, in order (documented in the README's run section).
pub const COLUMNS: [&str; 20] = [
    "line",
    "phrase",
    "generator",
    "seed",
    "image_kind",
    "image",
    "captioner",
    "caption",
    "bleu1",
    "bleu2",
    "bleu3",
    "bleu4",
    "bleu1_method1",
    "bleu2_method1",
    "bleu3_method1",
    "bleu4_method1",
    "rouge_l",
    "clip_text_similarity",
    "clip_score",
    "final_similarity",
];

/// One row: the image's (its seed and guide similarity for a generated image), the caption's.
struct Row<'a> {
    seed: Option<u64>,
    kind: &'a str,
    image: &'a str,
    label: &'a str,
    caption: &'a ScoredCaption,
    clip_score: Option<f32>,
    final_similarity: Option<f32>,
}

fn fields(line: usize, p: &PhraseRecord, row: Row) -> Vec<String> {
    let num = |x: Option<f32>| x.map_or(String::new(), |x| x.to_string());
    let c = row.caption;
    let mut v = vec![
        line.to_string(),
        p.phrase.clone(),
        p.generator.to_string(),
        row.seed.map_or(String::new(), |s| s.to_string()),
        row.kind.to_owned(),
        row.image.to_owned(),
        row.label.to_owned(),
        c.caption.clone(),
    ];
    v.extend(c.bleu.unsmoothed.iter().map(|x| x.to_string()));
    v.extend(c.bleu.method1.iter().map(|x| x.to_string()));
    v.push(c.rouge_l.map_or(String::new(), |x| x.to_string()));
    v.push(c.clip_text_similarity.to_string());
    v.push(num(row.clip_score));
    v.push(num(row.final_similarity));
    v
}

fn rows(line: usize, p: &PhraseRecord, labels: &[&str]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for &label in labels {
        let Some(res) = p.captions.get(label) else {
            continue;
        };
        out.push(fields(
            line,
            p,
            Row {
                seed: Some(p.seed),
                kind: "generated",
                image: &p.image,
                label,
                caption: &res.generated,
                clip_score: Some(p.clip_score.generated),
                final_similarity: Some(p.final_similarity),
            },
        ));
        if let (Some(photo), Some(c)) = (&p.photo, &res.photo) {
            out.push(fields(
                line,
                p,
                Row {
                    seed: None,
                    kind: "photo",
                    image: &photo.file,
                    label,
                    caption: c,
                    clip_score: p.clip_score.photo,
                    final_similarity: None,
                },
            ));
        }
    }
    out
}

/// The CSV text of a report (RFC 4180: a header row, fields quoted where needed, `\n` line
/// ends; numbers as the shortest decimals that read back to the recorded values, empty where a
/// figure does not exist).
pub fn csv(r: &Report) -> anyhow::Result<Vec<u8>> {
    let labels: Vec<&str> = r
        .settings
        .captioners
        .iter()
        .map(|c| c.label.as_str())
        .collect();
    let mut w = ::csv::WriterBuilder::new()
        .terminator(::csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    w.write_record(COLUMNS)?;
    for e in &r.phrases {
        for row in rows(e.line, e.record, &labels) {
            w.write_record(&row)?;
        }
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))
}
