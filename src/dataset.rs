//! Captioning datasets in the three Flickr8k layouts, with their train / dev / test splits.
//!
//! - original: `Flicker8k_Dataset/*.jpg` and `Flickr8k_text/` holding `Flickr8k.token.txt`
//!   (`image.jpg#N<TAB>caption`) and `Flickr_8k.{train,dev,test}Images.txt`;
//! - Kaggle repack: `Images/` and `captions.txt` (CSV `image,caption`); its splits come from
//!   `Flickr_8k.*Images.txt` files beside it when present, else from a stable hash of the image
//!   name (75% / 12.5% / 12.5%, Flickr8k's 6000 / 1000 / 1000 proportions);
//! - Karpathy: `dataset_flickr8k.json` (`split`: train, restval -> train, val -> dev, test) with the
//!   images in `Flicker8k_Dataset/`, `Flickr8k_Dataset/`, `Images/` or `images/` beside it.
//!
//! Bad lines, captions of unknown images, split entries without captions and missing image files
//! are never dropped silently: each is recorded as a [`Problem`] with file and line, and counted.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{read_input_file, utf8_lines, InputError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Original,
    Kaggle,
    Karpathy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Dev,
    Test,
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "train" => Ok(Split::Train),
            "dev" | "val" => Ok(Split::Dev),
            "test" => Ok(Split::Test),
            _ => Err(format!("unknown split `{s}`: expected train, dev or test")),
        }
    }
}

/// Something wrong in the dataset files, with where it is.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub layout: Layout,
    pub images_dir: PathBuf,
    /// Raw captions per image file name.
    pub captions: BTreeMap<String, Vec<String>>,
    pub train: Vec<String>,
    pub dev: Vec<String>,
    pub test: Vec<String>,
    pub problems: Vec<Problem>,
}

fn first_existing(root: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| root.join(n)).find(|p| p.exists())
}

const IMAGE_DIRS: [&str; 4] = ["Flicker8k_Dataset", "Flickr8k_Dataset", "Images", "images"];

impl Dataset {
    /// Prints the first ten problems (and how many more) as warnings on stderr; `counted_in`
    /// names the file where all of them are recorded.
    pub fn warn_problems(&self, counted_in: &str) {
        for p in self.problems.iter().take(10) {
            crate::stderr::warning(p);
        }
        if self.problems.len() > 10 {
            crate::stderr::warning(format_args!(
                "... {} more dataset problems (counted in {counted_in})",
                self.problems.len() - 10
            ));
        }
    }

    /// Detects the layout of `root` and loads captions and splits.
    pub fn load(root: &Path) -> anyhow::Result<Self> {
        if !root.is_dir() {
            return Err(InputError::new(format!(
                "dataset folder {} does not exist",
                root.display()
            ))
            .into());
        }
        let token = first_existing(
            root,
            &["Flickr8k_text/Flickr8k.token.txt", "Flickr8k.token.txt"],
        );
        let kaggle = root.join("captions.txt");
        let karpathy = first_existing(root, &["dataset_flickr8k.json"]);
        let mut ds = if let Some(token) = token {
            Self::load_original(root, &token)?
        } else if kaggle.is_file() {
            Self::load_kaggle(root, &kaggle)?
        } else if let Some(json) = karpathy {
            Self::load_karpathy(root, &json)?
        } else {
            return Err(InputError::new(format!(
                "{} is not a Flickr8k-style dataset: expected Flickr8k_text/Flickr8k.token.txt (original), \
                 captions.txt with Images/ (Kaggle) or dataset_flickr8k.json (Karpathy)",
                root.display()
            ))
            .into());
        };
        ds.check_images();
        Ok(ds)
    }

    fn images_dir(root: &Path) -> anyhow::Result<PathBuf> {
        first_existing(root, &IMAGE_DIRS).ok_or_else(|| {
            InputError::new(format!(
                "{}: no image folder (expected one of {})",
                root.display(),
                IMAGE_DIRS.join(", ")
            ))
            .into()
        })
    }

    fn empty(root: &Path, layout: Layout) -> anyhow::Result<Self> {
        Ok(Self {
            root: root.to_path_buf(),
            layout,
            images_dir: Self::images_dir(root)?,
            captions: BTreeMap::new(),
            train: Vec::new(),
            dev: Vec::new(),
            test: Vec::new(),
            problems: Vec::new(),
        })
    }

    fn problem(&mut self, file: &Path, line: Option<usize>, message: impl Into<String>) {
        self.problems.push(Problem {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        });
    }

    fn load_original(root: &Path, token: &Path) -> anyhow::Result<Self> {
        let mut ds = Self::empty(root, Layout::Original)?;
        let lines = utf8_lines(token, &read_input_file(token)?)?;
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed = line
                .split_once('\t')
                .and_then(|(id, cap)| Some((id.rsplit_once('#')?, cap)));
            match parsed {
                Some(((image, n), caption))
                    if n.parse::<u32>().is_ok() && !caption.trim().is_empty() =>
                {
                    ds.captions
                        .entry(image.to_owned())
                        .or_default()
                        .push(caption.trim().to_owned());
                }
                _ => ds.problem(
                    token,
                    Some(i + 1),
                    "expected `IMAGE#N<TAB>caption`; line skipped",
                ),
            }
        }
        let dir = token.parent().unwrap_or(root).to_path_buf();
        ds.train = ds.split_file(&dir.join("Flickr_8k.trainImages.txt"))?;
        ds.dev = ds.split_file(&dir.join("Flickr_8k.devImages.txt"))?;
        ds.test = ds.split_file(&dir.join("Flickr_8k.testImages.txt"))?;
        Ok(ds)
    }

    /// Reads a split file (one image name per line); names without captions are problems.
    fn split_file(&mut self, path: &Path) -> anyhow::Result<Vec<String>> {
        let lines = utf8_lines(path, &read_input_file(path)?)?;
        let mut out = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let name = line.trim();
            if name.is_empty() {
                continue;
            }
            if self.captions.contains_key(name) {
                out.push(name.to_owned());
            } else {
                self.problem(
                    path,
                    Some(i + 1),
                    format!("image `{name}` has no captions; left out"),
                );
            }
        }
        Ok(out)
    }

    fn load_kaggle(root: &Path, csv_path: &Path) -> anyhow::Result<Self> {
        let mut ds = Self::empty(root, Layout::Kaggle)?;
        let bytes = read_input_file(csv_path)?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .from_reader(bytes.as_slice());
        let headers = reader
            .headers()
            .map_err(|e| {
                InputError::new(format!(
                    "{}: cannot read the header: {e}",
                    csv_path.display()
                ))
            })?
            .clone();
        if headers.get(0) != Some("image") || headers.get(1) != Some("caption") {
            return Err(
                InputError::at_line(csv_path, 1, "expected the header `image,caption`").into(),
            );
        }
        for (i, rec) in reader.records().enumerate() {
            let line = i + 2;
            match rec {
                Ok(r) if r.len() == 2 && !r[0].trim().is_empty() && !r[1].trim().is_empty() => {
                    ds.captions
                        .entry(r[0].trim().to_owned())
                        .or_default()
                        .push(r[1].trim().to_owned());
                }
                Ok(_) => ds.problem(
                    csv_path,
                    Some(line),
                    "expected `image,caption`; line skipped",
                ),
                Err(e) => ds.problem(csv_path, Some(line), format!("bad CSV ({e}); line skipped")),
            }
        }
        let split_files =
            ["train", "dev", "test"].map(|s| root.join(format!("Flickr_8k.{s}Images.txt")));
        if split_files.iter().all(|p| p.is_file()) {
            ds.train = ds.split_file(&split_files[0])?;
            ds.dev = ds.split_file(&split_files[1])?;
            ds.test = ds.split_file(&split_files[2])?;
        } else {
            for name in ds.captions.keys() {
                match stable_bucket(name) {
                    0..=5 => ds.train.push(name.clone()),
                    6 => ds.dev.push(name.clone()),
                    _ => ds.test.push(name.clone()),
                }
            }
        }
        Ok(ds)
    }

    fn load_karpathy(root: &Path, json: &Path) -> anyhow::Result<Self> {
        #[derive(Deserialize)]
        struct File {
            images: Vec<Image>,
        }
        #[derive(Deserialize)]
        struct Image {
            filename: String,
            split: String,
            sentences: Vec<Sentence>,
        }
        #[derive(Deserialize)]
        struct Sentence {
            raw: Option<String>,
            #[serde(default)]
            tokens: Vec<String>,
        }
        let mut ds = Self::empty(root, Layout::Karpathy)?;
        let file: File = serde_json::from_slice(&read_input_file(json)?).map_err(|e| {
            InputError::new(format!(
                "{}: not a Karpathy split file: {e}",
                json.display()
            ))
        })?;
        for (i, img) in file.images.into_iter().enumerate() {
            let caps: Vec<String> = img
                .sentences
                .into_iter()
                .map(|s| s.raw.unwrap_or_else(|| s.tokens.join(" ")))
                .filter(|c| !c.trim().is_empty())
                .collect();
            if caps.is_empty() {
                ds.problem(
                    json,
                    None,
                    format!("images[{i}] `{}` has no sentences; left out", img.filename),
                );
                continue;
            }
            match img.split.as_str() {
                "train" | "restval" => ds.train.push(img.filename.clone()),
                "val" => ds.dev.push(img.filename.clone()),
                "test" => ds.test.push(img.filename.clone()),
                other => {
                    ds.problem(
                        json,
                        None,
                        format!(
                            "images[{i}] `{}` has unknown split `{other}`; left out",
                            img.filename
                        ),
                    );
                    continue;
                }
            }
            ds.captions.insert(img.filename, caps);
        }
        Ok(ds)
    }

    /// Removes split entries whose image file is missing, recording each.
    fn check_images(&mut self) {
        let dir = self.images_dir.clone();
        // Captions of an image that is in no split and has no file (Flickr8k's bogus
        // `2258277193_586949ec62.jpg.1`) are reported too.
        let in_split: std::collections::HashSet<&String> = self
            .train
            .iter()
            .chain(&self.dev)
            .chain(&self.test)
            .collect();
        let orphans: Vec<String> = self
            .captions
            .keys()
            .filter(|n| !in_split.contains(n) && !dir.join(n).is_file())
            .cloned()
            .collect();
        for name in orphans {
            self.problem(
                &dir,
                None,
                format!("image `{name}` has captions but no file and is in no split; ignored"),
            );
        }
        let mut missing = Vec::new();
        for split in [&mut self.train, &mut self.dev, &mut self.test] {
            split.retain(|name| {
                let ok = dir.join(name).is_file();
                if !ok {
                    missing.push(name.clone());
                }
                ok
            });
        }
        for name in missing {
            self.problem(
                &dir,
                None,
                format!("image `{name}` is listed in a split but missing; left out"),
            );
        }
    }

    pub fn split(&self, split: Split) -> &[String] {
        match split {
            Split::Train => &self.train,
            Split::Dev => &self.dev,
            Split::Test => &self.test,
        }
    }

    pub fn image_path(&self, name: &str) -> PathBuf {
        self.images_dir.join(name)
    }

    /// Problems counted by kind of message, for logs and reports.
    pub fn problem_counts(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for p in &self.problems {
            let kind = p.message.split(';').next().unwrap_or("").to_owned();
            let kind = if kind.starts_with("image `") {
                "image issue".to_owned()
            } else {
                kind
            };
            *m.entry(kind).or_default() += 1;
        }
        m
    }
}

/// A bucket 0..8 from a stable hash (FNV-1a) of the image name.
fn stable_bucket(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h % 8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }

    #[test]
    fn original_layout_reports_bad_lines_and_missing_images() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for img in ["a.jpg", "b.jpg", "c.jpg"] {
            touch(&r.join("Flicker8k_Dataset").join(img));
        }
        let text = r.join("Flickr8k_text");
        std::fs::create_dir_all(&text).unwrap();
        std::fs::write(
            text.join("Flickr8k.token.txt"),
            "a.jpg#0\tA dog runs .\na.jpg#1\tA dog is running\nb.jpg#0\tTwo cats\nno tab here\n\
             2258277193_586949ec62.jpg.1#0\tbogus\nc.jpg#0\tA bird\nd.jpg#0\tA missing image\n",
        )
        .unwrap();
        std::fs::write(text.join("Flickr_8k.trainImages.txt"), "a.jpg\nd.jpg\n").unwrap();
        std::fs::write(text.join("Flickr_8k.devImages.txt"), "b.jpg\nzzz.jpg\n").unwrap();
        std::fs::write(text.join("Flickr_8k.testImages.txt"), "c.jpg\n").unwrap();
        let ds = Dataset::load(r).unwrap();
        assert_eq!(ds.layout, Layout::Original);
        assert_eq!(
            (ds.train.as_slice(), ds.dev.as_slice(), ds.test.as_slice()),
            (
                &["a.jpg".to_string()][..],
                &["b.jpg".to_string()][..],
                &["c.jpg".to_string()][..]
            )
        );
        assert_eq!(ds.captions["a.jpg"].len(), 2);
        let msgs: Vec<String> = ds.problems.iter().map(|p| p.to_string()).collect();
        assert!(
            msgs.iter().any(|m| m
                .ends_with("Flickr8k.token.txt:4: expected `IMAGE#N<TAB>caption`; line skipped")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("Flickr_8k.devImages.txt:2: image `zzz.jpg` has no captions")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("`d.jpg` is listed in a split but missing")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("`2258277193_586949ec62.jpg.1` has captions but no file")),
            "{msgs:?}"
        );
        assert_eq!(ds.problems.len(), 4, "{msgs:?}");
    }

    #[test]
    fn kaggle_layout_parses_quoted_csv_and_splits_stably() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let mut csv = String::from("image,caption\n");
        for i in 0..40 {
            touch(&r.join("Images").join(format!("{i}.jpg")));
            csv += &format!("{i}.jpg,\"A dog, running\"\n");
        }
        csv += "broken line without caption\n";
        std::fs::write(r.join("captions.txt"), csv).unwrap();
        let ds = Dataset::load(r).unwrap();
        assert_eq!(ds.layout, Layout::Kaggle);
        assert_eq!(ds.captions["3.jpg"], ["A dog, running"]);
        assert_eq!(ds.train.len() + ds.dev.len() + ds.test.len(), 40);
        assert!(!ds.train.is_empty() && !ds.test.is_empty());
        assert_eq!(ds.problems.len(), 1);
        assert_eq!(ds.problems[0].line, Some(42));
        assert_eq!(Dataset::load(r).unwrap().test, ds.test);
    }

    #[test]
    fn karpathy_layout_maps_restval_and_val() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for img in ["a.jpg", "b.jpg", "c.jpg"] {
            touch(&r.join("images").join(img));
        }
        let json = serde_json::json!({"dataset": "flickr8k", "images": [
            {"filename": "a.jpg", "imgid": 0, "split": "restval", "sentences": [{"tokens": ["a", "dog"], "raw": "A dog.", "imgid": 0, "sentid": 0}]},
            {"filename": "b.jpg", "imgid": 1, "split": "val", "sentences": [{"tokens": ["a", "cat"], "imgid": 1, "sentid": 1}]},
            {"filename": "c.jpg", "imgid": 2, "split": "test", "sentences": [{"tokens": ["a", "bird"], "raw": "A bird.", "imgid": 2, "sentid": 2}]}
        ]});
        std::fs::write(r.join("dataset_flickr8k.json"), json.to_string()).unwrap();
        let ds = Dataset::load(r).unwrap();
        assert_eq!((ds.train.len(), ds.dev.len(), ds.test.len()), (1, 1, 1));
        assert_eq!(ds.captions["b.jpg"], ["a cat"]);
    }

    #[test]
    fn unknown_folders_and_missing_split_files_are_input_errors() {
        let d = tempfile::tempdir().unwrap();
        let e = Dataset::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("not a Flickr8k-style dataset"), "{e}");
        touch(&d.path().join("Flicker8k_Dataset/a.jpg"));
        std::fs::create_dir_all(d.path().join("Flickr8k_text")).unwrap();
        std::fs::write(
            d.path().join("Flickr8k_text/Flickr8k.token.txt"),
            "a.jpg#0\tA dog\n",
        )
        .unwrap();
        let e = Dataset::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("Flickr_8k.trainImages.txt"), "{e}");
    }
}
