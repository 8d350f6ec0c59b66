//! A two-way trace: the forward path (a Paris traceroute toward the server, with the flow value
//! the reverse probes use) and the reverse path, in one result, each direction in the path
//! contract.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::ReverseResult;
use crate::path::PathGraph;
use crate::{Protocol, StopReason, TracerouteResult};

/// The forward direction of a two-way trace, in the path contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForwardPath {
    /// `"forward"`.
    pub direction: String,
    /// This host.
    pub source: IpAddr,
    /// The server.
    pub destination: IpAddr,
    /// The probes' protocol.
    pub protocol: Protocol,
    /// Destination port of the probes (UDP, TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Source port of the probes (UDP, TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port: Option<u16>,
    /// 4 or 6.
    pub ip_version: u8,
    /// First probe (RFC 3339).
    pub start: String,
    /// End (RFC 3339).
    pub end: String,
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// Per TTL the nodes with their probes, and the links.
    #[serde(flatten)]
    pub graph: PathGraph,
    /// Probes sent.
    pub probes_sent: u32,
    /// Replies matched.
    pub replies: u32,
}

impl From<&TracerouteResult> for ForwardPath {
    fn from(r: &TracerouteResult) -> Self {
        Self {
            direction: "forward".into(),
            source: r.source,
            destination: r.destination,
            protocol: r.protocol,
            port: r.port,
            source_port: r.source_port,
            ip_version: r.ip_version,
            start: r.start.clone(),
            end: r.end.clone(),
            stop_reason: r.stop_reason,
            graph: r.graph(),
            probes_sent: r.probes_sent,
            replies: r.replies,
        }
    }
}

/// Both directions (`reverse --two-way`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwoWayResult {
    /// This host to the server.
    pub forward: ForwardPath,
    /// The server back to this host.
    pub reverse: ReverseResult,
}

/// Both directions of `reverse --two-way --multipath`: every load-balanced path out (the
/// multipath engine toward the server) and back (the same engine in reverse mode), each in
/// the path contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwoWayMultipath {
    /// This host to the server.
    pub forward: crate::MdaResult,
    /// The server back to this host (`direction` `"reverse"`).
    pub reverse: crate::MdaResult,
}
