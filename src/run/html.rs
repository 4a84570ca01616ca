//! `report.html`: one self-contained page (images inlined as data URIs, no script, no external
//! resource) laid out as the original experiment's table, one row per phrase: phrase | one column
//! per generator (its image, scores, a chart of CLIP similarity over the guidance steps and each
//! captioner's caption) | real photo (with its captions). The header names each generator's
//! settings.
//!
//! Every phrase, caption, label and path is HTML-escaped, so a phrase like `<script>` is text.

use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;
use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};

use super::record::{PhraseRecord, ScoredCaption, StepPoint};
use super::report::{generator_settings, generators_summary, Figures, Report};
use super::Layout;

/// Real photos larger than this (either side) are inlined as a JPEG thumbnail of this size.
const THUMBNAIL: u32 = 320;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.4em;vertical-align:top}\
th{background:#f4f4f4;text-align:left}.phrases>tbody>tr>td:first-child{font-weight:600;max-width:14em}\
img{width:192px;height:auto;image-rendering:auto;display:block}.num{text-align:right;font-variant-numeric:tabular-nums}\
small{color:#666;font-weight:400}.caps td,.caps th{border:none;padding:.15em .4em}.missing{color:#999}\
svg{display:block;margin-top:.3em}";

/// The data URI of an image file in the run folder (a thumbnail for large photos), or `None` if
/// it cannot be read.
fn data_uri(path: &Path, thumbnail: bool) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let format = image::guess_format(&bytes).ok()?;
    let b64 = base64::engine::general_purpose::STANDARD;
    if thumbnail {
        let img = image::load_from_memory(&bytes).ok()?;
        if img.width() > THUMBNAIL || img.height() > THUMBNAIL {
            let small = img.thumbnail(THUMBNAIL, THUMBNAIL).to_rgb8();
            let mut out = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
                .encode_image(&small)
                .ok()?;
            return Some(format!("data:image/jpeg;base64,{}", b64.encode(out)));
        }
    }
    Some(format!(
        "data:{};base64,{}",
        format.to_mime_type(),
        b64.encode(&bytes)
    ))
}

fn img(layout: &Layout, rel: &str, alt: &str, thumbnail: bool) -> String {
    match data_uri(&layout.root.join(rel), thumbnail) {
        Some(src) => format!("<img src=\"{}\" alt=\"{}\">", attr(&src), attr(alt)),
        None => format!("<span class=\"missing\">{} is missing</span>", text(rel)),
    }
}

/// A small SVG line chart of the guide's similarity over the steps.
fn chart(steps: &[StepPoint]) -> String {
    if steps.is_empty() {
        return String::new();
    }
    let (w, h, pad) = (192.0f64, 56.0f64, 4.0f64);
    let lo = steps
        .iter()
        .map(|s| s.similarity as f64)
        .fold(f64::INFINITY, f64::min);
    let hi = steps
        .iter()
        .map(|s| s.similarity as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let n = steps.len().max(2) - 1;
    let points: Vec<String> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let x = pad + (w - 2.0 * pad) * i as f64 / n as f64;
            let y = h - pad - (h - 2.0 * pad) * (s.similarity as f64 - lo) / span;
            format!("{x:.1},{y:.1}")
        })
        .collect();
    format!(
        "<svg width=\"{w}\" height=\"{}\" viewBox=\"0 0 {w} {}\" role=\"img\"><title>CLIP similarity over {} steps: {:.3} to {:.3}</title>\
<rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#fafafa\" stroke=\"#ddd\"/>\
<polyline fill=\"none\" stroke=\"#36c\" stroke-width=\"1.5\" points=\"{}\"/>\
<text x=\"2\" y=\"{}\" font-size=\"9\" fill=\"#666\">{:.3} → {:.3} (max {:.3}), {} steps</text></svg>",
        h + 12.0,
        h + 12.0,
        steps.len(),
        lo,
        hi,
        points.join(" "),
        h + 10.0,
        steps[0].similarity,
        steps[steps.len() - 1].similarity,
        hi,
        steps.len()
    )
}

fn caption_cell(c: Option<&ScoredCaption>) -> String {
    match c {
        None => "<td class=\"missing\">–</td>".into(),
        Some(c) => {
            let b = c.bleu.unsmoothed;
            format!(
                "<td>{}<br><small>BLEU-1..4 {:.2} {:.2} {:.2} {:.2} · CLIP text {:.3}</small></td>",
                text(&c.caption),
                b[0],
                b[1],
                b[2],
                b[3],
                c.clip_text_similarity
            )
        }
    }
}

fn figures_row(s: &mut String, label: &str, what: &str, f: &Option<Figures>) {
    let Some(f) = f else { return };
    let b = f.bleu.unsmoothed;
    let _ = write!(
        s,
        "<tr><td>{}</td><td>{what}</td><td class=\"num\">{}</td>",
        text(label),
        f.images
    );
    for x in b {
        let _ = write!(s, "<td class=\"num\">{x:.4}</td>");
    }
    let _ = writeln!(
        s,
        "<td class=\"num\">{:.4}</td><td class=\"num\">{} ({:.2})</td><td>{} <small>×{}</small></td></tr>",
        f.mean_clip_text_similarity,
        f.distinct_captions,
        f.diversity,
        text(&f.most_common_caption),
        f.most_common_count
    );
}

fn opt(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.4}"))
}

/// One image's cell: the image, its seed and scores, the chart of its guidance and each
/// captioner's caption of it.
fn image_cell(s: &mut String, r: &Report, layout: &Layout, p: &PhraseRecord) {
    let _ = write!(
        s,
        "<td>{}<small>seed {} · CLIPScore {:.4} · guide similarity {:.4}</small>{}<table class=\"caps\">",
        img(layout, &p.image, &format!("{}: {}", p.generator, p.phrase), false),
        p.seed,
        p.clip_score.generated,
        p.final_similarity,
        chart(&p.steps)
    );
    for spec in &r.settings.captioners {
        let res = p.captions.get(&spec.label);
        let _ = write!(
            s,
            "<tr><th>{}</th>{}</tr>",
            text(&spec.label),
            caption_cell(res.map(|x| &x.generated))
        );
    }
    s.push_str("</table></td>");
}

/// One phrase's row: the phrase, one cell per generator column (empty where a `[prefix]` pins
/// the line to another), the real photo with its captions.
fn phrase_row(s: &mut String, r: &Report, layout: &Layout, line: usize, images: &[&PhraseRecord]) {
    let Some(first) = images.first() else { return };
    let _ = write!(
        s,
        "<tr><td>{}<br><small>line {line}</small></td>",
        text(&first.phrase)
    );
    for g in &r.columns {
        match images.iter().find(|p| p.generator == *g) {
            Some(p) => image_cell(s, r, layout, p),
            None => {
                let pinned = images
                    .iter()
                    .map(|p| p.generator.name())
                    .collect::<Vec<_>>()
                    .join(", ");
                let _ = write!(
                    s,
                    "<td class=\"missing\">drawn with {} only</td>",
                    text(&pinned)
                );
            }
        }
    }
    match (&first.photo, first.clip_score.photo) {
        (Some(photo), score) => {
            let _ = write!(
                s,
                "<td>{}<small>CLIPScore {}</small><table class=\"caps\">",
                img(
                    layout,
                    &photo.file,
                    &format!("photo: {}", first.phrase),
                    true
                ),
                opt(score.map(f64::from))
            );
            for spec in &r.settings.captioners {
                let res = first.captions.get(&spec.label);
                let _ = write!(
                    s,
                    "<tr><th>{}</th>{}</tr>",
                    text(&spec.label),
                    caption_cell(res.and_then(|x| x.photo.as_ref()))
                );
            }
            s.push_str("</table></td>");
        }
        (None, _) => s.push_str("<td class=\"missing\">no photo</td>"),
    }
    s.push_str("</tr>\n");
}

/// The whole page.
pub fn render(r: &Report, layout: &Layout) -> anyhow::Result<String> {
    let c = &r.corpus;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>roundtrip report</title><style>{STYLE}</style></head><body>"
    );
    let _ = writeln!(
        s,
        "<h1>roundtrip report</h1><p>{} phrases ({} with a real photo) from <code>{}</code>; generator {}, run seed {}, CLIP <code>{}</code>{}.</p>",
        c.phrases,
        c.with_photo,
        text(r.prompts_file),
        text(&generators_summary(r)),
        r.settings.seed,
        text(&r.settings.clip),
        r.shard
            .as_ref()
            .map_or(String::new(), |k| format!(", shard {}", text(k)))
    );
    s.push_str("<ul class=\"generators\">");
    for g in &r.columns {
        let _ = write!(
            s,
            "<li><b>{}</b>: {}</li>",
            text(g.name()),
            text(&generator_settings(r.settings, *g))
        );
    }
    s.push_str("</ul>\n");
    let _ = writeln!(
        s,
        "<h2>Corpus</h2><p>Corpus BLEU of each caption against its phrase (unsmoothed), mean CLIP text similarity of caption and phrase, and caption diversity, per captioner on each generator's images and on the real photos.</p>\
<table class=\"corpus\"><thead><tr><th>captioner</th><th>images</th><th>n</th><th>BLEU-1</th><th>BLEU-2</th><th>BLEU-3</th><th>BLEU-4</th><th>CLIP text sim</th><th>distinct (ratio)</th><th>most repeated caption</th></tr></thead><tbody>"
    );
    for spec in &r.settings.captioners {
        for g in &r.columns {
            if let Some(gc) = c
                .generators
                .get(g.name())
                .and_then(|x| x.captioners.get(&spec.label))
            {
                figures_row(&mut s, &spec.label, g.name(), &gc.generated);
                let what = format!("{g} (phrases with a photo)");
                figures_row(&mut s, &spec.label, &what, &gc.generated_with_photo);
            }
        }
        if let Some(f) = c.photo.captioners.get(&spec.label) {
            figures_row(&mut s, &spec.label, "real photo", f);
        }
    }
    s.push_str("</tbody></table><p>Mean CLIPScore:");
    for g in &r.columns {
        if let Some(gc) = c.generators.get(g.name()) {
            let _ = write!(
                s,
                " {} {} (phrases with a photo: {});",
                text(g.name()),
                opt(gc.clip_score.generated),
                opt(gc.clip_score.generated_with_photo)
            );
        }
    }
    let _ = writeln!(s, " real photos {}.</p>", opt(c.photo.clip_score));
    s.push_str("<h2>Phrases</h2><table class=\"phrases\"><thead><tr><th>phrase</th>");
    for g in &r.columns {
        let _ = write!(
            s,
            "<th class=\"generator\">{}<br><small>{}</small></th>",
            text(g.name()),
            text(&generator_settings(r.settings, *g))
        );
    }
    s.push_str("<th>real photo</th></tr></thead><tbody>\n");
    // Consecutive entries of one line are one phrase's images.
    let mut i = 0;
    while i < r.phrases.len() {
        let line = r.phrases[i].line;
        let images: Vec<&PhraseRecord> = r.phrases[i..]
            .iter()
            .take_while(|e| e.line == line)
            .map(|e| e.record)
            .collect();
        i += images.len();
        phrase_row(&mut s, r, layout, line, &images);
    }
    s.push_str("</tbody></table></body></html>\n");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_spans_the_box() {
        let steps: Vec<StepPoint> = (1..=5)
            .map(|i| StepPoint {
                step: i,
                loss: 0.0,
                similarity: i as f32 / 10.0,
            })
            .collect();
        let svg = chart(&steps);
        assert!(svg.contains("points=\"4.0,52.0 "), "{svg}");
        assert!(svg.contains(" 188.0,4.0\""), "{svg}");
        assert_eq!(chart(&[]), "");
    }
}
