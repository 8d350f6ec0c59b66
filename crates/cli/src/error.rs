//! The binary's errors: one line each, and the exit status they mean (see `main`).

use std::io;

/// What ends a run with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The live driver failed (privileges, interface, capture, sockets, shield).
    #[error(transparent)]
    Run(#[from] svctr_io::Error),
    /// A service signature file or selection is wrong.
    #[error(transparent)]
    Signatures(#[from] svctr_core::SignatureError),
    /// Trace parameters that cannot work together.
    #[error(transparent)]
    Config(#[from] svctr_core::ConfigError),
    /// Input the command line parser could not reject by itself.
    #[error("{0}")]
    Input(String),
    /// stdout failed for another reason than a closed pipe (a full disk, `/dev/full`).
    #[error("writing output: {0}")]
    Output(io::Error),
    /// The metrics endpoint cannot listen (`--metrics-listen`: address in use, not this
    /// host's, a port below 1024 without the privilege).
    #[error("--metrics-listen {addr}: cannot listen: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
}

impl CliError {
    /// Bad input given by the user.
    pub(crate) fn input(text: impl Into<String>) -> Self {
        Self::Input(text.into())
    }

    /// The TTL range error in the words of the command's own options (`-f`/`-m` for trace,
    /// `--first-ttl`/`--max-ttl` for flow): the engines check the range, once.
    pub(crate) fn naming_ttls(self, first_opt: &str, max_opt: &str) -> Self {
        use svctr_core::ConfigError;
        match self {
            Self::Run(svctr_io::Error::Config(ConfigError::TtlRange { first, max }))
            | Self::Config(ConfigError::TtlRange { first, max }) => {
                Self::input(format!("{first_opt} {first} is above {max_opt} {max}"))
            }
            other => other,
        }
    }
}
