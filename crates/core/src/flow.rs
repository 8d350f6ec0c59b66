//! Flows: their identity (the 5-tuple), which flows the user selected, and what the engine learns
//! about a flow from its packets (the state a harmless probe has to be built from).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use svctr_wire::packet::{IpInfo, TcpInfo, TcpOptions};

/// Transport protocol of a flow.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP
    #[default]
    Tcp,
    /// UDP
    Udp,
    /// ICMP echo (classic traceroute only; flows are TCP or UDP)
    Icmp,
}

impl Protocol {
    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Icmp => 1,
        }
    }
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
        }
    }
}

/// A flow's identity seen from this host: protocol, local and remote endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Protocol.
    pub protocol: Protocol,
    /// This host's end.
    pub local: SocketAddr,
    /// The far end.
    pub remote: SocketAddr,
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {}",
            self.protocol.as_str(),
            self.local,
            self.remote
        )
    }
}

/// Which flows to trace. `None` fields match anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowSelector {
    /// Protocol of the flows.
    pub protocol: Protocol,
    /// Remote address.
    pub remote_ip: Option<IpAddr>,
    /// Remote port.
    pub remote_port: Option<u16>,
    /// Local port.
    pub local_port: Option<u16>,
}

impl FlowSelector {
    /// Does this flow match?
    pub fn matches(&self, key: &FlowKey) -> bool {
        key.protocol == self.protocol
            && self.remote_ip.is_none_or(|ip| ip == key.remote.ip())
            && self.remote_port.is_none_or(|p| p == key.remote.port())
            && self.local_port.is_none_or(|p| p == key.local.port())
    }
}

/// TCP flag bits (RFC 9293 §3.1).
pub(crate) mod tcp_flags {
    pub(crate) const FIN: u8 = 0x01;
    pub(crate) const SYN: u8 = 0x02;
    pub(crate) const RST: u8 = 0x04;
    pub(crate) const ACK: u8 = 0x10;
}

/// `a` is after `b` in sequence space (RFC 9293 §3.4 modular comparison).
pub(crate) fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// What the engine has learned about a flow from its packets, from the local host's view.
#[derive(Debug, Clone)]
pub(crate) struct FlowState {
    pub(crate) first_seen: Instant,
    pub(crate) last_seen: Instant,
    pub(crate) packets_out: u64,
    pub(crate) packets_in: u64,
    /// TOS byte (IPv6: traffic class) and DF of the latest outgoing packet: probes copy them
    /// (DSCP and ECN feed per-class forwarding and some load balancers).
    pub(crate) tos: u8,
    pub(crate) dont_fragment: bool,
    /// IPv6 flow label of the latest outgoing packet: probes copy it, because routers hash it
    /// for ECMP (RFC 6438) and Linux may change a connection's label (after a retransmission
    /// timeout it draws a new one), so the latest is the flow's current path.
    pub(crate) flow_label: u32,
    /// The `SND.UNA - 1` and the sequence number of the latest IPv6 TCP probe (see the probe
    /// module: each probe of a trace gets its own number at or below `SND.UNA - 1`).
    pub(crate) v6_probe_seq: Option<(u32, u32)>,
    /// TTL of the latest packet from the remote: its distance.
    pub(crate) remote_ttl: Option<u8>,
    pub(crate) tcp: TcpTrack,
    /// FIN or RST seen in either direction.
    pub(crate) ended: bool,
    /// The latest SYN this host sent (a connection that may be stuck in its handshake).
    pub(crate) syn: Option<SynSeen>,
}

/// An outgoing SYN (without ACK), as a probe that copies it needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SynSeen {
    /// When the first SYN of the connection was seen.
    pub(crate) first: Instant,
    /// The initial sequence number.
    pub(crate) seq: u32,
    /// Flags byte (SYN, and ECE|CWR when the client asks for ECN, RFC 3168 §6.1.1).
    pub(crate) flags: u8,
    pub(crate) window: u16,
    pub(crate) options: TcpOptions,
}

/// TCP sequence state of the local end, as far as the capture shows it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TcpTrack {
    /// SND.NXT: highest sequence number sent + 1 (seq + len, SYN and FIN count one).
    pub(crate) snd_nxt: Option<u32>,
    /// SND.UNA: highest acknowledgment received from the remote.
    pub(crate) snd_una: Option<u32>,
    /// RCV.NXT: highest acknowledgment this host sent.
    pub(crate) rcv_nxt: Option<u32>,
    /// Window field of the latest outgoing segment.
    pub(crate) window: u16,
    /// An outgoing segment without SYN has been seen: the handshake is over.
    pub(crate) established: bool,
}

impl FlowState {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            first_seen: now,
            last_seen: now,
            packets_out: 0,
            packets_in: 0,
            tos: 0,
            dont_fragment: false,
            flow_label: 0,
            v6_probe_seq: None,
            remote_ttl: None,
            tcp: TcpTrack::default(),
            ended: false,
            syn: None,
        }
    }

    /// Learns from one packet of the flow (not from a probe).
    pub(crate) fn update(
        &mut self,
        now: Instant,
        outgoing: bool,
        ip: &IpInfo,
        tcp: Option<&TcpInfo>,
    ) {
        self.last_seen = now;
        if outgoing {
            self.packets_out += 1;
            self.tos = ip.tos;
            self.dont_fragment = ip.dont_fragment;
            self.flow_label = ip.flow_label;
        } else {
            self.packets_in += 1;
            self.remote_ttl = Some(ip.ttl);
        }
        let Some(t) = tcp else { return };
        if t.flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
            self.ended = true;
        }
        if outgoing && t.flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN {
            self.syn = Some(SynSeen {
                first: self.syn.map_or(now, |s| s.first),
                seq: t.seq,
                flags: t.flags,
                window: t.window,
                options: t.syn_options,
            });
        }
        let tr = &mut self.tcp;
        if outgoing {
            let syn = u32::from(t.flags & tcp_flags::SYN != 0);
            let fin = u32::from(t.flags & tcp_flags::FIN != 0);
            let end = t
                .seq
                .wrapping_add(t.payload_len)
                .wrapping_add(syn)
                .wrapping_add(fin);
            if tr.snd_nxt.is_none_or(|n| seq_after(end, n)) {
                tr.snd_nxt = Some(end);
            }
            if t.flags & tcp_flags::ACK != 0 && tr.rcv_nxt.is_none_or(|n| seq_after(t.ack, n)) {
                tr.rcv_nxt = Some(t.ack);
            }
            tr.window = t.window;
            if t.flags & tcp_flags::SYN == 0 && t.flags & tcp_flags::ACK != 0 {
                tr.established = true;
            }
        } else if t.flags & tcp_flags::ACK != 0 && tr.snd_una.is_none_or(|n| seq_after(t.ack, n)) {
            tr.snd_una = Some(t.ack);
        }
    }

    /// The remote's distance in hops, read from the TTL of its packets: the initial TTL is taken
    /// as the smallest common default (64, 128, 255) not below the TTL seen. The number of routers
    /// between us is `initial - seen`; the remote itself is one TTL further.
    pub(crate) fn remote_router_hops(&self) -> Option<u8> {
        let ttl = self.remote_ttl?;
        let initial: u8 = if ttl <= 64 {
            64
        } else if ttl <= 128 {
            128
        } else {
            255
        };
        Some(initial - ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_comparison_wraps() {
        assert!(seq_after(1, 0));
        assert!(seq_after(0, u32::MAX));
        assert!(!seq_after(u32::MAX, 0));
        assert!(!seq_after(5, 5));
    }

    #[test]
    fn selector() {
        let key = FlowKey {
            protocol: Protocol::Udp,
            local: "198.18.0.2:4000".parse().unwrap(),
            remote: "198.18.9.2:9000".parse().unwrap(),
        };
        let mut s = FlowSelector {
            protocol: Protocol::Udp,
            ..Default::default()
        };
        assert!(s.matches(&key));
        s.remote_port = Some(9001);
        assert!(!s.matches(&key));
        s.remote_port = Some(9000);
        s.remote_ip = Some("198.18.9.2".parse().unwrap());
        s.local_port = Some(4000);
        assert!(s.matches(&key));
        s.protocol = Protocol::Tcp;
        assert!(!s.matches(&key));
    }
}
