//! `roundtrip presets [--json]`: the values each `run --preset` (and `generate --preset`) fills
//! in.

use std::io::Write;

use crate::run::preset::{listing, Preset};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON array (each preset: name, about, clip, captioners, siren, biggan) instead
    /// of the table.
    #[arg(long)]
    json: bool,
}

pub fn execute(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    if a.json {
        let all: Vec<_> = Preset::ALL.iter().map(|p| p.to_json()).collect();
        serde_json::to_writer_pretty(&mut *out, &all)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "`roundtrip run --preset NAME` takes these values where no option is given (`generate --preset NAME` its CLIP and generator settings):"
    )?;
    let width = Preset::ALL
        .iter()
        .map(|p| p.name().len())
        .max()
        .unwrap_or(0);
    for p in Preset::ALL {
        writeln!(out, "  {:<width$}  {}", p.name(), p.about())?;
    }
    writeln!(out)?;
    write!(out, "{}", listing(&Preset::ALL))?;
    writeln!(out)?;
    writeln!(
        out,
        "Models embedded in this binary (copied into {}/{}/ on first use):\n  {}",
        crate::captioner::feature_cache::default_cache_dir().display(),
        crate::embedded::CACHE_SUBDIR,
        if crate::embedded::models().is_empty() {
            "none".to_owned()
        } else {
            crate::embedded::summary()
        }
    )?;
    writeln!(
        out,
        "`models/shapes/NAME (embedded)` is that folder as it was when the binary was built, from any\n\
         working directory; pass a folder (e.g. --clip models/shapes/clip) to use it instead."
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// The listing names exactly `run`'s model, SIREN and BigGAN options, each one `run` has.
    #[test]
    fn listing_names_the_options_of_run() {
        let cli = crate::cli::Cli::command();
        let run = cli.find_subcommand("run").expect("run subcommand");
        let longs: Vec<String> = run
            .get_arguments()
            .filter_map(|a| a.get_long())
            .map(|l| format!("--{l}"))
            .collect();
        for o in Preset::Real.defaults().options() {
            for flag in o.option.split(", ") {
                assert!(
                    longs.contains(&flag.to_owned()),
                    "{flag} is not an option of run"
                );
            }
        }
        let listed: Vec<&str> = Preset::Real
            .defaults()
            .options()
            .iter()
            .flat_map(|o| o.option.split(", ").collect::<Vec<_>>())
            .collect();
        for heading in [
            "Generation",
            "Generation: SIREN only",
            "Generation: BigGAN only",
        ] {
            for a in run
                .get_arguments()
                .filter(|a| a.get_help_heading() == Some(heading))
            {
                let flag = format!("--{}", a.get_long().expect("a long option"));
                assert!(
                    listed.contains(&flag.as_str())
                        || ["--generator", "--generators", "--seed"].contains(&flag.as_str()),
                    "{flag} ({heading}) is missing from the presets listing"
                );
            }
        }
    }

    #[test]
    fn text_and_json_show_each_presets_values() {
        let mut text = Vec::new();
        execute(Args { json: false }, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("Models embedded in this binary")
                && text.contains("  models/shapes/clip ("),
            "the embedded models are listed: {text}"
        );
        for p in Preset::ALL {
            let d = p.defaults();
            assert!(text.contains(p.about()), "{}", p.name());
            assert!(text.contains(d.clip), "{}", p.name());
            for c in d.captioners.split(',') {
                assert!(text.contains(c), "{c}");
            }
        }
        let shapes_steps = text
            .lines()
            .find(|l| l.trim_start().starts_with("--steps"))
            .expect("a --steps row");
        let cells: Vec<&str> = shapes_steps.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "--steps",
                &Preset::Real.defaults().siren.steps.to_string(),
                &Preset::Shapes.defaults().siren.steps.to_string(),
                &Preset::RealBlip.defaults().siren.steps.to_string()
            ]
        );

        let mut json = Vec::new();
        execute(Args { json: true }, &mut json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let all = v.as_array().expect("an array");
        assert_eq!(all.len(), Preset::ALL.len());
        for (p, j) in Preset::ALL.iter().zip(all) {
            let d = p.defaults();
            assert_eq!(j["name"], p.name());
            let siren: crate::generate::SirenSettings =
                serde_json::from_value(j["siren"].clone()).unwrap();
            assert_eq!(siren, d.siren);
            let biggan: crate::generate::BigGanSettings =
                serde_json::from_value(j["biggan"]["settings"].clone()).unwrap();
            assert_eq!(biggan, d.biggan.settings);
            for key in ["tv_weight", "cutout_noise", "cutout_rotation"] {
                assert!(j["siren"][key].is_number(), "siren {key}");
            }
            assert!(j["biggan"]["settings"]["class_weight"].is_number());
            assert!(j["biggan"]["settings"].get("cutout_sides").is_some());
            assert_eq!(j["biggan"]["model"].as_str(), d.biggan.model);
        }
    }
}
