//! The shapes world through the binary: `shapes dataset` writes a dataset the Flickr8k loader
//! reads without a single problem, and `shapes render` draws grammar phrases and rejects others
//! with exit code 2, naming the unknown words.

use std::path::Path;
use std::process::Output;

use crate::common::{ok, roundtrip};
use roundtrip::dataset::{Dataset, Layout};
use roundtrip::shapes::parse;

fn dataset(out: &Path, seed: &str, extra: &[&str]) -> Output {
    let out = out.to_str().unwrap();
    let args = [
        &[
            "shapes", "dataset", "--out", out, "--images", "40", "--size", "48", "--seed", seed,
        ][..],
        extra,
    ]
    .concat();
    roundtrip(&args)
}

#[test]
fn dataset_loads_with_every_split_and_caption() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("shapes");
    let stdout = ok(&dataset(&root, "11", &[]));
    assert!(stdout.contains("\timages 40\t"), "{stdout}");
    assert!(stdout.contains("\ttrain 32\tdev 4\ttest 4\t"), "{stdout}");
    let again = ok(&dataset(&root, "11", &["--force", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(
        (&v["images"], &v["train"], &v["test"]),
        (
            &serde_json::json!(40),
            &serde_json::json!(32),
            &serde_json::json!(4)
        ),
        "{v}"
    );

    let ds = Dataset::load(&root).unwrap();
    assert_eq!(ds.layout, Layout::Original);
    assert!(ds.problems.is_empty(), "{:?}", ds.problems);
    assert_eq!((ds.train.len(), ds.dev.len(), ds.test.len()), (32, 4, 4));
    assert_eq!(ds.captions.len(), 40);
    for (name, caps) in &ds.captions {
        assert!(
            name.starts_with("shape_") && name.ends_with(".png"),
            "{name}"
        );
        assert_eq!(caps.len(), 5, "{name}");
        let distinct: std::collections::BTreeSet<&String> = caps.iter().collect();
        assert_eq!(distinct.len(), 5, "{name}: {caps:?}");
        for c in caps {
            // Only the article "a" is lost to the captioners' normalisation.
            let kept: Vec<&str> = c.split(' ').filter(|w| *w != "a").collect();
            assert_eq!(roundtrip::text::normalize(c), kept, "{c}");
            parse(c).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let img = image::open(ds.image_path(name)).unwrap();
        assert_eq!((img.width(), img.height()), (48, 48));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("shapes.json")).unwrap()).unwrap();
    assert_eq!(
        (json["seed"].as_u64(), json["size"].as_u64()),
        (Some(11), Some(48))
    );

    // An occupied folder is refused (exit 2) unless --force, which replaces it.
    let o = dataset(&root, "12", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    let token = root.join("Flickr8k_text/Flickr8k.token.txt");
    let before = std::fs::read(&token).unwrap();
    ok(&dataset(&root, "12", &["--force"]));
    assert_ne!(std::fs::read(&token).unwrap(), before);
    ok(&dataset(&root, "11", &["--force"]));
    assert_eq!(
        std::fs::read(&token).unwrap(),
        before,
        "seed 11 again differs"
    );
}

#[test]
fn render_draws_grammar_phrases_and_names_unknown_words() {
    let d = tempfile::tempdir().unwrap();
    let png = d.path().join("out/red.png");
    let png_s = png.to_str().unwrap();
    let stdout = ok(&roundtrip(&[
        "shapes",
        "render",
        "a red circle left of a blue star",
        "--out",
        png_s,
        "--size",
        "96",
        "--seed",
        "3",
    ]));
    // Unspecified sizes were drawn and are reported.
    assert!(stdout.starts_with(png_s), "{stdout}");
    let drawn = stdout.trim_end().split('\t').nth(1).unwrap();
    let drawn = drawn.strip_prefix("drawn ").unwrap();
    assert!(
        drawn.contains("red circle to the left of a") && drawn.ends_with("blue star"),
        "{drawn}"
    );
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (96, 96));

    let jpg = d.path().join("a.jpg");
    ok(&roundtrip(&[
        "shapes",
        "render",
        "an orange star",
        "--out",
        jpg.to_str().unwrap(),
    ]));
    assert_eq!(&std::fs::read(&jpg).unwrap()[..2], &[0xff, 0xd8]);

    // The same file again needs --force.
    let again = roundtrip(&["shapes", "render", "a star", "--out", png_s]);
    assert_eq!(again.status.code(), Some(2));

    let bad = d.path().join("bad.png");
    let o = roundtrip(&[
        "shapes",
        "render",
        "a purple hexagon eating a circle",
        "--out",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown words"), "{err}");
    assert!(err.contains("\"hexagon\", \"eating\""), "{err}");
    assert!(!bad.exists());

    let o = roundtrip(&[
        "shapes",
        "render",
        "a red big circle",
        "--out",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("expected a shape"), "{err}");
}
