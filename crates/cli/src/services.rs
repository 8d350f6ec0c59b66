//! `services`: the service signatures, shipped and from files.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use svctr_core::{Service, Signatures};

use crate::error::CliError;
use crate::output::Run;
use crate::Outcome;

/// Output of `services`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ServicesFormat {
    /// a service per paragraph: its domains, regexes and prefixes
    Text,
    /// one JSON array of services
    Json,
    /// one JSON object per line, a service each
    Jsonl,
}

#[derive(Args)]
pub(crate) struct ServicesArgs {
    /// More service signatures (TOML, format 1; repeatable).
    #[arg(long, value_name = "FILE")]
    signatures: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: ServicesFormat,
}

fn json(s: &Service) -> serde_json::Value {
    serde_json::json!({
        "name": s.name,
        "domains": s.domains,
        "regexes": s.regexes,
        "prefixes": s.prefixes.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

pub(crate) fn run_services(a: ServicesArgs) -> Result<Outcome, CliError> {
    let mut all = Signatures::builtin();
    for f in &a.signatures {
        all.merge(Signatures::load(f)?);
    }
    let mut run = Run::start()?;
    let mut text = String::new();
    match a.format {
        ServicesFormat::Text => {
            for s in all.services() {
                let prefixes: Vec<String> = s.prefixes.iter().map(ToString::to_string).collect();
                text.push_str(&format!("{}\n", s.name));
                for (what, list) in [
                    ("domains", s.domains.join(" ")),
                    ("regexes", s.regexes.join(" ")),
                    ("prefixes", prefixes.join(" ")),
                ] {
                    if !list.is_empty() {
                        text.push_str(&format!("  {what}: {list}\n"));
                    }
                }
            }
        }
        ServicesFormat::Json => {
            let v: Vec<serde_json::Value> = all.services().iter().map(json).collect();
            text = format!("{}\n", serde_json::Value::Array(v));
        }
        ServicesFormat::Jsonl => {
            for s in all.services() {
                text.push_str(&format!("{}\n", json(s)));
            }
        }
    }
    run.print(&text);
    run.finish()?;
    Ok(Outcome::of(&run, all.services().len()))
}
