//! `service-traceroute`: the command line. It parses arguments, runs the library and prints;
//! every decision about probes and replies lives in the engines of `svctr-core`.
//!
//! One module per subcommand (its arguments, the configuration it builds, its output), and the
//! shared pieces: value parsers (`args`), the error type (`error`), stdout and the stop flag
//! (`output`).
//!
//! # Exit status
//!
//! One rule for every subcommand:
//!
//! * **0**: results were printed (a trace ended by Ctrl-C, SIGTERM or SIGHUP still prints what
//!   it found), or the output was closed by its reader (`| head`);
//! * **1**: no result: nothing matched in time, the run was interrupted before its first
//!   result, or the flows that matched could not be traced; stderr says which, in one line;
//! * **2**: bad input, a failure to start (privileges, unknown interface, a port or marker
//!   another process holds) or to run (capture, output); one line on stderr.

/// The program's name, as the records, man pages and completions give it.
pub(crate) const BIN: &str = env!("CARGO_BIN_NAME");

mod args;
mod asn;
mod atlas;
mod branches;
mod compare;
mod error;
mod flow;
mod generate;
mod graph;
mod metrics;
mod output;
mod record;
mod replies;
mod reverse;
mod reverse_flow;
mod services;
#[cfg(test)]
mod testdata;
mod trace;
mod warts;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::CliError;

#[derive(Parser)]
#[command(
    name = "service-traceroute",
    version,
    about = "Shows the network path that a live application flow really takes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// When started as root, the user to run as once the captures and sockets are open (with
    /// only the capabilities still needed; `root` stays root, capabilities still dropped).
    #[arg(long, global = true, default_value = "nobody", value_name = "USER")]
    user: String,
    /// The name of this vantage point in every JSON record (`vantage`; default: the host
    /// name).
    #[arg(long, global = true, value_name = "NAME")]
    vantage: Option<String>,
}

/// What a subcommand keeps once its first run is set up: (`CAP_NET_RAW`, `CAP_NET_ADMIN`)
/// (see `svctr_io::privilege`).
fn keeps(c: &Command) -> (bool, bool) {
    match c {
        Command::Flow(a) => a.keeps(),
        Command::Monitor(a) => a.keeps(),
        // One run each.
        Command::Trace(_) | Command::Services(_) => (false, false),
        // A flow trace, then fresh traces (or a discovery): more runs; the flow's shield.
        Command::Compare(_) => (true, true),
        Command::Reverse(a) => a.keeps(),
        // Its nftables table is removed at exit.
        Command::ReverseServer(_) => (false, true),
        Command::Generate(_) => (false, false),
    }
}

// Each subcommand's arguments are built only when it is the one invoked: building them all
// took a sixth of a one-destination `trace`'s user time.
#[derive(Subcommand)]
#[command(defer = true)]
enum Command {
    /// Trace the path of live TCP or UDP flows with probes that carry the flow's own 5-tuple.
    Flow(flow::FlowArgs),
    /// Classic, Paris or Dublin traceroute to one or more targets, with the flags of traceroute(8).
    Trace(trace::TraceArgs),
    /// Trace a live flow, then fresh Paris flows to the same destination and port, and show
    /// where their paths differ (the Service Traceroute paper's experiment).
    Compare(compare::CompareArgs),
    /// Watch for the flows of named services (DNS, TLS and QUIC server names, IP prefixes) and
    /// trace each, re-tracing long-lived ones, until stopped; results as JSON lines.
    Monitor(flow::MonitorArgs),
    /// List the service signatures (the shipped ones and those of --signatures files).
    Services(services::ServicesArgs),
    /// Reverse traceroute: ask a reverse-traceroute server to probe the path back to this
    /// host and show who answered (draft-heiwin-intarea-reverse-traceroute).
    Reverse(reverse::ReverseArgs),
    /// Serve reverse-traceroute requests on an interface (rate-limited, allowlists, logs).
    ReverseServer(reverse::ServerArgs),
    /// Write the man pages or print shell completions (made from these very options).
    Generate(generate::GenerateArgs),
}

/// How a run that did not fail ended (see the exit-status rule in the module doc).
pub(crate) enum Outcome {
    /// This many results were printed.
    Printed(usize),
    /// The output's reader went away (`| head`): it has what it wanted.
    Closed,
    /// No result, and why, in words.
    Nothing(String),
}

impl Outcome {
    pub(crate) fn nothing(why: impl Into<String>) -> Self {
        Self::Nothing(why.into())
    }

    /// `n` results printed to `run`'s output, or the output closed.
    pub(crate) fn of(run: &output::Run, n: usize) -> Self {
        if run.output_closed() {
            Self::Closed
        } else {
            Self::Printed(n)
        }
    }
}

/// Parses the command line; a usage error becomes one line on stderr and exit status 2.
fn parse_cli() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayVersion
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            let text = e.render().to_string();
            // clap's message is a paragraph then usage hints: keep the paragraph, on one line.
            let para: Vec<&str> = text
                .lines()
                .skip_while(|l| l.trim().is_empty())
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let line = para.join(" ");
            let line = line.strip_prefix("error: ").unwrap_or(&line);
            eprintln!("service-traceroute: error: {line} (see --help)");
            Err(ExitCode::from(2))
        }
    }
}

fn run(cli: Cli) -> Result<Outcome, CliError> {
    // Before any thread exists (see svctr_io::privilege). `generate` needs no privilege and
    // switches to no one (a packager may run it as root while building a package).
    let (keep_raw, keep_admin) = keeps(&cli.command);
    record::set_vantage(cli.vantage.clone());
    if !matches!(cli.command, Command::Generate(_)) {
        svctr_io::privilege::init(svctr_io::privilege::Privileges {
            user: Some(cli.user.clone()),
            keep_raw,
            keep_admin,
        })?;
    }
    match cli.command {
        Command::Flow(a) => flow::run_flow(a),
        Command::Trace(a) => trace::run_trace(a),
        Command::Compare(a) => compare::run_compare(a),
        Command::Monitor(a) => flow::run_monitor_cmd(a),
        Command::Services(a) => services::run_services(a),
        Command::Reverse(a) => reverse::run_reverse(a),
        Command::ReverseServer(a) => reverse::run_server(a),
        Command::Generate(a) => generate::run_generate(a),
    }
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(c) => c,
        Err(code) => return code,
    };
    match run(cli) {
        Ok(Outcome::Printed(n)) if n > 0 => ExitCode::SUCCESS,
        Ok(Outcome::Closed) => ExitCode::SUCCESS,
        Ok(Outcome::Printed(_)) => {
            eprintln!("service-traceroute: interrupted before the first result");
            ExitCode::from(1)
        }
        Ok(Outcome::Nothing(why)) => {
            eprintln!("service-traceroute: {why}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("service-traceroute: error: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// The subcommands' arguments are built late (`defer`): each one's own help must still
    /// open with its description from `Command`, not with that of a struct it flattens.
    #[test]
    fn deferred_subcommands_keep_their_about() {
        let mut cmd = super::Cli::command();
        let before: Vec<(String, String)> = cmd
            .get_subcommands()
            .map(|s| {
                let about = s.get_about().map(|a| a.to_string()).unwrap_or_default();
                (s.get_name().to_string(), about)
            })
            .collect();
        assert!(before.len() >= 7, "{before:?}");
        cmd.build();
        for (name, about) in before {
            assert!(!about.is_empty(), "{name} has no description");
            let sub = cmd.find_subcommand_mut(&name).unwrap();
            assert_eq!(sub.get_about().map(|a| a.to_string()), Some(about.clone()));
            let help = sub.render_help().to_string();
            assert!(help.starts_with(&about), "{name}'s help: {help}");
            // The arguments did get built.
            assert!(
                sub.get_arguments().count() > 2 || sub.has_subcommands(),
                "{name}"
            );
        }
    }
}
