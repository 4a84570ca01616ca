//! The fixed-seed golden report on the shipped shapes models, read back into the test's own
//! types, and the HTML gallery.

use super::*;

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
    assert_eq!(r.schema_version, 3);
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
        assert_eq!(p.generator, "siren");
        assert_eq!(p.id, roundtrip::run::phrase_id(&p.phrase));
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
    assert_eq!(r.corpus.generators.keys().collect::<Vec<_>>(), ["siren"]);
    let siren = &r.corpus.generators["siren"];
    assert_eq!((siren.images, siren.with_photo), (3, 2));
    for label in ["vgg16", "xception"] {
        let c = &siren.captioners[label];
        let photo = r.corpus.photo.captioners[label].as_ref().unwrap();
        let with_photo = c.generated_with_photo.as_ref().unwrap();
        assert_eq!(
            (c.generated.images, with_photo.images, photo.images),
            (3, 2, 2)
        );
        assert!(c.generated.distinct_captions >= 1 && c.generated.most_common_count >= 1);
        assert!(photo.bleu.method1[0] >= 0.0 && c.generated.bleu.unsmoothed[0] <= 1.0);
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
    assert!(md.contains("| xception | siren | 4 |"), "{md}");
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
