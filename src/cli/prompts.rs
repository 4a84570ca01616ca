//! `roundtrip prompts check FILE`

use std::io::Write;
use std::path::PathBuf;

use crate::prompts::PromptFile;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validate a prompts file and print the phrases (and real photos) it holds. A line's
    /// `[siren]` / `[biggan]` prefix pins it to that generator; `run --generators siren,biggan`
    /// draws every other line with each listed generator.
    Check {
        /// The prompts file: one phrase per line, optionally TAB and the path of a real photo
        /// (relative to the file); blank lines and `#` comments are skipped.
        file: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn execute(c: Command, out: &mut dyn Write) -> anyhow::Result<()> {
    let Command::Check { file, json } = c;
    let prompts = PromptFile::load(&file)?;
    if json {
        serde_json::to_writer(&mut *out, &prompts)?;
        writeln!(out)?;
        return Ok(());
    }
    let photos = prompts.prompts.iter().filter(|p| p.photo.is_some()).count();
    let pinned = prompts
        .prompts
        .iter()
        .filter(|p| p.generator.is_some())
        .count();
    writeln!(
        out,
        "{}: {} phrases, {} with a real photo, {} pinned to one generator by a [siren] / [biggan] prefix (`run --generators` draws the others with each listed generator)",
        file.display(),
        prompts.prompts.len(),
        photos,
        pinned
    )?;
    for p in &prompts.prompts {
        let generator = p
            .generator
            .as_ref()
            .map_or(String::new(), |g| format!("[{g}] "));
        match &p.photo {
            Some(photo) => writeln!(
                out,
                "{:>5}  {generator}{}  [photo: {}]",
                p.line, p.phrase, photo
            )?,
            None => writeln!(out, "{:>5}  {generator}{}", p.line, p.phrase)?,
        }
    }
    Ok(())
}
