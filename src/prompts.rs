//! Prompts files: one phrase per line, optionally a TAB and the path of a real photo of it.
//!
//! A line may start with a generator in brackets, `[biggan] a macaw flying over a forest` or
//! `[siren] ...`, to draw that phrase with another generator than the run's (the original drew
//! one of its ten phrases with BigGAN). Blank lines and lines whose first non-blank character is
//! `#` are ignored. Photo paths are
//! relative to the prompts file's folder. Every problem is reported as `FILE:LINE: what`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{read_input_file, utf8_lines, InputError};
use crate::generate::GeneratorKind;

/// Longest accepted line, in characters.
pub const MAX_LINE_CHARS: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Prompt {
    /// 1-based line number in the prompts file.
    pub line: usize,
    pub phrase: String,
    /// The line's `[generator]` prefix, if any.
    pub generator: Option<GeneratorKind>,
    /// The real photo's path as written in the file.
    pub photo: Option<String>,
    /// The photo's path resolved against the prompts file's folder.
    #[serde(skip)]
    pub photo_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromptFile {
    pub path: PathBuf,
    pub prompts: Vec<Prompt>,
}

impl PromptFile {
    /// Reads and validates a prompts file; fails on the first bad line.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes = read_input_file(path)?;
        Ok(Self::parse(path, &bytes)?)
    }

    /// [`PromptFile::load`], with the photos that are not found returned (one error a line,
    /// `FILE:LINE: photo ... not found`) instead of failing on the first: a run lists them with
    /// everything else it lacks. Any other bad line still fails.
    pub fn load_listing_photos(path: &Path) -> anyhow::Result<(Self, Vec<InputError>)> {
        let bytes = read_input_file(path)?;
        Ok(Self::parse_listing_photos(path, &bytes)?)
    }

    /// Parses prompts from bytes; `path` names the file in errors and anchors photo paths.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, InputError> {
        let (file, mut missing) = Self::parse_listing_photos(path, bytes)?;
        match missing.is_empty() {
            true => Ok(file),
            false => Err(missing.swap_remove(0)),
        }
    }

    /// [`PromptFile::parse`], with the photos that are not found returned in line order (their
    /// prompts keep the resolved path) instead of failing on the first.
    pub fn parse_listing_photos(
        path: &Path,
        bytes: &[u8],
    ) -> Result<(Self, Vec<InputError>), InputError> {
        let base = path.parent().unwrap_or(Path::new(""));
        let mut missing_photos = Vec::new();
        let mut prompts = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, line) in utf8_lines(path, bytes)?.into_iter().enumerate() {
            let n = i + 1;
            let err = |msg: String| InputError::at_line(path, n, msg);
            let chars = line.chars().count();
            if chars > MAX_LINE_CHARS {
                return Err(err(format!(
                    "line has {chars} characters, at most {MAX_LINE_CHARS} are allowed"
                )));
            }
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (phrase, photo) = match line.split_once('\t') {
                Some((p, f)) => (p.trim(), Some(f.trim())),
                None => (trimmed, None),
            };
            let (generator, phrase) = match phrase.strip_prefix('[') {
                None => (None, phrase),
                Some(rest) => {
                    let Some((name, after)) = rest.split_once(']') else {
                        return Err(err(format!(
                            "`[` opens a generator prefix but no `]` closes it: expected `[{}] phrase`",
                            GeneratorKind::ALL.map(GeneratorKind::name).join("|")
                        )));
                    };
                    let name = name.trim();
                    let Ok(kind) = name.parse::<GeneratorKind>() else {
                        return Err(err(format!(
                            "unknown generator `[{name}]`: expected one of {}",
                            GeneratorKind::ALL.map(|g| format!("[{g}]")).join(", ")
                        )));
                    };
                    (Some(kind), after.trim())
                }
            };
            if phrase.is_empty() {
                return Err(err(
                    "empty phrase: expected `phrase` or `phrase<TAB>photo path`".into(),
                ));
            }
            if crate::text::normalize(phrase).is_empty() {
                return Err(err(format!(
                    "phrase `{phrase}` has no word once normalised (lowercase letters, words of two or more letters): it would be an empty BLEU reference"
                )));
            }
            if let Some(first) = seen.insert(phrase.to_owned(), n) {
                return Err(err(format!(
                    "phrase `{phrase}` is a duplicate of line {first}"
                )));
            }
            let (photo, photo_path) = match photo {
                None => (None, None),
                Some("") => return Err(err("a TAB but no photo path after it".into())),
                Some(f) => {
                    let resolved = base.join(f);
                    if !resolved.is_file() {
                        missing_photos.push(err(format!(
                            "photo `{f}` not found (looked for {})",
                            resolved.display()
                        )));
                    }
                    (Some(f.to_owned()), Some(resolved))
                }
            };
            prompts.push(Prompt {
                line: n,
                phrase: phrase.to_owned(),
                generator,
                photo,
                photo_path,
            });
        }
        if prompts.is_empty() {
            return Err(InputError::new(format!(
                "{}: no phrases found (one phrase per line; blank lines and `#` comments are ignored)",
                path.display()
            )));
        }
        Ok((
            Self {
                path: path.to_path_buf(),
                prompts,
            },
            missing_photos,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PromptFile, InputError> {
        PromptFile::parse(Path::new("p.txt"), text.as_bytes())
    }

    #[test]
    fn a_bom_is_not_part_of_the_first_phrase_and_wordless_phrases_are_refused() {
        let f = parse("\u{feff}a red square\n").unwrap();
        assert_eq!(f.prompts[0].phrase, "a red square");
        let e = parse("a cat\n!!!\n").unwrap_err().to_string();
        assert!(e.starts_with("p.txt:2:") && e.contains("no word"), "{e}");
        let e = parse("a 1 2\n").unwrap_err().to_string();
        assert!(e.starts_with("p.txt:1:"), "{e}");
    }

    #[test]
    fn a_bracket_prefix_picks_the_generator() {
        let f = parse("[biggan] a macaw flying over a forest\n[ siren ]a cat\na dog\n").unwrap();
        let got: Vec<_> = f
            .prompts
            .iter()
            .map(|p| (p.phrase.as_str(), p.generator))
            .collect();
        assert_eq!(
            got,
            [
                ("a macaw flying over a forest", Some(GeneratorKind::BigGan)),
                ("a cat", Some(GeneratorKind::Siren)),
                ("a dog", None)
            ]
        );
        let e = parse("a cat\n[vqgan] a dog\n").unwrap_err().to_string();
        assert!(
            e.contains("p.txt:2") && e.contains("unknown generator `[vqgan]`"),
            "{e}"
        );
        let e = parse("[biggan a dog\n").unwrap_err().to_string();
        assert!(e.contains("p.txt:1") && e.contains("no `]`"), "{e}");
        let e = parse("[biggan]\n").unwrap_err().to_string();
        assert!(e.contains("empty phrase"), "{e}");
    }

    #[test]
    fn skips_blank_and_comment_lines() {
        let f = parse(
            "# header\n\na cat eating a mouse\n  # indented comment\r\ntwo guys playing chess  \n",
        )
        .unwrap();
        let got: Vec<_> = f
            .prompts
            .iter()
            .map(|p| (p.line, p.phrase.as_str()))
            .collect();
        assert_eq!(
            got,
            [(3, "a cat eating a mouse"), (5, "two guys playing chess")]
        );
    }

    #[test]
    fn photo_paths_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("photos")).unwrap();
        std::fs::write(dir.path().join("photos/cat.jpg"), b"x").unwrap();
        let file = dir.path().join("p.txt");
        let f = PromptFile::parse(&file, b"a cat\tphotos/cat.jpg\n").unwrap();
        assert_eq!(f.prompts[0].photo.as_deref(), Some("photos/cat.jpg"));
        assert_eq!(
            f.prompts[0].photo_path.as_deref(),
            Some(dir.path().join("photos/cat.jpg").as_path())
        );
        let e = PromptFile::parse(&file, b"a dog\tphotos/dog.jpg\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("p.txt:1:") && e.contains("photos/dog.jpg"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases: [(&[u8], &str); 5] = [
            (b"ok\n\tphoto.jpg\n", "p.txt:2: empty phrase"),
            (b"ok\nphrase\t\n", "p.txt:2: a TAB but no photo path"),
            (b"ok\n\xff\xfe\n", "p.txt:2: invalid UTF-8"),
            (
                b"a cat\na dog\na cat\n",
                "p.txt:3: phrase `a cat` is a duplicate of line 1",
            ),
            (b"# only a comment\n\n", "p.txt: no phrases found"),
        ];
        for (text, want) in cases {
            let e = PromptFile::parse(Path::new("p.txt"), text)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{e:?} should start with {want:?}");
        }
        let long = format!("ok\n{}\n", "x".repeat(MAX_LINE_CHARS + 1));
        let e = parse(&long).unwrap_err().to_string();
        assert!(e.starts_with("p.txt:2: line has 1001 characters"), "{e}");
    }

    #[test]
    fn seed_prompts_hold_the_ten_original_phrases() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts/seed.txt");
        let f = PromptFile::load(&path).unwrap();
        assert_eq!(f.prompts.len(), 10);
        assert_eq!(f.prompts[0].phrase, "a cat eating a mouse");
        assert_eq!(f.prompts[9].phrase, "two guys playing chess");
        let biggan: Vec<&str> = f
            .prompts
            .iter()
            .filter(|p| p.generator == Some(GeneratorKind::BigGan))
            .map(|p| p.phrase.as_str())
            .collect();
        assert_eq!(
            biggan,
            ["a macaw flying over a forest"],
            "as the original drew it"
        );
    }
}
