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
//!
//! # IPv6: which probe a reply is for, without an identification field
//!
//! IPv6 has no identification field, and every field that load balancers hash must stay the
//! flow's: addresses, next header, ports, and the flow label (RFC 6438 lets routers hash it;
//! the lab's ECMP router does). The probe copies the flow's traffic class and its current flow
//! label and sets the hop limit per probe. ICMPv6 errors quote as much of the probe as fits in
//! 1280 bytes (RFC 4443 §2.4 (c)), i.e. all of it, so any transport field can carry the
//! probe's 16-bit tag, which the quote gives back:
//!
//! * **TCP: the sequence number.** The keep-alive shape above is kept, and the tag is a map
//!   entry: each probe of a trace gets a distinct `SEG.SEQ` at or below `SND.UNA - 1` whose
//!   low 4 bits are the process slot (below), the highest free one, and the trace maps it back
//!   to the probe. Every such number is outside `[snd_una, snd_nxt]`, so Linux `tcp_v6_err()`
//!   ignores the errors exactly as `tcp_v4_err()` does (`OutOfWindowIcmps`); it is below the
//!   remote's `RCV.NXT`, so the remote discards the segment at the sequence check (RFC 9293
//!   §3.10.7.4) as it discards a keep-alive; it is at most 16 times the trace's probe count
//!   below `SND.UNA` (1.5 KB for 32 TTLs x 3 probes), far inside any window, so conntrack's
//!   `tcp_in_window()` accepts it and its `td_end` does not move. Nothing a router hashes
//!   changes.
//! * **UDP: the checksum.** The datagram carries two payload bytes chosen so that the UDP
//!   checksum equals the tag (Paris traceroute's trick, Augustin et al., IMC 2006). Routers do
//!   not hash the checksum; the remote never receives the probe (probing stops one hop short
//!   of it, as for IPv4); and all probes have the same length, so the UDP shield matches them
//!   by their quoted length (10 bytes) and 5-tuple. The tag is never 0: RFC 8200 §8.1 forbids a
//!   zero UDP checksum over IPv6.
//!
//! # A connection stuck in its handshake: copies of its SYN (IPv4)
//!
//! When a client's SYNs go unanswered ("it hangs"), the question is where they die. Before the
//! handshake there is no `SND.UNA` or `RCV.NXT` to build the keep-alive above from, and every
//! stateful box on the path holds the connection in SYN_SENT, where a segment other than a SYN
//! is invalid (Linux conntrack: an ACK in SYN_SENT is `sIV`, dropped by `ct state invalid
//! drop`). So the probe is a byte-exact copy of the client's latest SYN: same sequence number
//! (the ISS), flags, window and options; only the TTL, the IPv4 identification (the tag) and
//! the header checksum differ. Why that is harmless:
//!
//! * Routers and load balancers see the SYN itself. Conntrack sees a retransmitted SYN: the
//!   same sequence number does not re-initialise the window (`tcp_in_window()` does that only
//!   for a SYN whose end is *after* `td_end`), and a NAT maps it as it mapped the SYN.
//! * Should a copy reach the server, it is a retransmission of the SYN the client is sending
//!   anyway (Linux retransmits after 1, 3, 7, ... s); the server answers it as it would answer
//!   the client's own. Copies go out one TTL's worth at a time (the in-flight window is the
//!   probes per hop), and the trace stops at the first packet from the remote.
//! * The local stack must not see the ICMP errors: Linux `tcp_v4_err()` takes an error that
//!   quotes a SYN_SENT socket's own ISS as fatal and aborts the `connect()` with
//!   `EHOSTUNREACH`. The live driver therefore installs the same kind of nftables rule as for
//!   UDP, dropping the errors that quote the flow's SYN *with a TTL no higher than the probes'*
//!   (at most 32): a probe's quote carries at most its own small TTL, while the client's own
//!   SYN, sent with 64, still carries 33 or more after 32 routers, so the errors the client's
//!   own SYNs draw (a router's Host Unreachable) still reach it.
//!
//! IPv6 is not traced this way: IPv6 has no identification field, and every other field of a
//! SYN copy is either hashed by routers (addresses, ports, flow label) or looked at by the
//! server and by conntrack (sequence number, options), so nothing could tell one copy from
//! another or from another process's copies. The engine reports such a flow as not traced,
//! with that reason.
//!
//! # Several processes on one flow
//!
//! Two processes may trace the same flow at once (two operators, a monitor and an ad-hoc
//! run). Their probes then have the same 5-tuple, so the tag alone must tell whose a reply is.
//! Each process holds a *slot* (`0..16`, [`crate::TraceConfig::slot`]), reserved by the live
//! driver so that no two live processes share one, and every tag it uses has the slot in its
//! low 4 bits: the IPv4 identification, the IPv6 UDP checksum and the IPv6 TCP sequence number
//! alike. The kernel filter passes only errors whose quote has the process's slot there (the
//! low byte of each of the three fields is the same byte of the quote), and the engine looks
//! the whole tag up among its own probes. So the slot isolates processes by construction, and
//! a trace has 4,095 tags for its probes.
//!
//! So a probe differs from the flow's own packets only in fields no router hashes and no
//! endpoint acts on (hop limit, TCP sequence below the window, UDP payload that nobody
//! receives), and the reply is matched by the quoted 5-tuple, then the tag, then the quoted
//! length (and TCP sequence number), as for IPv4.

use std::net::IpAddr;

use svctr_wire::probe::{
    emit_tcp_v4, emit_tcp_v4_with_options, emit_tcp_v6, emit_udp_v4, emit_udp_v6, force_checksum,
    Ipv4Fields, Ipv6Fields, TcpFields, UdpFields,
};

use crate::config::SLOT_BITS;
use crate::flow::{tcp_flags, FlowKey, FlowState, Protocol};

/// IPv4 length of a TCP probe (20-byte IP header, 20-byte TCP header).
pub(crate) const TCP_V4_LEN: u16 = 40;
/// IPv4 length of a UDP probe (20-byte IP header, 8-byte UDP header).
pub(crate) const UDP_V4_LEN: u16 = 28;
/// IPv6 payload length of a TCP probe (20-byte TCP header, no extension headers).
pub(crate) const TCP_V6_PAYLOAD: u16 = 20;
/// IPv6 payload length of a UDP probe (8-byte header, 2 payload bytes that set the checksum).
pub(crate) const UDP_V6_PAYLOAD: u16 = 10;
/// How many candidates below `SND.UNA - 1` an IPv6 TCP probe looks at for a free sequence
/// number (a trace has at most `MAX_FLOW_PROBES` probes; in practice a few dozen).
const MAX_SEQ_STEPS: u32 = 1 << 12;
/// The low bits of a tag (and of an IPv6 TCP probe's sequence number) that hold the process
/// slot.
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;

/// The TCP sequence and acknowledgment numbers of a probe for this flow (see the module doc),
/// or `None` while the flow has not shown both directions.
pub(crate) fn tcp_probe_numbers(state: &FlowState) -> Option<(u32, u32)> {
    let snd_una = state.tcp.snd_una?;
    let rcv_nxt = state.tcp.rcv_nxt?;
    Some((snd_una.wrapping_sub(1), rcv_nxt))
}

/// Copies of a SYN use TTLs up to this: the shield tells their quotes from those of the
/// client's own SYNs (sent with 64) by the quoted TTL (see the module doc).
pub const SYN_COPY_MAX_TTL: u8 = 32;

/// What a flow's probes look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeKind {
    /// TCP: a keep-alive-shaped ACK; UDP: an empty datagram (see the module doc).
    Flow,
    /// IPv4 TCP whose handshake is not answered: a copy of the client's SYN (see the module
    /// doc).
    SynCopy,
}

/// What a probe needs to be recognised later: its length (IPv4 total length, IPv6 payload
/// length) and, for TCP, its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbeShape {
    pub(crate) ip_len: u16,
    pub(crate) tcp_seq: Option<u32>,
}

/// Writes the probe with TTL / hop limit `ttl` and tag `tag` (never 0) into `buf`.
/// `seq_taken` tells which IPv6 TCP sequence numbers this trace already used (see the module
/// doc). Returns `None` if the flow lacks TCP state, or mixes families.
pub(crate) fn build(
    state: &mut FlowState,
    key: &FlowKey,
    kind: ProbeKind,
    ttl: u8,
    tag: u16,
    seq_taken: impl Fn(u32) -> bool,
    buf: &mut Vec<u8>,
) -> Option<ProbeShape> {
    let tcp_fields = |seq, ack| TcpFields {
        src_port: key.local.port(),
        dst_port: key.remote.port(),
        seq,
        ack,
        flags: tcp_flags::ACK,
        window: state.tcp.window,
    };
    let udp = UdpFields {
        src_port: key.local.port(),
        dst_port: key.remote.port(),
    };
    match (key.local.ip(), key.remote.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let ip = Ipv4Fields {
                src,
                dst,
                ttl,
                tos: state.tos,
                dont_fragment: state.dont_fragment,
                ident: tag,
            };
            match key.protocol {
                Protocol::Tcp if kind == ProbeKind::SynCopy => {
                    let syn = state.syn?;
                    let fields = TcpFields {
                        src_port: key.local.port(),
                        dst_port: key.remote.port(),
                        seq: syn.seq,
                        ack: 0,
                        flags: syn.flags,
                        window: syn.window,
                    };
                    let len = emit_tcp_v4_with_options(&ip, &fields, syn.options.as_slice(), buf);
                    Some(ProbeShape {
                        ip_len: u16::try_from(len).unwrap_or(u16::MAX),
                        tcp_seq: Some(syn.seq),
                    })
                }
                Protocol::Tcp => {
                    let (seq, ack) = tcp_probe_numbers(state)?;
                    emit_tcp_v4(&ip, &tcp_fields(seq, ack), &[], buf);
                    Some(ProbeShape {
                        ip_len: TCP_V4_LEN,
                        tcp_seq: Some(seq),
                    })
                }
                Protocol::Udp => {
                    emit_udp_v4(&ip, &udp, &[], buf);
                    Some(ProbeShape {
                        ip_len: UDP_V4_LEN,
                        tcp_seq: None,
                    })
                }
                Protocol::Icmp => None,
            }
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let ip = Ipv6Fields {
                src,
                dst,
                hop_limit: ttl,
                traffic_class: state.tos,
                flow_label: state.flow_label,
            };
            match key.protocol {
                Protocol::Tcp => {
                    let (top, ack) = tcp_probe_numbers(state)?;
                    // Only numbers whose low bits are this process's slot (the tag's low bits):
                    // the highest at or below SND.UNA - 1, else, while SND.UNA has not moved,
                    // the next one below the previous probe's (no scan over the numbers used).
                    let slot = u32::from(tag) & SLOT_MASK;
                    let highest = top.wrapping_sub(top.wrapping_sub(slot) & SLOT_MASK);
                    let start = match state.v6_probe_seq {
                        Some((t, last)) if t == top => last.wrapping_sub(SLOT_MASK + 1),
                        _ => highest,
                    };
                    let seq = (0..MAX_SEQ_STEPS)
                        .map(|i| start.wrapping_sub(i * (SLOT_MASK + 1)))
                        .find(|s| !seq_taken(*s))?;
                    state.v6_probe_seq = Some((top, seq));
                    emit_tcp_v6(&ip, &tcp_fields(seq, ack), &[], buf);
                    Some(ProbeShape {
                        ip_len: TCP_V6_PAYLOAD,
                        tcp_seq: Some(seq),
                    })
                }
                Protocol::Udp => {
                    emit_udp_v6(&ip, &udp, &[0, 0], buf);
                    // The UDP checksum (bytes 6-7 of the UDP header) becomes the tag; the two
                    // payload bytes right after the header compensate.
                    force_checksum(buf, 40 + 6, 40 + 8, tag);
                    Some(ProbeShape {
                        ip_len: UDP_V6_PAYLOAD,
                        tcp_seq: None,
                    })
                }
                Protocol::Icmp => None,
            }
        }
        _ => None,
    }
}
