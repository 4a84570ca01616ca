//! Several generators in one run (`--generators siren,biggan`): every phrase drawn by each, a
//! `[prefix]` line by its own only, each image with its own seed and record; resume after adding
//! a generator, shards merged, corpus figures per generator and the gallery's columns.

use super::*;
use crate::common::fails_with;
use roundtrip::generate::GeneratorKind::{BigGan, Siren};
use roundtrip::run::{image_id, image_seed, phrase_id, phrase_seed};

const BIGGAN: [&str; 4] = [
    "--biggan",
    "tests/fixtures/biggan_tiny",
    "--save-every",
    "0",
];

/// A prompts file of two free lines (one with a photo) and a line pinned to SIREN.
fn prompts(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir.join("photos")).unwrap();
    std::fs::copy(
        "tests/data/run/photos/red-square.png",
        dir.join("photos/red-square.png"),
    )
    .unwrap();
    let p = dir.join("p.txt");
    std::fs::write(
        &p,
        "a red square\tphotos/red-square.png\na yellow circle\n[siren] a blue circle\n",
    )
    .unwrap();
    p
}

fn with(extra: &[&'static str]) -> Vec<&'static str> {
    BIGGAN.iter().chain(extra).copied().collect()
}

#[test]
fn two_generators_draw_each_phrase_side_by_side_and_a_pinned_line_once() {
    let dir = fixture().root.join("generators");
    let _ = std::fs::remove_dir_all(&dir);
    let p = prompts(&dir);
    let p = p.to_str().unwrap();
    let out = dir.join("run");

    // One generator first, then BigGAN added: only its two images are computed.
    let s = ok(&run(p, &out, &with(&["--generators", "siren"])));
    assert_eq!((count(&s, "computed"), count(&s, "images")), (3, 3), "{s}");
    let s = ok(&run(p, &out, &with(&["--generators", "siren,biggan"])));
    assert_eq!(
        (
            count(&s, "phrases"),
            count(&s, "images"),
            count(&s, "computed"),
            count(&s, "reused")
        ),
        (3, 5, 2, 3),
        "{s}"
    );

    let report = read_json(&out.join("report.json"));
    let r: Report = serde_json::from_value(report.clone()).unwrap();
    assert_eq!(r.schema_version, 6);
    let got: Vec<(usize, &str, &str)> = r
        .phrases
        .iter()
        .map(|p| (p.line, p.phrase.as_str(), p.generator.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1, "a red square", "siren"),
            (1, "a red square", "biggan"),
            (2, "a yellow circle", "siren"),
            (2, "a yellow circle", "biggan"),
            (3, "a blue circle", "siren"),
        ]
    );
    for e in &r.phrases {
        // The first generator keeps the one-generator seed and files; BigGAN's are its own.
        let first = e.generator == "siren";
        let kind = if first { Siren } else { BigGan };
        assert_eq!(e.seed, image_seed(11, &e.phrase, kind, first));
        assert_eq!(e.id, image_id(&e.phrase, kind, first));
        assert!(out.join(&e.image).is_file(), "{}", e.image);
        assert!(out.join("phrases").join(format!("{}.json", e.id)).is_file());
    }
    assert_eq!(r.phrases[0].seed, phrase_seed(11, "a red square"));
    assert_ne!(r.phrases[0].seed, r.phrases[1].seed);
    assert_ne!(r.phrases[0].image, r.phrases[1].image);
    assert_eq!(
        r.phrases[1].id,
        format!("{}-biggan", phrase_id("a red square"))
    );
    // Both images of the photo's phrase share its one copy and its captions.
    assert_eq!(
        r.phrases[0].photo.as_ref().unwrap().file,
        r.phrases[1].photo.as_ref().unwrap().file
    );
    assert_eq!(
        std::fs::read_dir(out.join("phrases")).unwrap().count(),
        5,
        "one record per image"
    );

    // Corpus figures per generator, the photos' once.
    let c = &r.corpus;
    assert_eq!((c.phrases, c.with_photo), (3, 1));
    let (siren, biggan) = (&c.generators["siren"], &c.generators["biggan"]);
    assert_eq!((siren.images, siren.with_photo), (3, 1));
    assert_eq!((biggan.images, biggan.with_photo), (2, 1));
    for label in ["vgg16", "xception"] {
        assert_eq!(siren.captioners[label].generated.images, 3);
        assert_eq!(biggan.captioners[label].generated.images, 2);
        let with_photo = biggan.captioners[label].generated_with_photo.as_ref();
        assert_eq!(with_photo.map(|f| f.images), Some(1));
        let photo = c.photo.captioners[label].as_ref().unwrap();
        assert_eq!(photo.images, 1, "the photo counted once, not per generator");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| vgg16 | biggan | 2 |"), "{md}");
    assert!(md.contains("| vgg16 | siren | 3 |"), "{md}");
    assert!(md.contains("| vgg16 | real photo | 1 |"), "{md}");

    // The gallery: phrase | siren | biggan | real photo, the pinned line's BigGAN cell empty.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let doc = scraper::Html::parse_document(&html);
    assert!(doc.errors.is_empty(), "HTML parse errors: {:?}", doc.errors);
    let sel = |s: &str| scraper::Selector::parse(s).unwrap();
    let heads: Vec<String> = doc
        .select(&sel("table.phrases > thead th"))
        .map(|h| h.text().collect())
        .collect();
    assert_eq!(heads.len(), 4, "{heads:?}");
    assert!(
        heads[0] == "phrase" && heads[3] == "real photo",
        "{heads:?}"
    );
    assert!(
        heads[1].starts_with("siren") && heads[1].contains("steps 30"),
        "{heads:?}"
    );
    assert!(
        heads[2].starts_with("biggan") && heads[2].contains("steps 100"),
        "{heads:?}"
    );
    let rows: Vec<_> = doc.select(&sel("table.phrases > tbody > tr")).collect();
    assert_eq!(rows.len(), 3, "one row per phrase");
    let cells = |i: usize| -> Vec<String> {
        rows[i]
            .select(&sel(":scope > td"))
            .map(|c| c.text().collect())
            .collect()
    };
    assert_eq!(cells(0).len(), 4);
    let seeds = |i: usize, col: usize| {
        cells(i)[col].contains(&format!("seed {}", r.phrases[i * 2 + col - 1].seed))
    };
    assert!(seeds(0, 1) && seeds(0, 2) && seeds(1, 1) && seeds(1, 2));
    assert!(
        cells(2)[2].contains("drawn with siren only"),
        "{:?}",
        cells(2)
    );
    assert!(cells(0)[3].contains("CLIPScore"), "{:?}", cells(0));
    assert_eq!(
        doc.select(&sel("table.phrases img.generated")).count(),
        5,
        "five generated images"
    );
    assert_eq!(doc.select(&sel("table.phrases img.photo")).count(), 1);
    assert_eq!(doc.select(&sel("img.frame")).count(), 0, "--save-every 0");

    // Shards merged give the same report; the merged folder resumes with nothing to compute.
    let args = with(&["--generators", "siren,biggan"]);
    let mut shards = Vec::new();
    for k in 1..=2 {
        let d = dir.join(format!("shard{k}"));
        let spec = format!("{k}/2");
        let mut e: Vec<&str> = args.clone();
        e.extend(["--shard", spec.as_str()]);
        ok(&run(p, &d, &e));
        shards.push(d.to_str().unwrap().to_owned());
    }
    let merged = dir.join("merged");
    let mut m = vec!["merge"];
    m.extend(shards.iter().map(String::as_str));
    m.extend([
        "--out",
        merged.to_str().unwrap(),
        "--gallery-images",
        "link",
    ]);
    let s = ok(&roundtrip(&m));
    assert!(s.contains("phrases 3\tshards 2\timages 5"), "{s}");
    assert_eq!(
        without_timings(read_json(&merged.join("report.json"))),
        without_timings(report)
    );
    let csv = |d: &Path| std::fs::read_to_string(d.join("report.csv")).unwrap();
    assert_eq!(csv(&merged), csv(&out));
    // 2 captioners x (5 images + the photo beside each of its phrase's 2 images).
    assert_eq!(csv(&out).lines().count(), 1 + 2 * (5 + 2));
    // The merged gallery links its images (lazily loaded) instead of inlining them.
    let html = std::fs::read_to_string(merged.join("report.html")).unwrap();
    let doc = scraper::Html::parse_document(&html);
    assert!(doc.errors.is_empty(), "HTML parse errors: {:?}", doc.errors);
    let imgs: Vec<_> = doc.select(&sel("img")).collect();
    assert_eq!(imgs.len(), 5 + 1);
    for i in imgs {
        let src = i.value().attr("src").unwrap();
        assert!(merged.join(src).is_file(), "{src}");
        assert_eq!(i.value().attr("loading"), Some("lazy"));
    }
    assert!(!html.contains("data:image/"));
    assert_eq!(count(&ok(&run(p, &merged, &args)), "computed"), 0);
}

#[test]
fn bad_generator_lists_are_input_errors_naming_the_value() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let o = out.to_str().unwrap();
    for (list, named) in [
        ("siren,foo", "unknown generator `foo`"),
        ("", "empty name"),
        ("siren,,biggan", "empty name"),
        ("siren,biggan,siren", "`siren` is listed twice"),
    ] {
        let got = roundtrip(&["run", PROMPTS, "--out", o, "--generators", list, "--quiet"]);
        fails_with(&got, &["--generators", &format!("`{list}`"), named]);
        assert!(!out.exists(), "{list}: nothing is written");
    }
    let got = roundtrip(&[
        "run",
        PROMPTS,
        "--out",
        o,
        "--generator",
        "biggan",
        "--generators",
        "siren",
    ]);
    fails_with(&got, &["--generators", "--generator"]);
}
