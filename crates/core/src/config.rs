//! Trace parameters: the probing algorithm, TTL range, pacing, timeouts and stop rules.

use std::net::IpAddr;
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

crate::names::names!(
    Algorithm,
    "algorithm",
    Concurrent => "concurrent",
    HopByHop => "hop-by-hop",
    PacketByPacket => "packet-by-packet",
);

/// Parameters of each trace of the flow tracer. `Default` gives the documented defaults, the
/// single source of them (the command line takes its defaults from here).
///
/// The defaults are the original Service Traceroute tool's (its library's `DefaultDistance`
/// 32, `DefaultTimeout` 2 s, `DefaultMaxConsecutiveMissingHops` 3) with its paper's 3 probes
/// per TTL. They differ from the classic traceroute's ([`crate::TracerouteConfig`]: 30 TTLs,
/// 3 s, 5 silent TTLs) on purpose: a flow's remote distance, read from its packets' TTL,
/// already ends most flow traces one TTL short of the remote, so the silent-TTL rule only has
/// to catch the rest; a fresh traceroute has no such bound and follows traceroute(8) (`-m 30`)
/// and scamper (`gaplimit` 5).
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
    /// A UDP flow whose remote has not answered this long after its first packet is traced
    /// anyway, without a known remote distance (default 1 s).
    pub udp_reply_wait: Duration,
    /// A TCP connection whose SYNs have gone unanswered this long is traced with copies of its
    /// SYN, to show where they die (IPv4; see the probe module). Zero: never. Default 2 s: by
    /// then Linux has sent the SYN twice (it retransmits after 1 s), so one lost SYN or a slow
    /// server is not taken for a stuck handshake.
    pub handshake_wait: Duration,
    /// Seed of the per-flow IP identification sequences (the driver passes a random value).
    pub ident_seed: u16,
    /// At most this many probes of one trace awaiting a reply at once (0: no limit). Like
    /// traceroute's `-N`: it bounds how far past the destination a trace probes.
    pub max_in_flight: usize,
    /// Extra rounds of `probes_per_hop` probes for a TTL whose probes all went unanswered
    /// (default 0).
    pub retries: u8,
    /// This process's slot (`0..FLOW_SLOTS`), reserved by the driver so that no two live
    /// processes share it: the low bits of every probe's tag (IPv4 identification, IPv6 UDP
    /// checksum, IPv6 TCP sequence number; see the probe module), checked by the kernel filter
    /// and by the engine, so that processes tracing the same flow never take each other's
    /// replies.
    pub slot: u8,
}

/// Flow-tracer processes that can trace at once in one network namespace: each has a slot,
/// the low [`SLOT_BITS`] bits of its probes' tags.
pub const FLOW_SLOTS: u8 = 1 << SLOT_BITS;
/// Bits of a flow probe's tag that carry the process slot.
pub const SLOT_BITS: u32 = 4;
/// Probes one flow trace may send: the tags of a process are the 16-bit values with its slot
/// in the low bits, 0 excepted, and the probes of a trace must have distinct tags.
pub const MAX_FLOW_PROBES: usize = (1 << (16 - SLOT_BITS)) - 1;

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
            udp_reply_wait: Duration::from_secs(1),
            handshake_wait: Duration::from_secs(2),
            ident_seed: 0x5eed,
            max_in_flight: 0,
            retries: 0,
            slot: 0,
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
    /// A confidence outside (0, 1).
    #[error("confidence {0} must be above 0 and below 1 (e.g. 0.95)")]
    Confidence(String),
    /// A slot outside `0..FLOW_SLOTS`.
    #[error("process slot {0} is not below {FLOW_SLOTS}")]
    Slot(u8),
    /// More probes per trace than a process has tags for.
    #[error(
        "a trace would send up to {probes} probes (TTLs x probes x (1 + retries)); at most {max} \
         can be told apart"
    )]
    TooManyProbes {
        /// probes asked for
        probes: usize,
        /// the most
        max: usize,
    },
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

    /// [`validate`](Self::validate), and what the flow tracer needs besides: a slot in range
    /// and no more probes per trace than a process has tags for.
    pub fn validate_flow(&self) -> Result<(), ConfigError> {
        self.validate()?;
        if self.slot >= FLOW_SLOTS {
            return Err(ConfigError::Slot(self.slot));
        }
        let probes = self.probes_per_trace();
        if probes > MAX_FLOW_PROBES {
            return Err(ConfigError::TooManyProbes {
                probes,
                max: MAX_FLOW_PROBES,
            });
        }
        Ok(())
    }

    /// The most probes one trace can send: every TTL, every retry round.
    pub fn probes_per_trace(&self) -> usize {
        let ttls = usize::from(self.max_ttl.saturating_sub(self.first_ttl)) + 1;
        ttls * usize::from(self.probes_per_hop) * (1 + usize::from(self.retries))
    }
}
