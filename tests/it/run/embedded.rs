//! An installed binary's `--preset shapes`: the shapes models embedded in the binary, used from a
//! working directory with no repository around, keyed as the repository's folders are; their copy
//! in the cache shared by concurrent processes and rewritten when damaged.

use super::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The binary in `cwd`, offline, with its cache in `cache`.
fn roundtrip_in(cwd: &Path, cache: &Path, args: &[&str]) -> std::process::Command {
    let mut c = crate::common::bin();
    c.args(args)
        .current_dir(cwd)
        .env("HF_HUB_OFFLINE", "1")
        .env("ROUNDTRIP_CACHE", cache);
    c
}

/// The stage keys of a run folder's records (one per image), by file name.
fn stage_keys(run: &Path) -> Vec<(String, Value)> {
    let dir = run.join("phrases");
    let mut records: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    records.sort();
    assert_eq!(records.len(), 2, "SIREN's and BigGAN's: {records:?}");
    records
        .iter()
        .map(|r| {
            let name = r.file_name().unwrap().to_string_lossy().into_owned();
            (name, read_json(r)["stages"].clone())
        })
        .collect()
}

#[test]
fn preset_shapes_runs_anywhere_with_the_embedded_models_keyed_as_the_repository_folders() {
    let d = tempfile::tempdir().unwrap();
    let (cwd, cache) = (d.path().join("elsewhere"), d.path().join("cache"));
    // The working directory's own models/shapes/clip (the tiny fixture CLIP) is not the preset's.
    let decoy = cwd.join("models/shapes/clip");
    std::fs::create_dir_all(&decoy).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(Path::new(ROOT).join(CLIP).join(f), decoy.join(f)).unwrap();
    }
    std::fs::write(cwd.join("p.txt"), "a big red circle in the middle\n").unwrap();
    let args = ["run", "p.txt", "--preset", "shapes", "--steps", "2"];
    let o = roundtrip_in(&cwd, &cache, &args)
        .args(["--out", "R", "--quiet"])
        .output()
        .unwrap();
    assert!(ok(&o).contains("phrases 1\tcomputed 2\treused 0\tupdated 0\timages 2"));
    let manifest = read_json(&cwd.join("R/run.json"));
    assert_eq!(
        manifest["settings"]["clip"],
        "models/shapes/clip (embedded)"
    );
    assert_eq!(
        manifest["settings"]["captioners"][0]["dir"],
        "models/shapes/vgg16 (embedded)"
    );
    // The preset draws with both generators, BigGAN from the embedded shapes BigGAN.
    assert_eq!(
        manifest["settings"]["generators"],
        serde_json::json!(["siren", "biggan"])
    );
    assert_eq!(
        manifest["settings"]["biggan"]["model"],
        "models/shapes/biggan (embedded)"
    );
    assert_eq!(manifest["models"]["biggan"]["source"], "embedded");
    let clip = &manifest["models"]["clip"];
    assert_eq!(clip["source"], "embedded");
    let copy = PathBuf::from(clip["path"].as_str().unwrap());
    assert!(copy.starts_with(cache.join("embedded")), "{copy:?}");

    // The repository's folders, named explicitly, give the same record keys.
    let m = format!("{ROOT}/models/shapes");
    let o = roundtrip_in(&cwd, &cache, &args)
        .args(["--out", "F", "--quiet", "--clip", &format!("{m}/clip")])
        .args(["--biggan", &format!("{m}/biggan")])
        .arg("--captioners")
        .arg(format!("vgg16={m}/vgg16,xception={m}/xception"))
        .output()
        .unwrap();
    ok(&o);
    assert_eq!(stage_keys(&cwd.join("R")), stage_keys(&cwd.join("F")));
    let folders = read_json(&cwd.join("F/run.json"));
    for model in ["clip", "biggan", "captioner:vgg16", "captioner:xception"] {
        assert_eq!(
            manifest["models"][model]["fingerprint"], folders["models"][model]["fingerprint"],
            "{model}"
        );
    }
}

#[test]
fn concurrent_processes_share_one_copy_and_a_damaged_copy_is_rewritten() {
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    let resolve = || {
        roundtrip_in(
            d.path(),
            &cache,
            &[
                "models",
                "resolve",
                "models/shapes/clip (embedded)",
                "--file",
                "model.safetensors",
            ],
        )
    };
    let children: Vec<_> = (0..4)
        .map(|_| {
            resolve()
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let paths: Vec<String> = children
        .into_iter()
        .map(|c| {
            let v: Value = serde_json::from_str(&ok(&c.wait_with_output().unwrap())).unwrap();
            v["files"]["model.safetensors"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(paths.iter().all(|p| p == &paths[0]), "{paths:?}");
    let weights = PathBuf::from(&paths[0]);
    let shipped = std::fs::read(format!("{ROOT}/models/shapes/clip/model.safetensors")).unwrap();
    assert_eq!(std::fs::read(&weights).unwrap(), shipped);
    let parent = weights.parent().unwrap().parent().unwrap();
    let left: Vec<String> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["clip"], "no temporary folder or lock file left");

    let mut damaged = shipped.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    std::fs::write(&weights, damaged).unwrap();
    let o = resolve().output().unwrap();
    ok(&o);
    let e = crate::common::stderr(&o);
    assert!(
        e.contains("was damaged") && e.contains("`model.safetensors` differs"),
        "{e}"
    );
    assert_eq!(std::fs::read(&weights).unwrap(), shipped);
}
