//! `roundtrip prompts check FILE`

use std::io::Write;
use std::path::PathBuf;

use crate::prompts::PromptFile;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validate a prompts file and print the phrases (and real photos) it holds.
    Check {
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
    writeln!(
        out,
        "{}: {} phrases, {} with a real photo",
        file.display(),
        prompts.prompts.len(),
        photos
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
