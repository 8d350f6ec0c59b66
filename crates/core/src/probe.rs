//! How a probe is built from the flow it imitates, and why it does no harm.
//!
//! A probe must be forwarded exactly like the flow (same 5-tuple, DSCP/ECN, DF) yet change the
//! state of neither endpoint nor of any stateful middlebox.
//!
//! # TCP: a keep-alive-shaped segment
//!
//! The probe is a pure ACK with `SEG.SEQ = SND.UNA - 1`, `SEG.ACK = RCV.NXT`, the flow's last
//! window, no payload and no options. This is the shape of a TCP keep-alive (RFC 9293 §3.8.4,
//! RFC 1122 §4.2.3.6: "SEG.SEQ = SND.NXT-1"), a segment every stack and middlebox has handled
//! for forty years. Each choice and its reason:
//!
//! * **The local stack must ignore the ICMP errors the probes cause.** Linux `tcp_v4_err()`
//!   looks up the socket by the quoted 5-tuple and then drops the error, counting
//!   `OutOfWindowIcmps`, unless the quoted sequence number is inside `[snd_una, snd_nxt]`;
//!   when it is inside and the socket has `IP_RECVERR`, a Time Exceeded becomes a hard
//!   `EHOSTUNREACH` for the application (the original Go tool copied the last segment's `seq`,
//!   which is `SND.NXT`, inside that range). `SND.UNA - 1` is always outside it, and stays
//!   outside because `SND.UNA` only grows. We use `SND.UNA` (the highest ACK received), not
//!   `SND.NXT`, so this holds also while the local end has unacknowledged data in flight.
//! * **The remote must not count a duplicate ACK nor update its send window.** RFC 9293
//!   §3.10.7.4 checks the sequence number *first*: a zero-length segment is acceptable only if
//!   `RCV.NXT =< SEG.SEQ < RCV.NXT+RCV.WND`. `SND.UNA - 1` is below the remote's `RCV.NXT`, so
//!   the segment is unacceptable and is discarded before its ACK field is looked at (Linux:
//!   `tcp_validate_incoming()` → `tcp_sequence()` fails, the segment never reaches
//!   `tcp_ack()`): no duplicate-ACK count (RFC 5681 §2), no window update, no RTT sample. The
//!   only reaction the RFC asks for is an ACK of the current state, which is what a keep-alive
//!   elicits; Linux rate-limits it (`tcp_invalid_ratelimit`, 500 ms per socket).
//! * **Stateful middleboxes must not change their state.** Linux conntrack (and NAT built on it)
//!   accepts the segment as in-window (`tcp_in_window()`: the end sequence `SND.UNA - 1` is not
//!   beyond the sender's maximum and is within one window below it) and does not move its
//!   `td_end`, because the segment ends before data already seen. A probe with `SEG.SEQ` *above*
//!   `SND.NXT` (the other way to dodge `tcp_v4_err`) would push `td_end` past anything the peer
//!   will ever acknowledge, leave the connection "unacknowledged" and cut its conntrack timeout
//!   from days to 300 s: a NAT would then forget an idle flow.
//! * `SEG.ACK = RCV.NXT` repeats the last acknowledgment the local end sent, so middleboxes that
//!   check the ACK against the data seen (conntrack's `sack` window) accept it; the remote never
//!   processes it (above).
//! * No options and no payload: an option such as a timestamp with a stale TSval would trip
//!   PAWS (RFC 7323 §5) and a payload would be data. Flags are ACK only: ECE or CWR would be
//!   congestion signals (RFC 3168).
//!
//! # UDP: an empty datagram, kept away from both applications
//!
//! The probe is a zero-length datagram with the flow's 5-tuple. Two hazards, two measures:
//! * To the remote application an empty datagram is a request like any other (DNS, QUIC and
//!   game servers would answer or log an error). The engine therefore stops one TTL short of the
//!   remote: its distance is read from the TTL of the remote's packets
//!   ([`crate::TraceConfig::probe_remote`] turns that off).
//! * Linux `__udp4_lib_err()` delivers a Time Exceeded that quotes the flow's 5-tuple to the
//!   connected socket; with `IP_RECVERR` the application's next `recv` fails with
//!   `EHOSTUNREACH`. UDP has no sequence number to place outside a window, so nothing in the
//!   probe can prevent this. The live driver installs a filter in front of the local stack that
//!   drops the ICMP errors quoting a traced UDP flow (after libpcap has seen them).
//!
//! # IP
//!
//! TTL per probe; TOS (DSCP and ECN) and DF copied from the flow's latest outgoing packet; the
//! IPv4 identification identifies the probe within its flow (flows are told apart by the quoted
//! 5-tuple first, so each flow has the whole 16-bit space). Identification 0 is never used:
//! Linux replaces 0 with its own value on an `IP_HDRINCL` socket.

use std::net::IpAddr;

use svctr_wire::probe::{emit_tcp_v4, emit_udp_v4, Ipv4Fields, TcpFields, UdpFields};

use crate::flow::{tcp_flags, FlowKey, FlowState, Protocol};

/// IPv4 length of a TCP probe (20-byte IP header, 20-byte TCP header).
pub(crate) const TCP_V4_LEN: u16 = 40;
/// IPv4 length of a UDP probe (20-byte IP header, 8-byte UDP header).
pub(crate) const UDP_V4_LEN: u16 = 28;

/// The TCP sequence and acknowledgment numbers of a probe for this flow (see the module doc),
/// or `None` while the flow has not shown both directions.
pub(crate) fn tcp_probe_numbers(state: &FlowState) -> Option<(u32, u32)> {
    let snd_una = state.tcp.snd_una?;
    let rcv_nxt = state.tcp.rcv_nxt?;
    Some((snd_una.wrapping_sub(1), rcv_nxt))
}

/// What a probe needs to be recognised later: its length and, for TCP, its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbeShape {
    pub(crate) ip_len: u16,
    pub(crate) tcp_seq: Option<u32>,
}

/// Writes the probe into `buf`. Returns `None` if the flow is not IPv4 or lacks TCP state.
pub(crate) fn build(
    state: &FlowState,
    key: &FlowKey,
    ttl: u8,
    ident: u16,
    buf: &mut Vec<u8>,
) -> Option<ProbeShape> {
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (key.local.ip(), key.remote.ip()) else {
        return None;
    };
    let ip = Ipv4Fields { src, dst, ttl, tos: state.tos, dont_fragment: state.dont_fragment, ident };
    match key.protocol {
        Protocol::Tcp => {
            let (seq, ack) = tcp_probe_numbers(state)?;
            let tcp = TcpFields {
                src_port: key.local.port(),
                dst_port: key.remote.port(),
                seq,
                ack,
                flags: tcp_flags::ACK,
                window: state.tcp.window,
            };
            emit_tcp_v4(&ip, &tcp, &[], buf);
            Some(ProbeShape { ip_len: TCP_V4_LEN, tcp_seq: Some(seq) })
        }
        Protocol::Udp => {
            let udp = UdpFields { src_port: key.local.port(), dst_port: key.remote.port() };
            emit_udp_v4(&ip, &udp, &[], buf);
            Some(ProbeShape { ip_len: UDP_V4_LEN, tcp_seq: None })
        }
        Protocol::Icmp => None,
    }
}
