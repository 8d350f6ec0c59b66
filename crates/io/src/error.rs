//! Errors of the live driver. Each variant's message is one line a user can act on.

use std::io;
use std::time::Duration;

/// What can go wrong when tracing live flows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not allowed to capture or to open a raw socket.
    #[error("{what} needs root or the capabilities cap_net_raw,cap_net_admin (setcap cap_net_raw,cap_net_admin+ep on the binary)")]
    Privilege {
        /// What was attempted.
        what: String,
    },
    /// The interface does not exist.
    #[error("unknown interface {0:?} (see `ip link`)")]
    UnknownInterface(String),
    /// The interface has no address of the needed family.
    #[error("interface {0:?} has no IP address (of the family asked for): cannot tell the flows' direction")]
    NoAddress(String),
    /// libpcap failed.
    #[error("capture on {iface}: {source}")]
    Capture {
        /// interface
        iface: String,
        /// libpcap's error
        source: pcap::Error,
    },
    /// The BPF filter did not compile.
    #[error("bad capture filter {filter:?}: {source}")]
    Filter {
        /// filter text
        filter: String,
        /// libpcap's error
        source: pcap::Error,
    },
    /// A socket call failed.
    #[error("{what}: {source}")]
    Socket {
        /// what was attempted
        what: String,
        /// the OS error
        source: io::Error,
    },
    /// The UDP ICMP shield could not be installed.
    #[error("cannot install the UDP ICMP shield ({0}); install nftables or pass --no-udp-shield")]
    Shield(String),
    /// No flow matched within the run's duration.
    #[error("no flow matched {selector} within {}", humantime_secs(*.duration))]
    NothingMatched {
        /// the selection, in words
        selector: String,
        /// how long we waited
        duration: Duration,
    },
    /// A marker this process needs (a source port, an ICMP identifier, a flow slot) is held
    /// by another process.
    #[error("{0}")]
    Busy(String),
    /// Trace parameters that cannot work together.
    #[error(transparent)]
    Config(#[from] svctr_core::ConfigError),
    /// Something this version cannot do.
    #[error("{0}")]
    Unsupported(String),
    /// The packet file (`--pcap`) could not be created or written.
    #[error("packet file {path}: {source}")]
    Savefile {
        /// the file
        path: String,
        /// libpcap's error
        source: pcap::Error,
    },
}

fn humantime_secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
