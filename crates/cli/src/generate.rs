//! `generate`: the man pages and shell completions, made from the clap definitions themselves
//! (clap_mangen, clap_complete), so they cannot drift from the options. `scripts/install.sh`
//! installs them; packagers can call it the same way.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Subcommand};

use crate::error::CliError;
use crate::Outcome;

#[derive(Args)]
pub(crate) struct GenerateArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Write the man pages into DIR: service-traceroute.1 and one per subcommand
    /// (service-traceroute-trace.1, ...).
    Man {
        /// An existing directory.
        dir: PathBuf,
    },
    /// Print the completion script for SHELL on stdout.
    Completions { shell: clap_complete::Shell },
}

pub(crate) fn run_generate(a: GenerateArgs) -> Result<Outcome, CliError> {
    let cmd = crate::Cli::command();
    match a.what {
        What::Man { dir } => {
            if !dir.is_dir() {
                return Err(CliError::input(format!(
                    "{}: not a directory",
                    dir.display()
                )));
            }
            clap_mangen::generate_to(cmd, &dir).map_err(CliError::Output)?;
            let n = std::fs::read_dir(&dir)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".1"))
                        .count()
                })
                .unwrap_or(0);
            eprintln!("service-traceroute: {n} man pages in {}", dir.display());
            Ok(Outcome::Printed(n))
        }
        What::Completions { shell } => {
            let mut cmd = cmd;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, crate::BIN, &mut script);
            let mut script = String::from_utf8_lossy(&script).into_owned();
            if shell == clap_complete::Shell::Bash {
                script = fix_bash(&script);
            }
            let mut out = std::io::stdout().lock();
            out.write_all(script.as_bytes())
                .and_then(|()| out.flush())
                .map_err(CliError::Output)?;
            Ok(Outcome::Printed(1))
        }
    }
}

/// clap_complete (4.6) names a subcommand's case in the bash script after its bin name with
/// every `-` turned into `__subcmd__`, the separator of subcommands, but the dispatch loop
/// after the bin name with `-` turned into `__`: for a bin name with a hyphen, such as ours,
/// no subcommand's options were ever completed (`service-traceroute trace --rec<TAB>`). The
/// cases are renamed to what the loop computes; the install test completes through bash.
fn fix_bash(script: &str) -> String {
    script.replace(
        &crate::BIN.replace('-', "__subcmd__"),
        &crate::BIN.replace('-', "__"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn bash_cases_match_the_dispatch_loop() {
        let mut cmd = <crate::Cli as clap::CommandFactory>::command();
        let mut script = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut cmd,
            crate::BIN,
            &mut script,
        );
        let fixed = super::fix_bash(&String::from_utf8(script).unwrap());
        // What the loop sets for `service-traceroute trace`, and its case.
        assert!(fixed.contains("cmd=\"service__traceroute__subcmd__trace\""));
        assert!(fixed.contains("\n        service__traceroute__subcmd__trace)\n"));
        assert!(!fixed.contains("service__subcmd__"));
    }
}
