//! Trace parameters: the probing algorithm, TTL range, pacing, timeouts and stop rules.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How probes are scheduled (the three algorithms of the Service Traceroute paper, §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Send every probe of every TTL without waiting for replies (fastest: needed for short
    /// flows such as web downloads).
    #[default]
    Concurrent,
    /// Send the probes of one TTL, wait until each is answered or timed out, then the next TTL.
    HopByHop,
    /// Send one probe, wait for its answer or timeout, then the next.
    PacketByPacket,
}

impl Algorithm {
    /// The name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Concurrent => "concurrent",
            Self::HopByHop => "hop-by-hop",
            Self::PacketByPacket => "packet-by-packet",
        }
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "concurrent" => Ok(Self::Concurrent),
            "hop-by-hop" | "hopbyhop" => Ok(Self::HopByHop),
            "packet-by-packet" | "packetbypacket" => Ok(Self::PacketByPacket),
            _ => Err(format!(
                "unknown algorithm {s:?} (expected concurrent, hop-by-hop or packet-by-packet)"
            )),
        }
    }
}

/// Parameters of each trace. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceConfig {
    /// Probe scheduling.
    pub algorithm: Algorithm,
    /// First TTL probed (default 1).
    pub first_ttl: u8,
    /// Last TTL probed at most (default 32).
    pub max_ttl: u8,
    /// Probes per TTL (default 3).
    pub probes_per_hop: u8,
    /// Gap between two probes of the same TTL (default 0).
    pub inter_probe: Duration,
    /// Gap between the last probe of one TTL and the first of the next (default 0).
    pub inter_hop: Duration,
    /// How long a probe waits for its reply (default 2 s).
    pub timeout: Duration,
    /// Stop after this many consecutive silent TTLs; 0 disables the rule (default 3).
    pub max_missing: u8,
    /// Stop at the TTL where any of these addresses replies.
    pub stop_at: Vec<IpAddr>,
    /// A UDP flow that has been silent (both directions) this long has ended; zero disables
    /// (default 10 s).
    pub flow_timeout: Duration,
    /// Probe past the remote's distance. By default the engine stops one TTL short of the
    /// remote, whose distance it reads from the TTL of the remote's packets, so that probes never
    /// reach the remote application (an empty UDP datagram is a request to a UDP server).
    pub probe_remote: bool,
    /// Trace at most this many flows, then select no more (0: no limit).
    pub max_flows: usize,
    /// A UDP flow whose remote has not answered this long after its first packet is traced
    /// anyway, without a known remote distance (default 1 s).
    pub udp_reply_wait: Duration,
    /// Seed of the per-flow IP identification sequences (the driver passes a random value).
    pub ident_seed: u16,
    /// At most this many probes of one trace awaiting a reply at once (0: no limit). Like
    /// traceroute's `-N`: it bounds how far past the destination a trace probes.
    pub max_in_flight: usize,
    /// Extra rounds of `probes_per_hop` probes for a TTL whose probes all went unanswered
    /// (default 0).
    pub retries: u8,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Concurrent,
            first_ttl: 1,
            max_ttl: 32,
            probes_per_hop: 3,
            inter_probe: Duration::ZERO,
            inter_hop: Duration::ZERO,
            timeout: Duration::from_secs(2),
            max_missing: 3,
            stop_at: Vec::new(),
            flow_timeout: Duration::from_secs(10),
            probe_remote: false,
            max_flows: 0,
            udp_reply_wait: Duration::from_secs(1),
            ident_seed: 0x5eed,
            max_in_flight: 0,
            retries: 0,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// first TTL is 0 or above max TTL.
    #[error("first TTL {first} must be between 1 and the max TTL {max}")]
    TtlRange {
        /// first TTL
        first: u8,
        /// max TTL
        max: u8,
    },
    /// zero probes per hop.
    #[error("probes per hop must be between 1 and 255")]
    NoProbes,
    /// zero timeout.
    #[error("the probe timeout must be positive")]
    NoTimeout,
    /// no local address to tell outgoing from incoming packets.
    #[error("no local IP address given: cannot tell the flow's direction")]
    NoLocalAddress,
}

impl TraceConfig {
    /// Checks that the configuration can work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.first_ttl == 0 || self.first_ttl > self.max_ttl {
            return Err(ConfigError::TtlRange {
                first: self.first_ttl,
                max: self.max_ttl,
            });
        }
        if self.probes_per_hop == 0 {
            return Err(ConfigError::NoProbes);
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::NoTimeout);
        }
        Ok(())
    }
}
