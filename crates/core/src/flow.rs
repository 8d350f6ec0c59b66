//! Flows: their identity (the 5-tuple), which flows the user selected, and what the engine learns
//! about a flow from its packets (the state a harmless probe has to be built from).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use svctr_wire::packet::{IpInfo, Packet, TcpInfo, TcpOptions, Transport};

pub use svctr_wire::flow::{FlowKey, Protocol};

/// Which flows may be traced. `None` fields match anything; only TCP and UDP flows pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowFilter {
    /// TCP or UDP (both when `None`).
    pub protocol: Option<Protocol>,
    /// Remote address.
    pub remote_ip: Option<IpAddr>,
    /// Remote port.
    pub remote_port: Option<u16>,
    /// Local port.
    pub local_port: Option<u16>,
}

impl FlowFilter {
    /// The flows of one protocol (others fields: anything).
    pub fn protocol(protocol: Protocol) -> Self {
        Self {
            protocol: Some(protocol),
            ..Self::default()
        }
    }

    /// Does this flow pass?
    pub fn matches(&self, key: &FlowKey) -> bool {
        matches!(key.protocol, Protocol::Tcp | Protocol::Udp)
            && self.protocol.is_none_or(|p| p == key.protocol)
            && self.remote_ip.is_none_or(|ip| ip == key.remote.ip())
            && self.remote_port.is_none_or(|p| p == key.remote.port())
            && self.local_port.is_none_or(|p| p == key.local.port())
    }
}

/// The flow of a TCP or UDP packet as this host sees it (`local`: this host's addresses), and
/// whether this host sent it; `None` for other packets and packets between other hosts.
pub(crate) fn flow_of(local: &[IpAddr], pkt: &Packet<'_>) -> Option<(FlowKey, bool)> {
    let (protocol, sport, dport) = match &pkt.transport {
        Transport::Tcp(t) => (Protocol::Tcp, t.src_port, t.dst_port),
        Transport::Udp(u) => (Protocol::Udp, u.src_port, u.dst_port),
        _ => return None,
    };
    let (src, dst) = (
        SocketAddr::new(pkt.ip.src, sport),
        SocketAddr::new(pkt.ip.dst, dport),
    );
    if local.contains(&pkt.ip.src) {
        Some((
            FlowKey {
                protocol,
                local: src,
                remote: dst,
            },
            true,
        ))
    } else if local.contains(&pkt.ip.dst) {
        Some((
            FlowKey {
                protocol,
                local: dst,
                remote: src,
            },
            false,
        ))
    } else {
        None
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
    /// TOS / traffic class and IPv6 flow label of the latest packet from the remote: the
    /// reverse direction's, which `flow --reverse` asks the remote's server to copy.
    pub(crate) remote_tos: u8,
    pub(crate) remote_flow_label: u32,
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
    /// Window field of the latest incoming segment.
    pub(crate) remote_window: u16,
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
            remote_tos: 0,
            remote_flow_label: 0,
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
            self.remote_tos = ip.tos;
            self.remote_flow_label = ip.flow_label;
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
        } else {
            tr.remote_window = t.window;
            if t.flags & tcp_flags::ACK != 0 && tr.snd_una.is_none_or(|n| seq_after(t.ack, n)) {
                tr.snd_una = Some(t.ack);
            }
        }
    }

    /// The flow as the remote's flow-shaped reverse probes imitate it (`flow --reverse`): its
    /// ports, the remote's keep-alive numbers as this host knows them (TCP: the remote's
    /// `SND.UNA` is this host's `RCV.NXT`, its `RCV.NXT` this host's `SND.UNA`), the remote's
    /// TOS, flow label and distance. `None` for a TCP flow without both directions seen.
    pub(crate) fn reverse_flow(&self, key: &FlowKey) -> Option<crate::reverse::ReverseFlow> {
        let (seq, ack) = match key.protocol {
            Protocol::Tcp => (self.tcp.rcv_nxt?.wrapping_sub(1), self.tcp.snd_una?),
            Protocol::Udp => (0, 0),
            Protocol::Icmp => return None,
        };
        Some(crate::reverse::ReverseFlow {
            server_port: key.remote.port(),
            client_port: key.local.port(),
            seq,
            ack,
            window: self.tcp.remote_window,
            tos: self.remote_tos,
            flow_label: self.remote_flow_label,
            distance: self.remote_router_hops(),
        })
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
        let mut s = FlowFilter::protocol(Protocol::Udp);
        assert!(s.matches(&key));
        s.remote_port = Some(9001);
        assert!(!s.matches(&key));
        s.remote_port = Some(9000);
        s.remote_ip = Some("198.18.9.2".parse().unwrap());
        s.local_port = Some(4000);
        assert!(s.matches(&key));
        s.protocol = Some(Protocol::Tcp);
        assert!(!s.matches(&key));
    }
}
