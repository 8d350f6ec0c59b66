//! Value parsers and value lists shared by the subcommands: syntax only, no system calls
//! (resolving names and opening sockets happens once parsing is over).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::ValueEnum;
use svctr_core::{Algorithm, Granularity, Strategy};

/// A port, 1-65535.
pub(crate) fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("invalid port {s:?}: expected 1-65535")),
        Ok(p) => Ok(p),
    }
}

/// `IP`, `IP:PORT`, `[IPv6]` or `[IPv6]:PORT`.
pub(crate) fn parse_remote(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if let Ok(ip @ IpAddr::V6(_)) = inner.parse::<IpAddr>() {
            return Ok((ip, None));
        }
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err(format!("invalid port in {s:?}: expected 1-65535"));
        }
        return Ok((sa.ip(), Some(sa.port())));
    }
    if let Some((ip, port)) = s.rsplit_once(':') {
        if ip
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok()
        {
            return Err(format!("invalid port {port:?} in {s:?}: expected 1-65535"));
        }
    }
    Err(format!(
        "invalid address {s:?}: expected IP or IP:PORT (IPv6 as [IP] or [IP]:PORT)"
    ))
}

/// Seconds (`2`, `0.5`) or a duration with a unit (`2s`, `150ms`, `1m`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && (0.0..1e9).contains(&secs) {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("invalid duration {s:?}"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (e.g. 2s, 150ms, 1m)"))
}

/// A duration option whose default comes from the engines' configuration: shown and parsed
/// as [`parse_duration`] does (`2s`, `150ms`, `0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DurationArg(pub(crate) Duration);

impl std::fmt::Display for DurationArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_zero() {
            f.write_str("0")
        } else {
            write!(f, "{}", humantime::format_duration(self.0))
        }
    }
}

impl std::str::FromStr for DurationArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Self)
    }
}

/// traceroute's `-z`: a number above 10 is milliseconds, else seconds; or a duration with a
/// unit.
pub(crate) fn parse_sendwait(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(n) if n.is_finite() && n > 10.0 && n < 1e9 => Ok(Duration::from_secs_f64(n / 1000.0)),
        _ => parse_duration(s),
    }
}

/// Probe scheduling (the three algorithms of the Service Traceroute paper).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum AlgorithmArg {
    /// every probe of every TTL at once
    Concurrent,
    /// the probes of one TTL, then the next TTL once they are answered or timed out
    HopByHop,
    /// one probe at a time
    PacketByPacket,
}

impl From<Algorithm> for AlgorithmArg {
    fn from(a: Algorithm) -> Self {
        match a {
            Algorithm::Concurrent => Self::Concurrent,
            Algorithm::HopByHop => Self::HopByHop,
            Algorithm::PacketByPacket => Self::PacketByPacket,
        }
    }
}

impl From<AlgorithmArg> for Algorithm {
    fn from(a: AlgorithmArg) -> Self {
        match a {
            AlgorithmArg::Concurrent => Algorithm::Concurrent,
            AlgorithmArg::HopByHop => Algorithm::HopByHop,
            AlgorithmArg::PacketByPacket => Algorithm::PacketByPacket,
        }
    }
}

/// Where a traceroute puts its probe number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StrategyArg {
    /// in a port or the ICMP sequence: each probe may take another path
    Classic,
    /// in a checksum or the TCP sequence number: one flow identifier, one path
    Paris,
    /// in the IPv4 identification / IPv6 payload length: one flow identifier, one path
    Dublin,
}

impl From<Strategy> for StrategyArg {
    fn from(a: Strategy) -> Self {
        match a {
            Strategy::Classic => Self::Classic,
            Strategy::Paris => Self::Paris,
            Strategy::Dublin => Self::Dublin,
        }
    }
}

impl From<StrategyArg> for Strategy {
    fn from(a: StrategyArg) -> Self {
        match a {
            StrategyArg::Classic => Strategy::Classic,
            StrategyArg::Paris => Strategy::Paris,
            StrategyArg::Dublin => Strategy::Dublin,
        }
    }
}

/// How many flows one trace stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PerArg {
    /// every flow (each 5-tuple may take its own path)
    Flow,
    /// one trace per protocol, destination address and port at a time
    DestinationPort,
    /// one trace per protocol and destination address at a time
    Destination,
}

impl From<Granularity> for PerArg {
    fn from(g: Granularity) -> Self {
        match g {
            Granularity::Flow => Self::Flow,
            Granularity::DestinationPort => Self::DestinationPort,
            Granularity::Destination => Self::Destination,
        }
    }
}

impl From<PerArg> for Granularity {
    fn from(a: PerArg) -> Self {
        match a {
            PerArg::Flow => Granularity::Flow,
            PerArg::DestinationPort => Granularity::DestinationPort,
            PerArg::Destination => Granularity::Destination,
        }
    }
}

/// How `trace` and `reverse` receive replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReceiveArg {
    /// raw sockets up to 1024 targets, a libpcap capture beyond
    Auto,
    /// raw sockets with kernel filters: cheap to open and close; probe send times taken in
    /// user space
    Raw,
    /// a libpcap capture: kernel timestamps of probes leaving too, a ring for many targets
    Pcap,
}

impl From<ReceiveArg> for svctr_io::Receive {
    fn from(r: ReceiveArg) -> Self {
        match r {
            ReceiveArg::Auto => Self::Auto,
            ReceiveArg::Raw => Self::Raw,
            ReceiveArg::Pcap => Self::Capture,
        }
    }
}

/// Output of the commands that trace (`flow`, `monitor`, `trace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// traceroute-like text, each hop printed as soon as it is known (trace) or each trace as
    /// it finishes
    Text,
    /// one JSON object, or an array of them when there are several results, printed at the end
    Json,
    /// one JSON object per line, printed as each trace finishes
    Jsonl,
    /// RIPE Atlas traceroute results, one JSON object per line, as Atlas's own tools read
    /// them (ripe.atlas.sagan); not with --multipath or --reverse
    Atlas,
    /// one flat JSON object per probe, answered or not, for analytics stores (ClickHouse:
    /// schema/clickhouse/replies.sql); not with --multipath or --reverse
    Replies,
    /// scamper's binary warts format (warts(5)), as sc_warts2json and sc_wartsdump read it;
    /// not with --multipath or --reverse
    Warts,
}

/// Output of `trace`: the formats of the other commands, and graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TraceFormat {
    /// traceroute-like text, each hop printed as soon as it is known
    Text,
    /// one JSON object, or an array of them when there are several targets, printed at the end
    Json,
    /// one JSON object per line, printed as each target finishes
    Jsonl,
    /// a Graphviz graph of every target's paths (nodes by TTL, diamonds visible), at the end
    Dot,
    /// the Graphviz graph rendered as SVG by Graphviz's `dot` program
    Svg,
    /// RIPE Atlas traceroute results, one JSON object per line, as Atlas's own tools read
    /// them (ripe.atlas.sagan); trace without --multipath only
    Atlas,
    /// one flat JSON object per probe, answered or not, for analytics stores (ClickHouse:
    /// schema/clickhouse/replies.sql); without --multipath only
    Replies,
    /// scamper's binary warts format (warts(5)), as sc_warts2json and sc_wartsdump read it
    /// (with --multipath: scamper's tracelb objects)
    Warts,
}

// The options of every `--multipath` (they need it).
// (Not a doc comment: clap would make it the `about` of every subcommand that flattens
// this, since the subcommands' arguments are built late; see `Command` in main.rs.)
#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct MultipathOpts {
    /// --multipath: the probability of finding every node and link.
    #[arg(long, requires = "multipath", value_parser = parse_confidence,
          default_value_t = svctr_core::MdaConfig::default().confidence)]
    pub(crate) confidence: f64,
    /// --multipath: probes per destination at most (the stop reason says when it was reached).
    #[arg(long, requires = "multipath", default_value_t = svctr_core::MdaConfig::default().max_probes,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_probes: u32,
}

/// `--confidence`: a probability strictly between 0 and 1.
pub(crate) fn parse_confidence(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(c) if c > 0.0 && c < 1.0 => Ok(c),
        _ => Err(format!(
            "invalid confidence {s:?}: expected a probability between 0 and 1, e.g. 0.95"
        )),
    }
}

/// `--retrace-after`: a duration, or never (`never` or 0).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retrace(pub(crate) Option<Duration>);

impl std::fmt::Display for Retrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(d) => DurationArg(d).fmt(f),
            None => f.write_str("never"),
        }
    }
}

pub(crate) fn parse_retrace(s: &str) -> Result<Retrace, String> {
    if s.eq_ignore_ascii_case("never") {
        return Ok(Retrace(None));
    }
    let d = parse_duration(s)?;
    Ok(Retrace((!d.is_zero()).then_some(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes() {
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(parse_remote("[2001:db8::1]"), Ok((v6, None)));
        assert_eq!(parse_remote("2001:db8::1"), Ok((v6, None)));
        assert_eq!(parse_remote("[2001:db8::1]:443"), Ok((v6, Some(443))));
        assert_eq!(
            parse_remote("192.0.2.1:80"),
            Ok(("192.0.2.1".parse().unwrap(), Some(80)))
        );
        assert!(parse_remote("[2001:db8::1]:0")
            .unwrap_err()
            .contains("1-65535"));
        assert!(parse_remote("[192.0.2.1]").is_err());
        assert!(parse_remote("192.0.2.1:x")
            .unwrap_err()
            .contains("invalid port"));
        assert!(parse_remote("nope").unwrap_err().contains("[IP]"));
    }

    #[test]
    fn sendwait_is_traceroutes() {
        assert_eq!(parse_sendwait("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_sendwait("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_sendwait("50"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_sendwait("30ms"), Ok(Duration::from_millis(30)));
        assert!(parse_sendwait("-1").is_err());
    }
}
