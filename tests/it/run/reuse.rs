//! What a rerun keeps and recomputes: a killed run resumed, shards merged, changed settings,
//! replaced captioners and damaged files recomputed stage by stage, one writer per folder, bad
//! input refused before any work, and BigGAN lines.

use super::*;

#[test]
fn a_killed_run_resumes_to_the_same_report() {
    let want = without_timings(read_json(&complete_run().join("report.json")));
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    let args = run_args(PROMPTS, &out, &[]);
    let mut child = crate::common::bin()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it as soon as the first phrase is finished: mid-way through the second.
    let t0 = Instant::now();
    let first = loop {
        let done: Vec<PathBuf> = std::fs::read_dir(out.join("phrases"))
            .map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        if let Some(p) = done
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "json"))
        {
            break p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no phrase finished"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the run finished before it was killed: make its phrases slower"
    );
    assert!(!out.join("report.json").exists());
    let before = std::fs::read(&first).unwrap();
    let stdout = ok(&run(PROMPTS, &out, &[]));
    let (computed, reused) = (count(&stdout, "computed"), count(&stdout, "reused"));
    assert!(
        reused >= 1 && computed >= 1 && computed + reused == 4,
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(&first).unwrap(),
        before,
        "the finished phrase is kept"
    );
    let got = without_timings(read_json(&out.join("report.json")));
    assert_eq!(got, want);
    // A third run has nothing left to do.
    let again = ok(&run(PROMPTS, &out, &[]));
    assert!(again.contains("computed 0\treused 4"), "{again}");
}

#[test]
fn shards_merge_to_the_single_run_report() {
    let whole = complete_run();
    let d = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    let mut counts = 0;
    for k in 1..=3 {
        let out = d.path().join(format!("shard{k}"));
        let stdout = ok(&run(PROMPTS, &out, &["--shard", &format!("{k}/3")]));
        counts += count(&stdout, "phrases");
        let shard_report = read_json(&out.join("report.json"));
        assert_eq!(shard_report["shard"], format!("{k}/3"));
        dirs.push(out.to_str().unwrap().to_owned());
    }
    assert_eq!(counts, 4, "the shards partition the phrases");

    let merged = d.path().join("merged");
    let missing = fails(&roundtrip(&[
        "merge",
        &dirs[0],
        &dirs[2],
        "--out",
        merged.to_str().unwrap(),
    ]));
    assert!(missing.contains("shards 2/3 are missing"), "{missing}");
    assert!(!merged.exists(), "nothing written on a refused merge");

    let mut args = vec!["merge"];
    args.extend(dirs.iter().map(String::as_str));
    args.extend(["--out", merged.to_str().unwrap()]);
    let stdout = ok(&roundtrip(&args));
    assert!(stdout.contains("phrases 4\tshards 3"), "{stdout}");
    assert_eq!(
        without_timings(read_json(&merged.join("report.json"))),
        without_timings(read_json(&whole.join("report.json")))
    );
    // The merged folder is a complete run: running it again recomputes nothing.
    let again = ok(&run(PROMPTS, &merged, &[]));
    assert!(again.contains("computed 0\treused 4"), "{again}");
}

#[test]
fn changed_settings_recompute_only_what_depends_on_them() {
    let d = tempfile::tempdir().unwrap();
    let prompts = d.path().join("p.txt");
    std::fs::write(&prompts, "a red <script>alert(1)</script> & \"square\"\n").unwrap();
    let p = prompts.to_str().unwrap();
    let out = d.path().join("run");
    ok(&run(p, &out, &["--steps", "2"]));
    // Other generator settings: the image is generated again, named on stderr.
    let o = run(p, &out, &["--steps", "3"]);
    let stdout = ok(&o);
    assert!(stdout.contains("computed 1\treused 0"), "{stdout}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("siren.steps: 2 -> 3"), "{err}");
    let fresh = d.path().join("fresh");
    ok(&run(p, &fresh, &["--steps", "3"]));
    let report = |dir: &Path| without_timings(read_json(&dir.join("report.json")));
    assert_eq!(report(&out), report(&fresh));
    // Another beam: the image is kept, the captions recomputed.
    let o = run(p, &out, &["--steps", "3", "--beam", "2"]);
    let stdout = ok(&o);
    assert!(
        stdout.contains("computed 0\treused 0\tupdated 1"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("beam: 1 -> 2"));
    // --force throws everything away.
    let stdout = ok(&run(p, &out, &["--steps", "3", "--force"]));
    assert!(stdout.contains("computed 1\treused 0"), "{stdout}");
    assert_eq!(report(&out), report(&fresh));

    // The phrase is text in the gallery, never markup.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let doc = scraper::Html::parse_document(&html);
    let script = scraper::Selector::parse("script").unwrap();
    assert_eq!(doc.select(&script).count(), 0);
    let td = scraper::Selector::parse("table.phrases td").unwrap();
    let cell: String = doc.select(&td).next().unwrap().text().collect();
    assert!(
        cell.starts_with("a red <script>alert(1)</script> & \"square\""),
        "{cell}"
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("a red &lt;script&gt;alert(1)&lt;/script&gt; &amp; \"square\""),
        "{md}"
    );
}

#[test]
fn bad_input_fails_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let o = out.as_path();
    let write = |name: &str, text: &[u8]| {
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let good = write("good.txt", b"a red square\n");

    let e = fails(&run("no/such/prompts.txt", o, &[]));
    assert!(e.contains("no/such/prompts.txt"), "{e}");
    let e = fails(&run(&write("empty.txt", b"# nothing\n\n"), o, &[]));
    assert!(e.contains("no phrases"), "{e}");
    let e = fails(&run(&write("photo.txt", b"a cat\tmissing.jpg\n"), o, &[]));
    assert!(
        e.contains("photo.txt:1") && e.contains("missing.jpg"),
        "{e}"
    );
    write("corrupt.jpg", b"not an image at all");
    let e = fails(&run(
        &write("corrupt.txt", b"\n\na cat\tcorrupt.jpg\n"),
        o,
        &[],
    ));
    assert!(
        e.contains("corrupt.txt:3") && e.contains("corrupt.jpg"),
        "{e}"
    );
    let e = fails(&run(&good, o, &["--captioners", "vgg16=tests/data"]));
    let first_line = e.lines().next().unwrap_or_default();
    assert!(
        first_line.contains("--captioners vgg16")
            && first_line.contains("tests/data")
            && first_line.contains("captioner"),
        "{e}"
    );
    let e = fails(&run(&write("words.txt", b"a cat\n!!!\n"), o, &[]));
    assert!(e.contains("words.txt:2") && e.contains("no word"), "{e}");
    let e = fails(&run(&good, o, &["--captioners", "vgg16"]));
    assert!(e.contains("LABEL=CAPTIONER"), "{e}");
    let e = fails(&run(&good, o, &["--shard", "3/2"]));
    assert!(e.contains("K/N"), "{e}");
    let e = fails(&run(&good, o, &["--steps", "0"]));
    assert!(e.contains("--steps"), "{e}");
    assert!(!o.exists(), "nothing written before validation passes");

    let file = write("a-file", b"");
    let e = fails(&run(&good, Path::new(&file).join("sub").as_path(), &[]));
    assert!(e.contains("a-file"), "{e}");

    // A hub model that is not in the offline cache.
    let args = run_args(&good, o, &["--clip", "nobody/no-such-clip"]);
    let out = crate::common::bin()
        .args(&args)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", d.path().join("hf"))
        .output()
        .unwrap();
    let e = fails(&out);
    assert!(e.contains("nobody/no-such-clip"), "{e}");
    assert!(!o.join("images").exists() && !o.join("report.json").exists());
}

#[test]
fn a_bracket_prefix_draws_that_line_with_biggan() {
    let dir = fixture().root.join("biggan");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let prompts = dir.join("p.txt");
    std::fs::write(&prompts, "a red circle\n[biggan] a blue square\n").unwrap();
    let out = dir.join("run");
    let p = prompts.to_str().unwrap();
    let extra = [
        "--biggan",
        "tests/fixtures/biggan_tiny",
        "--save-every",
        "0",
    ];
    ok(&run(p, &out, &extra));
    let mut recs: Vec<Value> = std::fs::read_dir(out.join("phrases"))
        .unwrap()
        .map(|e| read_json(&e.unwrap().path()))
        .collect();
    recs.sort_by_key(|r| r["phrase"].as_str().unwrap().to_owned());
    let got: Vec<(&str, &str, bool)> = recs
        .iter()
        .map(|r| {
            (
                r["phrase"].as_str().unwrap(),
                r["generator"].as_str().unwrap(),
                r.get("latents").is_some(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("a blue square", "biggan", true),
            ("a red circle", "siren", false)
        ]
    );
    assert!(out.join(recs[0]["latents"].as_str().unwrap()).is_file());
    assert_eq!(
        recs[0]["steps"].as_array().unwrap().len(),
        100,
        "BigGAN keeps its defaults"
    );
    assert_eq!(
        recs[1]["steps"].as_array().unwrap().len(),
        30,
        "--steps sets SIREN's"
    );
    let manifest = read_json(&out.join("run.json"));
    assert_eq!(
        manifest["settings"]["biggan"]["model"],
        "tests/fixtures/biggan_tiny"
    );
    assert_eq!(manifest["prompts"][1]["generator"], "biggan");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("siren (1), biggan (1)"),
        "the gallery names both generators"
    );
    // Resuming reuses both records; without any [biggan] line BigGAN is not recorded at all.
    assert_eq!(count(&ok(&run(p, &out, &extra)), "computed"), 0);
    let plain = read_json(&complete_run().join("run.json"));
    assert!(
        plain["settings"].get("biggan").is_none(),
        "{}",
        plain["settings"]
    );
    // Two shards merged: the BigGAN phrase's latents come along, and the merged folder resumes
    // with nothing to compute.
    let mut shards = Vec::new();
    for k in 1..=2 {
        let d = dir.join(format!("shard{k}"));
        let spec = format!("{k}/2");
        let mut e = extra.to_vec();
        e.extend(["--shard", spec.as_str()]);
        ok(&run(p, &d, &e));
        shards.push(d.to_str().unwrap().to_owned());
    }
    let merged = dir.join("merged");
    let mut args = vec!["merge"];
    args.extend(shards.iter().map(String::as_str));
    args.extend(["--out", merged.to_str().unwrap()]);
    ok(&roundtrip(&args));
    let id = recs[0]["id"].as_str().unwrap();
    let rec = read_json(&merged.join("phrases").join(format!("{id}.json")));
    assert!(merged.join(rec["latents"].as_str().unwrap()).is_file());
    assert_eq!(count(&ok(&run(p, &merged, &extra)), "computed"), 0);
}

#[test]
fn a_captioner_replaced_in_place_recaptions_the_kept_images() {
    let f = fixture();
    let d = tempfile::tempdir().unwrap();
    let cap = d.path().join("cap");
    crate::common::copy_dir(&f.root.join("vgg16"), &cap);
    let spec = format!("v={}", cap.display());
    let out = d.path().join("run");
    ok(&run(PROMPTS, &out, &["--captioners", &spec]));
    // The folder now holds another captioner: same path, other content.
    std::fs::remove_dir_all(&cap).unwrap();
    crate::common::copy_dir(&f.root.join("xception"), &cap);
    let o = run(PROMPTS, &out, &["--captioners", &spec]);
    let stdout = ok(&o);
    assert!(
        stdout.contains("computed 0\treused 0\tupdated 4"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("v captions recomputed (captioner"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let fresh = d.path().join("fresh");
    ok(&run(PROMPTS, &fresh, &["--captioners", &spec]));
    assert_eq!(
        without_timings(read_json(&out.join("report.json"))),
        without_timings(read_json(&fresh.join("report.json")))
    );
    let fp = |dir: &Path| {
        read_json(&dir.join("run.json"))["models"]["captioner:v"]["fingerprint"].clone()
    };
    assert!(fp(&out).is_string());
    assert_eq!(fp(&out), fp(&fresh));
}

#[test]
fn corrupt_or_missing_files_are_recomputed_with_a_note() {
    let want = without_timings(read_json(&complete_run().join("report.json")));
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    crate::common::copy_dir(complete_run(), &out);
    let report: Report = serde_json::from_value(read_json(&out.join("report.json"))).unwrap();
    let with_photo = report.phrases.iter().find(|p| p.photo.is_some()).unwrap();
    let other = report.phrases.iter().find(|p| p.photo.is_none()).unwrap();
    // A truncated generated image, a photo copy with other bytes, a garbage record, a frame
    // missing, and a temporary file a killed writer left.
    let image = out.join(&with_photo.image);
    let bytes = std::fs::read(&image).unwrap();
    std::fs::write(&image, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(
        out.join(&with_photo.photo.as_ref().unwrap().file),
        b"not the photo",
    )
    .unwrap();
    let third = report
        .phrases
        .iter()
        .find(|p| p.phrase != with_photo.phrase && p.phrase != other.phrase)
        .unwrap();
    let record = out
        .join("phrases")
        .join(format!("{}.json", roundtrip::run::phrase_id(&third.phrase)));
    std::fs::write(&record, b"{\"schema_version\": 2, \"id\": ").unwrap();
    std::fs::remove_file(out.join(&other.frames[0])).unwrap();
    let stale = out.join("phrases").join(".x.json.tmp4242");
    std::fs::write(&stale, b"").unwrap();

    let o = run(PROMPTS, &out, &[]);
    let stdout = ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(stdout.contains("computed 3\treused 1"), "{stdout}\n{err}");
    for what in [
        "does not match its recorded SHA-256",
        "is missing",
        "is unreadable",
        "removed 1 temporary file",
    ] {
        assert!(err.contains(what), "{what:?} not in: {err}");
    }
    assert!(!stale.exists());
    assert_eq!(without_timings(read_json(&out.join("report.json"))), want);
    // A photo copy alone is copied again, nothing else recomputed.
    std::fs::write(out.join(&with_photo.photo.as_ref().unwrap().file), b"x").unwrap();
    let o = run(PROMPTS, &out, &[]);
    assert!(ok(&o).contains("computed 0\treused 3\tupdated 1"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("photo copied again"));
    assert_eq!(without_timings(read_json(&out.join("report.json"))), want);
}

#[test]
fn one_writer_per_folder() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    let args = run_args(PROMPTS, &out, &[]);
    let mut first = crate::common::bin()
        .args(&args)
        .env("HF_HUB_OFFLINE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !out.join(".roundtrip.lock").exists() {
        assert!(t0.elapsed() < Duration::from_secs(60), "no lock taken");
        std::thread::sleep(Duration::from_millis(2));
    }
    let second = fails(&run(PROMPTS, &out, &["--force"]));
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first run finished before the second started: make its phrases slower"
    );
    assert!(
        second.contains(&out.display().to_string())
            && second.contains("in use")
            && second.contains(&format!("pid {}", first.id())),
        "{second}"
    );
    assert!(first.wait().unwrap().success());
    assert!(
        !out.join(".roundtrip.lock").exists(),
        "the lock file is removed"
    );
    assert_eq!(
        without_timings(read_json(&out.join("report.json"))),
        without_timings(read_json(&complete_run().join("report.json")))
    );
}

#[test]
fn a_folder_that_is_not_a_run_is_not_written_without_force() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("mine");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("report.md"), b"my own notes").unwrap();
    let prompts = d.path().join("p.txt");
    std::fs::write(&prompts, "a red square\n").unwrap();
    let p = prompts.to_str().unwrap();
    let e = fails(&run(p, &out, &["--steps", "2"]));
    assert!(
        e.contains("not empty") && e.contains("report.md") && e.contains("--force"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(out.join("report.md")).unwrap(),
        b"my own notes"
    );
    ok(&run(p, &out, &["--steps", "2", "--force"]));
    assert!(out.join("run.json").is_file());
}
