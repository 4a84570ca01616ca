//! `report.html`: one page, laid out as the original experiment's table, one row per phrase:
//! phrase | one column per generator (its image, scores, a chart of CLIP similarity over the
//! guidance steps, a strip of its progress frames and each captioner's caption) | real photo
//! (with its captions). The header names the settings that differ from the defaults and each
//! generator's settings. No script and no external resource: the images are inlined as data URIs
//! (one self-contained file) or, for large runs or with `--gallery-images link`, linked to their
//! files beside the page ([`GalleryImages`]).
//!
//! Every phrase, caption, label and path is HTML-escaped, so a phrase like `<script>` is text.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;
use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};

use super::record::{PhraseRecord, ScoredCaption, StepPoint};
use super::report::{
    any_all_with_photo, captioner_labels, generator_setting_items, generators_summary, url_path,
    Figures, Report,
};
use super::Layout;

/// How `report.html` shows the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GalleryImages {
    /// Inlined while the page's images come to at most [`INLINE_LIMIT`], else linked.
    Auto,
    /// Inlined as data URIs: one self-contained file, whatever its size.
    Inline,
    /// Relative links to the files in the run folder, loaded lazily: a page that opens at once
    /// with hundreds of phrases, but only beside its images.
    Link,
}

/// The most image bytes [`GalleryImages::Auto`] inlines (a page of a third more, in base64):
/// about a hundred phrases of 224 px SIREN images with their frame strips. Beyond, a browser
/// parses tens of megabytes before it shows anything.
pub const INLINE_LIMIT: u64 = 8 << 20;

/// Real photos larger than this (either side) are inlined as a JPEG thumbnail of this size.
const THUMBNAIL: u32 = 320;

/// What a photo's thumbnail is counted as in the inline estimate (a 320 px JPEG at quality 85 is
/// 20-40 KB).
const THUMBNAIL_BYTES: u64 = 40 << 10;

/// A phrase's strip shows at most this many progress frames, evenly spaced, the first and the
/// last among them.
pub const STRIP: usize = 8;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;font-size:15px}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.4em;vertical-align:top}\
th{background:#f4f4f4;text-align:left}.phrases>tbody>tr>td:first-child{font-weight:600;max-width:14em}\
img.generated,img.photo{width:192px;height:auto;image-rendering:auto;display:block;border:1px solid #bbb}\
.num{text-align:right;font-variant-numeric:tabular-nums}small{color:#555;font-weight:400}\
.scores{display:flex;flex-wrap:wrap;column-gap:.8em;margin:.35em 0;font-size:14px;font-variant-numeric:tabular-nums;max-width:250px}\
.scores span,.bleu span{white-space:nowrap}\
.bleu{display:flex;flex-wrap:wrap;column-gap:.6em;font-size:13px;color:#333;font-variant-numeric:tabular-nums;margin-top:.1em}\
.caps{margin-top:.3em}.caps td,.caps th{border:none;padding:.2em .4em}.caps th{background:none;font-size:13px;color:#444}\
.missing{color:#888}svg{display:block;margin-top:.3em}\
.frames{display:flex;flex-wrap:wrap;gap:4px;margin-top:.4em;max-width:248px}\
.frames figure{margin:0;font-size:11px;color:#444;text-align:center;font-variant-numeric:tabular-nums}\
img.frame{width:56px;height:auto;display:block;border:1px solid #ddd}.frames .more{font-size:12px;color:#444;align-self:center}\
.changed{max-width:70em}.changed .default{color:#555}.corpus th{white-space:nowrap}";

/// The indices of the frames a strip of `n` shows.
pub fn strip_indices(n: usize) -> Vec<usize> {
    if n <= STRIP {
        (0..n).collect()
    } else {
        (0..STRIP).map(|i| i * (n - 1) / (STRIP - 1)).collect()
    }
}

/// The step of a progress frame `.../step-000120.png`.
fn frame_step(rel: &str) -> Option<usize> {
    let name = rel.rsplit('/').next()?;
    name.strip_prefix("step-")?
        .strip_suffix(".png")?
        .parse()
        .ok()
}

/// The bytes of the image files a page would inline: each generated image, the frames of its
/// strip, each photo once (one larger than [`THUMBNAIL`] as [`THUMBNAIL_BYTES`]).
pub fn inline_bytes(r: &Report, layout: &Layout) -> u64 {
    let size = |rel: &str| std::fs::metadata(layout.root.join(rel)).map_or(0, |m| m.len());
    let mut photos = BTreeSet::new();
    let mut total = 0;
    for e in &r.phrases {
        let p = e.record;
        total += size(&p.image);
        total += strip_indices(p.frames.len())
            .into_iter()
            .map(|i| size(&p.frames[i]))
            .sum::<u64>();
        if let Some(ph) = p
            .photo
            .as_ref()
            .filter(|ph| photos.insert(ph.file.as_str()))
        {
            total += match image::image_dimensions(layout.root.join(&ph.file)) {
                Ok((w, h)) if w > THUMBNAIL || h > THUMBNAIL => THUMBNAIL_BYTES,
                _ => size(&ph.file),
            };
        }
    }
    total
}

/// Whether a page whose images come to `bytes` links them.
pub fn links(mode: GalleryImages, bytes: u64) -> bool {
    match mode {
        GalleryImages::Inline => false,
        GalleryImages::Link => true,
        GalleryImages::Auto => bytes > INLINE_LIMIT,
    }
}

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

/// The page being rendered: the report, its folder and whether images are linked.
struct Page<'a> {
    r: &'a Report<'a>,
    layout: &'a Layout,
    link: bool,
}

impl Page<'_> {
    /// An `<img class="{class}">` of a file of the run folder: inlined (photos as a thumbnail),
    /// or linked (and a link to the file); a note where the file is missing.
    fn img(&self, rel: &str, alt: &str, class: &str) -> String {
        let path = self.layout.root.join(rel);
        let missing = || format!("<span class=\"missing\">{} is missing</span>", text(rel));
        if self.link {
            if !path.is_file() {
                return missing();
            }
            let url = url_path(rel);
            return format!(
                "<a href=\"{}\"><img class=\"{class}\" src=\"{}\" alt=\"{}\" loading=\"lazy\"></a>",
                attr(&url),
                attr(&url),
                attr(alt)
            );
        }
        match data_uri(&path, class == "photo") {
            Some(src) => format!(
                "<img class=\"{class}\" src=\"{}\" alt=\"{}\">",
                attr(&src),
                attr(alt)
            ),
            None => missing(),
        }
    }

    /// The strip of an image's progress frames (at most [`STRIP`]), each with its step.
    fn strip(&self, p: &PhraseRecord) -> String {
        let n = p.frames.len();
        if n == 0 {
            return String::new();
        }
        let shown = strip_indices(n);
        let mut s = format!(
            "<div class=\"frames\" title=\"progress frames of the {} image\">",
            attr(p.generator.name())
        );
        for &i in &shown {
            let f = &p.frames[i];
            let step = frame_step(f).map_or(format!("frame {}", i + 1), |k| format!("step {k}"));
            let alt = format!("{}: {}, {step}", p.generator, p.phrase);
            let _ = write!(
                s,
                "<figure>{}<figcaption>{step}</figcaption></figure>",
                self.img(f, &alt, "frame")
            );
        }
        if shown.len() < n {
            let _ = write!(
                s,
                "<span class=\"more\">{} of {n} frames</span>",
                shown.len()
            );
        }
        s.push_str("</div>");
        s
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
<text x=\"2\" y=\"{}\" font-size=\"12\" fill=\"#444\">{:.3} → {:.3}, max {:.3}</text></svg>",
        h + 16.0,
        h + 16.0,
        steps.len(),
        lo,
        hi,
        points.join(" "),
        h + 13.0,
        steps[0].similarity,
        steps[steps.len() - 1].similarity,
        hi,
    )
}

fn caption_cell(c: Option<&ScoredCaption>) -> String {
    match c {
        None => "<td class=\"missing\">–</td>".into(),
        Some(c) => {
            let b = c.bleu.unsmoothed;
            format!(
                "<td>{}<div class=\"bleu\"><span>BLEU-1..4 <b>{:.2}</b> {:.2} {:.2} {:.2}</span><span>ROUGE-L <b>{}</b></span><span>CLIP text <b>{:.3}</b></span></div></td>",
                text(&c.caption),
                b[0],
                b[1],
                b[2],
                b[3],
                c.rouge_l.map_or("–".into(), |x| format!("{x:.2}")),
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
        "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td>",
        text(label),
        text(what),
        f.images
    );
    for x in b.into_iter().chain([f.cider_d, f.rouge_l]) {
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

/// A generator's settings, those that differ from the defaults in bold (with the default as a
/// tooltip).
fn settings_html(r: &Report, g: crate::generate::GeneratorKind) -> String {
    generator_setting_items(r.settings, g)
        .into_iter()
        .map(|(k, v)| {
            let name = format!("{g}.{k}");
            match r.changes.changed.iter().find(|c| c.name == name) {
                Some(c) => format!(
                    "<b title=\"default {}\">{} {}</b>",
                    attr(&c.default),
                    text(&k),
                    text(&v)
                ),
                None => format!("{} {}", text(&k), text(&v)),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One image's cell: the image, its scores, the chart of its guidance, the strip of its frames
/// and each captioner's caption of it.
fn image_cell(s: &mut String, page: &Page, p: &PhraseRecord) {
    let _ = write!(
        s,
        "<td>{}<div class=\"scores\"><span>CLIPScore <b>{:.4}</b></span><span>guide similarity <b>{:.4}</b></span><span>seed {}</span></div>{}{}<table class=\"caps\">",
        page.img(&p.image, &format!("{}: {}", p.generator, p.phrase), "generated"),
        p.clip_score.generated,
        p.final_similarity,
        p.seed,
        chart(&p.steps),
        page.strip(p)
    );
    for spec in &page.r.settings.captioners {
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
fn phrase_row(s: &mut String, page: &Page, line: usize, images: &[&PhraseRecord]) {
    let r = page.r;
    let Some(first) = images.first() else { return };
    let _ = write!(
        s,
        "<tr><td>{}<br><small>line {line}</small></td>",
        text(&first.phrase)
    );
    for g in &r.columns {
        match images.iter().find(|p| p.generator == *g) {
            Some(p) => image_cell(s, page, p),
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
                "<td>{}<div class=\"scores\"><span>CLIPScore <b>{}</b></span></div><table class=\"caps\">",
                page.img(&photo.file, &format!("photo: {}", first.phrase), "photo"),
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

/// The whole page, its images as `images` says ([`links`] of [`inline_bytes`] for `Auto`).
pub fn render(r: &Report, layout: &Layout, images: GalleryImages) -> anyhow::Result<String> {
    let link = match images {
        GalleryImages::Auto => links(images, inline_bytes(r, layout)),
        other => links(other, 0),
    };
    let page = Page { r, layout, link };
    let c = &r.corpus;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>roundtrip report</title><style>{STYLE}</style></head><body>"
    );
    let _ = writeln!(
        s,
        "<h1>roundtrip report</h1><p>{} phrases ({} with a real photo) from <code>{}</code>; generator {}, run seed {}, CLIP <code>{}</code>, captioners {} (beam {}){}.</p>",
        c.phrases,
        c.with_photo,
        text(r.prompts_file),
        text(&generators_summary(r)),
        r.settings.seed,
        text(&r.settings.clip),
        text(&captioner_labels(r.settings)),
        r.settings.beam,
        r.shard
            .as_ref()
            .map_or(String::new(), |k| format!(", shard {}", text(k)))
    );
    let preset = r.changes.preset.name();
    if r.changes.changed.is_empty() {
        let _ = writeln!(
            s,
            "<p class=\"changed\">Every setting is the <b>{preset}</b> preset's default.</p>"
        );
    } else {
        let items: Vec<String> = r
            .changes
            .changed
            .iter()
            .map(|c| {
                format!(
                    "<b>{}</b> {} <span class=\"default\">(default {})</span>",
                    text(&c.name),
                    text(&c.value),
                    text(&c.default)
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "<p class=\"changed\">Settings that differ from the <b>{preset}</b> preset's defaults: {}.</p>",
            items.join(", ")
        );
    }
    s.push_str("<ul class=\"generators\">");
    for g in &r.columns {
        let _ = write!(
            s,
            "<li><b>{}</b>: {}</li>",
            text(g.name()),
            settings_html(r, *g)
        );
    }
    s.push_str("</ul>\n");
    let _ = writeln!(
        s,
        "<h2>Corpus</h2><p>Corpus BLEU of each caption against its phrase (unsmoothed), CIDEr-D (document frequencies over these phrases) and ROUGE-L as pycocoevalcap computes them, mean CLIP text similarity of caption and phrase, and caption diversity, per captioner on each generator's images and on the real photos.{}</p>\
<table class=\"corpus\"><thead><tr><th>captioner</th><th>images</th><th>n</th><th>BLEU-1</th><th>BLEU-2</th><th>BLEU-3</th><th>BLEU-4</th><th>CIDEr-D</th><th>ROUGE-L</th><th>CLIP text sim</th><th>distinct (ratio)</th><th>most repeated caption</th></tr></thead><tbody>",
        if any_all_with_photo(c) {
            " A generator's “(phrases with a photo)” row is left out where every phrase it drew has a photo: its own row is then like for like with the photos'."
        } else {
            ""
        }
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
            let with_photo = match gc.clip_score.generated_with_photo {
                Some(x) => format!(" (phrases with a photo: {})", opt(Some(x))),
                None => String::new(),
            };
            let _ = write!(
                s,
                " {} <b>{}</b>{with_photo};",
                text(g.name()),
                opt(gc.clip_score.generated)
            );
        }
    }
    let _ = writeln!(s, " real photos <b>{}</b>.</p>", opt(c.photo.clip_score));
    s.push_str("<h2>Phrases</h2><table class=\"phrases\"><thead><tr><th>phrase</th>");
    for g in &r.columns {
        let _ = write!(
            s,
            "<th class=\"generator\">{}<br><small>{}</small></th>",
            text(g.name()),
            settings_html(r, *g)
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
        phrase_row(&mut s, &page, line, &images);
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

    #[test]
    fn strips_keep_the_first_and_last_frames() {
        assert_eq!(strip_indices(0), Vec::<usize>::new());
        assert_eq!(strip_indices(3), [0, 1, 2]);
        assert_eq!(strip_indices(STRIP), (0..STRIP).collect::<Vec<_>>());
        let many = strip_indices(420);
        assert_eq!((many.len(), many[0], many[STRIP - 1]), (STRIP, 0, 419));
        assert!(many.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(frame_step("images/a-1/step-000120.png"), Some(120));
        assert_eq!(frame_step("images/a-1/other.png"), None);
    }

    #[test]
    fn auto_links_beyond_the_limit() {
        assert!(!links(GalleryImages::Auto, INLINE_LIMIT));
        assert!(links(GalleryImages::Auto, INLINE_LIMIT + 1));
        assert!(!links(GalleryImages::Inline, u64::MAX));
        assert!(links(GalleryImages::Link, 0));
    }
}
