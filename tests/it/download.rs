//! `roundtrip models download`, `models list` and a run's all-at-once requirement check, against
//! a fake Hugging Face hub: a small HTTP server on 127.0.0.1 (`HF_ENDPOINT`) answering the
//! hub's file route (`/{repo}/resolve/{revision}/{file}`, with the `Range`, `ETag`,
//! `X-Repo-Commit` and `Content-Range` headers hf-hub reads) with the tiny fixture models under
//! the presets' repositories and pinned revisions. Nothing here reaches the real hub.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use crate::common::{fails, ok, stderr};
use serde_json::Value;

const CLIP_REPO: &str = "openai/clip-vit-base-patch32";
const CLIP_REV: &str = "refs/pr/15";
const BIGGAN_REPO: &str = "osanseviero/BigGAN-deep-128";
const BIGGAN_REV: &str = "c98e5e826ec6dc3dabaa01b7703d86c34fad5342";
const CLIP_COMMIT: &str = "1111111111111111111111111111111111111111";
const TIMM_COMMIT: &str = "2222222222222222222222222222222222222222";
const BLIP_REPO: &str = "Salesforce/blip-image-captioning-large";
const BLIP_REV: &str = "353689b859fcf0523410b1806dace5fb46ecdf41";
const BLIP_FILES: [&str; 5] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
];

/// The files of one repository at one revision, served under the revision as it appears in
/// URLs (`refs%2Fpr%2F15`).
struct Served {
    commit: &'static str,
    files: BTreeMap<String, Vec<u8>>,
}

/// A fake hub on a local port; counts the requests it answered.
struct FakeHub {
    endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
}

fn fixture_files(dir: &str, names: &[&str]) -> BTreeMap<String, Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    names
        .iter()
        .map(|n| (n.to_string(), std::fs::read(root.join(n)).unwrap()))
        .collect()
}

/// The presets' repositories with the tiny fixtures: CLIP, BigGAN-deep 128 (the pinned commit),
/// the two timm encoders (main) and BLIP-large (the pinned commit).
fn hub_repos() -> BTreeMap<(String, String), Served> {
    let mut m = BTreeMap::new();
    let mut add = |repo: &str, rev: &str, commit, dir, names: &[&str]| {
        m.insert(
            (repo.to_owned(), rev.replace('/', "%2F")),
            Served {
                commit,
                files: fixture_files(dir, names),
            },
        );
    };
    add(
        CLIP_REPO,
        CLIP_REV,
        CLIP_COMMIT,
        "clip_tiny",
        &["config.json", "model.safetensors", "tokenizer.json"],
    );
    add(
        BIGGAN_REPO,
        BIGGAN_REV,
        BIGGAN_REV,
        "biggan_tiny",
        &["config.json", "pytorch_model.bin"],
    );
    add(
        "timm/vgg16.tv_in1k",
        "main",
        TIMM_COMMIT,
        "vgg16_tiny",
        &["config.json", "model.safetensors"],
    );
    add(
        "timm/legacy_xception.tf_in1k",
        "main",
        TIMM_COMMIT,
        "xception_tiny",
        &["config.json", "model.safetensors"],
    );
    add(BLIP_REPO, BLIP_REV, BLIP_REV, "blip_tiny", &BLIP_FILES);
    // A BLIP captioner that is no preset (a fine-tuned one, say).
    add(
        "someone/tiny-blip",
        "main",
        TIMM_COMMIT,
        "blip_tiny",
        &BLIP_FILES,
    );
    m
}

fn respond(
    stream: &mut std::net::TcpStream,
    status: &str,
    headers: &[(String, String)],
    body: &[u8],
) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

impl FakeHub {
    fn start(repos: BTreeMap<(String, String), Served>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                let mut range_start = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("range") {
                            range_start = v
                                .trim()
                                .trim_start_matches("bytes=")
                                .split('-')
                                .next()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0);
                        }
                    }
                }
                log.lock().unwrap().push(path.clone());
                // /{org}/{name}/resolve/{rev}/{file}
                let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
                let found = match parts.as_slice() {
                    [org, name, "resolve", rev, file] => repos
                        .get(&(format!("{org}/{name}"), rev.to_string()))
                        .and_then(|r| r.files.get(*file).map(|b| (r.commit, b))),
                    _ => None,
                };
                let Some((commit, bytes)) = found else {
                    respond(&mut stream, "404 Not Found", &[], b"Entry not found");
                    continue;
                };
                // hf-hub asks for `bytes=0-0` first (the metadata), then `bytes=N-`; both are
                // answered from N to the end (the metadata request reads the headers only).
                let etag = format!("\"{}\"", roundtrip::fingerprint::sha256_hex(bytes));
                let len = bytes.len();
                let start = range_start.min(len);
                let headers = vec![
                    ("ETag".to_owned(), etag),
                    ("X-Repo-Commit".to_owned(), commit.to_owned()),
                    (
                        "Content-Range".to_owned(),
                        format!("bytes {start}-{}/{len}", len.saturating_sub(1)),
                    ),
                ];
                respond(
                    &mut stream,
                    "206 Partial Content",
                    &headers,
                    &bytes[start..],
                );
            }
        });
        FakeHub { endpoint, requests }
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

/// The binary with the hub at `hub` (or none reachable), its cache under `home`.
fn roundtrip(home: &Path, hub: Option<&FakeHub>) -> Command {
    let mut c = crate::common::bin();
    c.env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env("HF_HOME", home)
        .env("ROUNDTRIP_CACHE", home.join("roundtrip"))
        .current_dir(home)
        .env(
            "HF_ENDPOINT",
            hub.map_or("http://127.0.0.1:9".to_owned(), |h| h.endpoint.clone()),
        );
    for proxy in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        c.env_remove(proxy);
    }
    c
}

fn out(c: &mut Command, args: &[&str]) -> Output {
    c.args(args).output().unwrap()
}

fn snapshot(home: &Path, repo: &str, commit: &str) -> PathBuf {
    home.join("hub")
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("snapshots")
        .join(commit)
}

#[test]
fn download_fetches_a_preset_into_the_cache_once_and_list_shows_it() {
    let hub = FakeHub::start(hub_repos());
    let home = tempfile::tempdir().unwrap();
    let h = home.path();

    let o = out(
        roundtrip(h, Some(&hub)).env("ROUNDTRIP_HEARTBEAT_SECS", "0"),
        &["models", "download", "clip-vit-b32"],
    );
    let text = ok(&o);
    let snap = snapshot(h, CLIP_REPO, CLIP_COMMIT);
    assert!(
        text.starts_with(&format!(
            "clip-vit-b32\t{CLIP_REPO}@{CLIP_REV}\tdownloaded 3 ("
        )) && text.contains(&snap.display().to_string()),
        "{text}"
    );
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(snap.join(f)).unwrap(),
            std::fs::read(format!(
                "{}/tests/fixtures/clip_tiny/{f}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap(),
            "{f}"
        );
    }
    // The pinned ref is recorded, as huggingface_hub does: refs/refs/pr/15 -> the commit.
    let refs = h.join("hub/models--openai--clip-vit-base-patch32/refs/refs/pr/15");
    assert_eq!(std::fs::read_to_string(refs).unwrap(), CLIP_COMMIT);
    // Progress on stderr without a terminal: a line per file, heartbeat lines of bytes.
    let e = stderr(&o);
    assert!(
        e.contains(&format!("downloaded {CLIP_REPO} model.safetensors (")),
        "{e}"
    );
    assert!(
        e.contains(&format!("{CLIP_REPO} model.safetensors ")) && e.contains("KiB"),
        "{e}"
    );

    // Again: everything is cached, the hub is not asked.
    let before = hub.count();
    let o = out(
        &mut roundtrip(h, Some(&hub)),
        &["models", "fetch", "clip-vit-b32", "--json"],
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        hub.count(),
        before,
        "a cached model is not downloaded again"
    );
    let m = &v["models"][0];
    assert_eq!(m["reference"], "clip-vit-b32");
    assert_eq!(m["fetched"]["commit"], CLIP_COMMIT);
    assert_eq!(m["fetched"]["files"].as_array().unwrap().len(), 3);
    assert!(m["fetched"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["downloaded"] == false));
    assert_eq!(v["hub_cache"], h.join("hub").display().to_string());

    // Offline, the locator finds the files the download put there.
    let o = out(
        roundtrip(h, None).env("HF_HUB_OFFLINE", "1"),
        &["models", "resolve", "clip-vit-b32"],
    );
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["model"]["commit"], CLIP_COMMIT, "{}", stderr(&o));

    // `models list`: cached with its snapshot, the others missing with their command.
    let text = ok(&out(&mut roundtrip(h, None), &["models", "list"]));
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .to_owned()
    };
    assert!(
        text.starts_with(&format!("hub cache: {}\n", h.join("hub").display())),
        "{text}"
    );
    assert!(
        line("clip-vit-b32").contains(&format!("cached   {}", snap.display())),
        "{text}"
    );
    assert!(
        line("biggan-deep-128").contains("missing")
            && line("biggan-deep-128").contains("`roundtrip models download biggan-deep-128`"),
        "{text}"
    );
    assert!(text.contains("embedded in this binary"), "{text}");
    let v: Value =
        serde_json::from_slice(&out(&mut roundtrip(h, None), &["models", "list", "--json"]).stdout)
            .unwrap();
    let presets = v["presets"].as_array().unwrap();
    let clip = presets
        .iter()
        .find(|p| p["name"] == "clip-vit-b32")
        .unwrap();
    assert_eq!(clip["status"], "cached");
    assert_eq!(clip["snapshot"], snap.display().to_string());
    let vgg = presets.iter().find(|p| p["name"] == "vgg16").unwrap();
    assert_eq!(vgg["status"], "missing");
    assert_eq!(vgg["download"], "roundtrip models download vgg16");
}

#[test]
fn download_real_takes_what_a_prompts_file_needs() {
    let hub = FakeHub::start(hub_repos());
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let p = h.join("p.txt");
    std::fs::write(&p, "a cat\n").unwrap();
    let v: Value = serde_json::from_slice(&ok_bytes(&out(
        &mut roundtrip(h, Some(&hub)),
        &[
            "models",
            "download",
            "--prompts",
            p.to_str().unwrap(),
            "--json",
            "--quiet",
        ],
    )))
    .unwrap();
    let refs: Vec<&str> = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["reference"].as_str().unwrap())
        .collect();
    assert_eq!(
        refs,
        ["clip-vit-b32", "vgg16", "xception"],
        "no BigGAN line, no BigGAN"
    );
    assert!(!snapshot(h, BIGGAN_REPO, BIGGAN_REV).exists());

    std::fs::write(&p, "a cat\n[biggan] a macaw\n").unwrap();
    let o = out(
        &mut roundtrip(h, Some(&hub)),
        &[
            "models",
            "download",
            "real",
            "--prompts",
            p.to_str().unwrap(),
            "--quiet",
        ],
    );
    let text = ok(&o);
    assert!(stderr(&o).is_empty(), "--quiet: {}", stderr(&o));
    assert!(
        text.lines()
            .any(|l| l.starts_with("biggan-deep-128\t") && l.contains("downloaded 2")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("clip-vit-b32\t") && l.contains("downloaded 0")),
        "{text}"
    );
    assert!(snapshot(h, BIGGAN_REPO, BIGGAN_REV)
        .join("pytorch_model.bin")
        .is_file());

    // `shapes` needs nothing from the hub.
    let o = out(&mut roundtrip(h, None), &["models", "download", "shapes"]);
    assert_eq!(ok(&o), "");
    assert!(stderr(&o).contains("embedded"), "{}", stderr(&o));
}

/// `real-blip` needs CLIP and BLIP-large only (no captioner to train); once downloaded, the
/// preset captions offline exactly as the fixture folder does.
#[test]
fn download_real_blip_fetches_clip_and_blip_large_then_captions_offline() {
    assert_eq!(
        roundtrip::hub::preset("blip-large")
            .unwrap()
            .revision
            .as_deref(),
        Some(BLIP_REV)
    );
    let hub = FakeHub::start(hub_repos());
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let p = h.join("p.txt");
    std::fs::write(&p, "a cat\n").unwrap();
    let text = ok(&out(
        &mut roundtrip(h, Some(&hub)),
        &[
            "models",
            "download",
            "real-blip",
            "--prompts",
            p.to_str().unwrap(),
            "--quiet",
        ],
    ));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("clip-vit-b32\t"), "{text}");
    assert!(
        lines[1].starts_with(&format!(
            "blip-large\t{BLIP_REPO}@{BLIP_REV}\tdownloaded 5 ("
        )),
        "{text}"
    );
    let snap = snapshot(h, BLIP_REPO, BLIP_REV);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/blip_tiny");
    for f in BLIP_FILES {
        assert_eq!(
            std::fs::read(snap.join(f)).unwrap(),
            std::fs::read(fixtures.join(f)).unwrap(),
            "{f}"
        );
    }
    let image = fixtures.join("image_a.png");
    let image = image.to_str().unwrap();
    let by_preset = ok(&out(
        roundtrip(h, None).env("HF_HUB_OFFLINE", "1"),
        &["caption", "--captioner", "blip-large", "--beam", "3", image],
    ));
    let by_folder = ok(&out(
        &mut roundtrip(h, None),
        &[
            "caption",
            "--captioner",
            fixtures.to_str().unwrap(),
            "--beam",
            "3",
            image,
        ],
    ));
    assert_eq!(by_preset, by_folder);

    // Another BLIP repository: downloaded by its kind, then taken as a captioner by its hub id.
    let text = ok(&out(
        &mut roundtrip(h, Some(&hub)),
        &[
            "models",
            "download",
            "someone/tiny-blip",
            "--kind",
            "blip",
            "--quiet",
        ],
    ));
    assert!(text.starts_with("someone/tiny-blip\t"), "{text}");
    let by_id = ok(&out(
        roundtrip(h, None).env("HF_HUB_OFFLINE", "1"),
        &[
            "caption",
            "--captioner",
            "someone/tiny-blip",
            "--beam",
            "3",
            image,
        ],
    ));
    assert_eq!(by_id, by_folder);
}

fn ok_bytes(o: &Output) -> Vec<u8> {
    assert!(o.status.success(), "{}", stderr(o));
    o.stdout.clone()
}

#[test]
fn download_failures_are_listed_together_and_exit_2() {
    let mut repos = hub_repos();
    // The CLIP repository without its tokenizer.
    repos
        .get_mut(&(CLIP_REPO.to_owned(), CLIP_REV.replace('/', "%2F")))
        .unwrap()
        .files
        .remove("tokenizer.json");
    let hub = FakeHub::start(repos);
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let o = out(
        &mut roundtrip(h, Some(&hub)),
        &[
            "models",
            "download",
            "clip-vit-b32",
            "nobody/nothing",
            "vgg16",
            "--kind",
            "clip",
            "--quiet",
        ],
    );
    let e = fails(&o);
    assert!(e.contains("2 of 3 models could not be downloaded"), "{e}");
    assert!(
        e.contains("clip-vit-b32: cannot download `tokenizer.json`") && e.contains("404"),
        "{e}"
    );
    assert!(
        e.contains("nobody/nothing: cannot download `config.json`"),
        "{e}"
    );
    // What could be had was fetched and reported.
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("vgg16\ttimm/vgg16.tv_in1k@main"));

    // Offline, nothing is asked of the hub and the error names the command.
    let before = hub.count();
    let o = out(
        roundtrip(h, Some(&hub)).env("HF_HUB_OFFLINE", "1"),
        &["models", "download", "xception", "--quiet"],
    );
    let e = fails(&o);
    assert_eq!(hub.count(), before);
    assert!(
        e.contains("`config.json` and `model.safetensors` of hub repository `timm/legacy_xception.tf_in1k`")
            && e.contains("roundtrip models download xception"),
        "{e}"
    );
    // Usage: nothing named, a folder.
    let e = fails(&out(&mut roundtrip(h, None), &["models", "download"]));
    assert!(e.contains("nothing to download"), "{e}");
    let e = fails(&out(
        &mut roundtrip(h, None),
        &[
            "models",
            "download",
            &format!("{}/tests/fixtures/clip_tiny", env!("CARGO_MANIFEST_DIR")),
        ],
    ));
    assert!(e.contains("not a hub model"), "{e}");
}

/// A run lists every missing piece at once, asks nothing of the hub while something else is
/// missing, and creates no folder; with only hub models missing, it fetches them and runs.
#[test]
fn run_lists_everything_missing_at_once_then_fetches_what_the_hub_has() {
    let hub = FakeHub::start(hub_repos());
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    std::fs::create_dir_all(h.join("photos")).unwrap();
    std::fs::write(h.join("photos/bad.jpg"), b"not a jpeg").unwrap();
    let prompts = h.join("p.txt");
    std::fs::write(
        &prompts,
        "a red circle\tphotos/none.jpg\n[biggan] a blue square\tphotos/bad.jpg\n",
    )
    .unwrap();
    let run_out = h.join("runs/r");
    let base = [
        "run",
        prompts.to_str().unwrap(),
        "--out",
        run_out.to_str().unwrap(),
        "--quiet",
    ];
    let o = out(&mut roundtrip(h, Some(&hub)), &base);
    let e = fails(&o);
    assert_eq!(
        hub.count(),
        0,
        "nothing downloaded while the run cannot start"
    );
    assert!(
        !run_out.exists() && !h.join("runs").exists(),
        "nothing written"
    );
    for part in [
        "6 of its requirements are missing (nothing was written)",
        "p.txt:1: photo `photos/none.jpg` not found",
        "p.txt:2: real photo:",
        "--clip clip-vit-b32: hub model openai/clip-vit-base-patch32@refs/pr/15",
        "`roundtrip models download clip-vit-b32` downloads it",
        "--biggan biggan-deep-128:",
        "--captioners vgg16: captioner folder models/captioners/vgg16 does not exist",
        "--captioners xception:",
        "README section \"Quick start: the original experiment\"",
        "Every hub model above at once: `roundtrip models download clip-vit-b32 biggan-deep-128`",
    ] {
        assert!(e.contains(part), "{part:?} not in:\n{e}");
    }

    // Only the hub models missing: the run fetches them (CLIP guides, BigGAN draws line 2)
    // and runs, with the shapes world's embedded captioners.
    std::fs::write(&prompts, "a red circle\n[biggan] a blue square\n").unwrap();
    let mut args = base.to_vec();
    args.extend([
        "--captioners",
        "vgg16=models/shapes/vgg16 (embedded)",
        "--steps",
        "2",
        "--size",
        "32",
        "--layers",
        "2",
        "--hidden",
        "16",
        "--cutouts",
        "2",
        "--save-every",
        "0",
    ]);
    let o = out(&mut roundtrip(h, Some(&hub)), &args);
    let text = ok(&o);
    assert!(text.contains("phrases 2\tcomputed 2"), "{text}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(run_out.join("run.json")).unwrap()).unwrap();
    assert_eq!(manifest["models"]["clip"]["commit"], CLIP_COMMIT);
    assert_eq!(manifest["models"]["biggan"]["commit"], BIGGAN_REV);
}
