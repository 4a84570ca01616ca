//! `run --jobs`: images computed side by side, each on its share of the threads, give exactly
//! the results of one image at a time (so `--jobs` is no part of any key).

use super::*;

/// Every file of a run folder whose bytes are results (images, frames, latents, photos), by
/// path relative to the folder.
fn result_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = crate::common::dirs_under(dir)
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "png" || x == "safetensors")
        })
        .map(|p| {
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            (rel, std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// A JSON value without its wall-clock fields (`seconds` anywhere).
fn without_timings(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "seconds")
                .map(|(k, v)| (k.clone(), without_timings(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_timings).collect()),
        v => v.clone(),
    }
}

/// Three images on the shipped shapes models, with one job and with three: a phrase with a photo
/// drawn by BigGAN (6 steps) and SIREN (the preset's 150), both copying its photo, and a
/// `[biggan]` line. The same bytes in every image, frame, latents and photo file, and the same
/// records and report apart from the timings.
#[test]
fn jobs_give_the_same_results_as_one_image_at_a_time() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("run-jobs");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let prompts = root.join("p.txt");
    let photo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/prompts/shapes/a-big-red-circle-in-the-middle.png"
    );
    std::fs::write(
        &prompts,
        format!("a big red circle in the middle\t{photo}\n[biggan] a blue star and a red square\n"),
    )
    .unwrap();
    let mut runs = Vec::new();
    for jobs in ["1", "3"] {
        let out = root.join(format!("jobs-{jobs}"));
        let o = roundtrip(&[
            "run",
            prompts.to_str().unwrap(),
            "--preset",
            "shapes",
            "--generators",
            "biggan,siren",
            "--steps",
            "6",
            "--save-every",
            "3",
            "--jobs",
            jobs,
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ]);
        let stdout = ok(&o);
        assert!(stdout.contains("computed 3"), "{stdout}");
        runs.push(out);
    }
    let (one, three) = (result_files(&runs[0]), result_files(&runs[1]));
    assert_eq!(
        one.iter()
            .filter(|(p, _)| p.ends_with(".safetensors"))
            .count(),
        2,
        "two BigGAN images"
    );
    assert!(
        one.iter().any(|(p, _)| p.starts_with("photos")),
        "the photo copy"
    );
    assert_eq!(
        one.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        three.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for ((path, a), (_, b)) in one.iter().zip(&three) {
        assert!(a == b, "{path} differs between --jobs 1 and --jobs 3");
    }
    let report = |d: &Path| {
        let r = read_json(&d.join("report.json"));
        (
            without_timings(&r["phrases"]),
            without_timings(&r["corpus"]),
        )
    };
    assert_eq!(report(&runs[0]), report(&runs[1]));
    // The temporary files of concurrent writes are all gone.
    let stray: Vec<_> = std::fs::read_dir(runs[1].join("photos"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}
