//! The fixed-seed golden report on the shipped shapes models, read back into the test's own
//! types, and the HTML gallery.

use super::*;
use roundtrip::generate::GeneratorKind;

/// The golden run: the shipped shapes models (`--preset shapes`: SIREN and the shapes BigGAN),
/// three phrases (two with photos), run seed 11, 30 SIREN steps (BigGAN keeps the preset's
/// 100), a frame every 10 steps.
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
    assert!(
        stdout.contains("phrases 3\tcomputed 6\treused 0\tupdated 0\timages 6"),
        "{stdout}"
    );
    out
}

#[test]
fn golden_report_matches() {
    let dir = golden_run();
    let report = read_json(&dir.join("report.json"));
    let r: Report = serde_json::from_value(report.clone()).unwrap();
    assert_eq!(r.schema_version, 6);
    // Each phrase drawn by SIREN, then by the shapes BigGAN.
    let images: Vec<(usize, &str, &str)> = r
        .phrases
        .iter()
        .map(|p| (p.line, p.phrase.as_str(), p.generator.as_str()))
        .collect();
    let mut want = Vec::new();
    for (line, phrase) in [
        (2, "a big red circle in the middle"),
        (3, "a small green circle below a big yellow triangle"),
        (4, "a blue star and a red square"),
    ] {
        want.extend([(line, phrase, "siren"), (line, phrase, "biggan")]);
    }
    assert_eq!(images, want);
    for p in &r.phrases {
        assert!(dir.join(&p.image).is_file(), "{}", p.image);
        let (kind, first, steps) = match p.generator.as_str() {
            "siren" => (GeneratorKind::Siren, true, 30),
            _ => (GeneratorKind::BigGan, false, 100),
        };
        assert_eq!(p.frames.len(), steps / 10 - 1, "a frame every 10 steps");
        assert!(p.frames.iter().all(|f| dir.join(f).is_file()));
        assert_eq!(p.steps.len(), steps);
        assert_eq!(p.photo.is_some(), p.clip_score.photo.is_some());
        assert!((0.0..=2.5).contains(&p.clip_score.generated));
        assert_eq!(
            p.seed,
            roundtrip::run::image_seed(11, &p.phrase, kind, first)
        );
        assert_eq!(p.id, roundtrip::run::image_id(&p.phrase, kind, first));
        for (label, c) in &p.captions {
            assert_eq!(c.photo.is_some(), p.photo.is_some(), "{label}");
            for cap in std::iter::once(&c.generated).chain(&c.photo) {
                // Recomputed BLEU agrees with the report's.
                let b = roundtrip::metrics::captions::caption_bleu(&p.phrase, &cap.caption);
                assert_eq!(b.unsmoothed, cap.bleu.unsmoothed);
                assert_eq!(b.method1, cap.bleu.method1);
                let tokens = roundtrip::text::normalize(&p.phrase);
                let rouge = roundtrip::metrics::captions::caption_rouge_l(&tokens, &cap.caption);
                assert_eq!(rouge, cap.rouge_l);
                assert!((-1.0..=1.0).contains(&cap.clip_text_similarity));
            }
        }
        if let Some(ph) = &p.photo {
            assert!(dir.join(&ph.file).is_file());
        }
    }
    // BigGAN's latents are saved beside its image.
    for (i, p) in r.phrases.iter().enumerate() {
        let latents = report["phrases"][i]["latents"].as_str();
        assert_eq!(latents.is_some(), p.generator == "biggan", "{}", p.id);
        assert!(latents.is_none_or(|l| dir.join(l).is_file()));
    }
    assert_eq!((r.corpus.phrases, r.corpus.with_photo), (3, 2));
    let mut generators: Vec<&String> = r.corpus.generators.keys().collect();
    generators.sort();
    assert_eq!(generators, ["biggan", "siren"]);
    for (name, label) in ["siren", "biggan"]
        .into_iter()
        .flat_map(|g| ["vgg16", "xception"].map(|l| (g, l)))
    {
        let g = &r.corpus.generators[name];
        assert_eq!((g.images, g.with_photo), (3, 2));
        let c = &g.captioners[label];
        let photo = r.corpus.photo.captioners[label].as_ref().unwrap();
        let with_photo = c.generated_with_photo.as_ref().unwrap();
        assert_eq!(
            (c.generated.images, with_photo.images, photo.images),
            (3, 2, 2)
        );
        assert!(c.generated.distinct_captions >= 1 && c.generated.most_common_count >= 1);
        assert!(photo.bleu.method1[0] >= 0.0 && c.generated.bleu.unsmoothed[0] <= 1.0);
        // The corpus ROUGE-L is the mean of the captions'; CIDEr-D is recomputed from them.
        let mine: Vec<_> = r.phrases.iter().filter(|p| p.generator == name).collect();
        let gen: Vec<&Caption> = mine.iter().map(|p| &p.captions[label].generated).collect();
        let mean = gen.iter().map(|c| c.rouge_l).sum::<f64>() / gen.len() as f64;
        assert!((c.generated.rouge_l - mean).abs() < 1e-12);
        let hyps: Vec<Vec<String>> = gen
            .iter()
            .map(|c| roundtrip::text::normalize(&c.caption))
            .collect();
        let refs: Vec<Vec<Vec<String>>> = mine
            .iter()
            .map(|p| vec![roundtrip::text::normalize(&p.phrase)])
            .collect();
        let cider = roundtrip::metrics::cider::cider_d(&hyps, &refs).corpus;
        assert_eq!(c.generated.cider_d, cider);
        assert!(photo.cider_d >= 0.0 && (0.0..=1.0).contains(&photo.rouge_l));
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
    let count = |s: &str| doc.select(&sel(s)).count();
    assert_eq!(
        (count("img.generated"), count("img.photo")),
        (4, 2),
        "four generated images and two photos"
    );
    for i in doc.select(&sel("img")) {
        let src = i.value().attr("src").unwrap();
        assert!(
            src.starts_with("data:image/"),
            "a small run inlines its images: {}",
            &src[..40.min(src.len())]
        );
    }
    assert_eq!(count("svg polyline"), 4, "one chart per phrase");
    // The progress frames (steps 10 and 20 of 30) as a strip under each image, step by step.
    let strips: Vec<_> = doc.select(&sel("td > div.frames")).collect();
    assert_eq!(strips.len(), 4, "one strip per image");
    for strip in &strips {
        let steps: Vec<String> = strip
            .select(&sel("figure > figcaption"))
            .map(|c| c.text().collect())
            .collect();
        assert_eq!(steps, ["step 10", "step 20"]);
        assert_eq!(strip.select(&sel("img.frame")).count(), 2);
    }
    // Scores as text of their own (not fine print).
    let scores: Vec<String> = doc
        .select(&sel("table.phrases div.scores"))
        .map(|d| d.text().collect())
        .collect();
    assert_eq!(scores.len(), 4 + 2, "{scores:?}");
    assert!(scores[0].contains("CLIPScore") && scores[0].contains("seed "));
    assert_eq!(count("script, link, iframe"), 0);
    assert!(!html.contains("http://") && !html.contains("https://"));
    // The header names the settings that differ from the defaults (the tests' tiny models,
    // seed and SIREN against the real preset).
    let changed: String = doc
        .select(&sel("p.changed"))
        .flat_map(|p| p.text())
        .collect();
    for want in [
        "real preset",
        "seed 11 (default 0)",
        "siren.steps 30 (default 200)",
        "siren.size 32 (default 128)",
        "save_every 10 (default 50)",
        "clip tests/fixtures/clip_tiny (default clip-vit-b32)",
    ] {
        assert!(changed.contains(want), "{want}: {changed}");
    }
    assert!(!changed.contains("siren.w0"), "{changed}");
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("| vgg16 | real photo | 2 |"), "{md}");
    assert!(md.contains("| xception | siren | 4 |"), "{md}");
    // Two of the four phrases have a photo: like-for-like rows of those two.
    assert!(
        md.contains("| xception | siren (phrases with a photo) | 2 |"),
        "{md}"
    );
    assert!(md.contains("siren.steps 30 (default 200)"), "{md}");
    // report.md links each image, its frames and the photo beside it.
    let links: Vec<&str> = md
        .split("](")
        .skip(1)
        .filter_map(|s| s.split(')').next())
        .collect();
    assert_eq!(links.len(), 4 + 4 + 2, "{links:?}");
    for l in &links {
        assert!(dir.join(l).exists(), "{l}");
    }
    // One column per generator beside the real photo, its header naming its settings.
    let heads: Vec<String> = doc
        .select(&sel("table.phrases > thead th"))
        .map(|h| h.text().collect())
        .collect();
    assert_eq!(heads.len(), 3, "{heads:?}");
    assert!(
        heads[1].starts_with("siren") && heads[1].contains("steps 30"),
        "{heads:?}"
    );
    assert_eq!(heads[2], "real photo");
}

/// A row of report.csv as a script reads it.
#[derive(Debug, serde::Deserialize)]
struct CsvRow {
    line: usize,
    phrase: String,
    generator: String,
    seed: Option<u64>,
    image_kind: String,
    image: String,
    captioner: String,
    caption: String,
    bleu1: f64,
    bleu2: f64,
    bleu3: f64,
    bleu4: f64,
    bleu1_method1: f64,
    bleu2_method1: f64,
    bleu3_method1: f64,
    bleu4_method1: f64,
    rouge_l: f64,
    clip_text_similarity: f64,
    clip_score: Option<f64>,
    final_similarity: Option<f64>,
}

/// report.csv of a run folder, read back.
fn read_csv(dir: &Path) -> Vec<CsvRow> {
    let mut r = csv::Reader::from_path(dir.join("report.csv")).unwrap();
    let heads: Vec<String> = r.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(heads.len(), 20, "{heads:?}");
    r.deserialize().map(|row| row.unwrap()).collect()
}

#[test]
fn the_csv_has_a_row_per_phrase_generator_captioner_and_image_kind() {
    let dir = complete_run();
    let rows = read_csv(dir);
    let r: Report = serde_json::from_value(read_json(&dir.join("report.json"))).unwrap();
    // Four phrases' images and two photos, by two captioners.
    assert_eq!(rows.len(), (4 + 2) * 2);
    let mut want = Vec::new();
    for p in &r.phrases {
        for (label, c) in &p.captions {
            want.push((p, label, "generated", &c.generated));
            if let Some(ph) = &c.photo {
                want.push((p, label, "photo", ph));
            }
        }
    }
    assert_eq!(want.len(), rows.len());
    for (row, (p, label, kind, c)) in rows.iter().zip(want) {
        assert_eq!(
            (
                row.line,
                row.phrase.as_str(),
                row.generator.as_str(),
                row.captioner.as_str(),
                row.image_kind.as_str(),
                row.caption.as_str()
            ),
            (
                p.line,
                p.phrase.as_str(),
                "siren",
                label.as_str(),
                kind,
                c.caption.as_str()
            )
        );
        let bleu = [row.bleu1, row.bleu2, row.bleu3, row.bleu4];
        let method1 = [
            row.bleu1_method1,
            row.bleu2_method1,
            row.bleu3_method1,
            row.bleu4_method1,
        ];
        assert_eq!((bleu, method1), (c.bleu.unsmoothed, c.bleu.method1));
        assert_eq!(row.clip_text_similarity, c.clip_text_similarity);
        assert_eq!(row.rouge_l, c.rouge_l);
        if kind == "generated" {
            assert_eq!(row.image, p.image);
            assert_eq!(row.seed, Some(p.seed));
            assert_eq!(row.clip_score, Some(p.clip_score.generated));
            assert!(row.final_similarity.is_some());
        } else {
            assert_eq!(row.image, p.photo.as_ref().unwrap().file);
            assert_eq!((row.seed, row.final_similarity), (None, None));
            assert_eq!(row.clip_score, p.clip_score.photo);
        }
        assert!(dir.join(&row.image).is_file(), "{}", row.image);
    }
}

#[test]
fn every_phrase_with_a_photo_repeats_no_rows() {
    // The complete run's two phrases with a photo, from its records.
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    crate::common::copy_dir(complete_run(), &out);
    let prompts = d.path().join("p.txt");
    let photos: Vec<String> = std::fs::read_to_string(PROMPTS)
        .unwrap()
        .lines()
        .filter(|l| l.contains('\t') && !l.starts_with('#'))
        .map(|l| {
            let (phrase, photo) = l.split_once('\t').unwrap();
            let to = d.path().join(photo);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(Path::new(PROMPTS).parent().unwrap().join(photo), &to).unwrap();
            format!("{phrase}\t{photo}\n")
        })
        .collect();
    assert_eq!(photos.len(), 2);
    std::fs::write(&prompts, photos.concat()).unwrap();
    let s = ok(&run(prompts.to_str().unwrap(), &out, &[]));
    assert_eq!(count(&s, "images"), 2, "{s}");

    let report = read_json(&out.join("report.json"));
    let siren = &report["corpus"]["generators"]["siren"];
    assert_eq!(siren["images"], 2);
    assert_eq!(siren["with_photo"], 2);
    assert!(siren["clip_score"]["generated"].is_number());
    assert!(siren["clip_score"]["generated_with_photo"].is_null());
    for label in ["vgg16", "xception"] {
        let c = &siren["captioners"][label];
        assert_eq!(c["generated"]["images"], 2);
        assert!(c["generated_with_photo"].is_null(), "{c}");
    }
    let r: Report = serde_json::from_value(report).unwrap();
    assert_eq!(
        r.corpus.photo.captioners["vgg16"].as_ref().unwrap().images,
        2
    );

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(!md.contains("(phrases with a photo) |"), "{md}");
    assert!(!md.contains("phrases with a photo:"), "{md}");
    assert!(md.contains("| vgg16 | siren | 2 |"), "{md}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let doc = scraper::Html::parse_document(&html);
    let sel = |s: &str| scraper::Selector::parse(s).unwrap();
    let rows: Vec<String> = doc
        .select(&sel("table.corpus > tbody > tr"))
        .map(|r| r.text().collect())
        .collect();
    assert_eq!(
        rows.len(),
        2 * 2,
        "per captioner: siren and the photos: {rows:?}"
    );
    assert!(rows.iter().all(|r| !r.contains("with a photo")), "{rows:?}");
}
