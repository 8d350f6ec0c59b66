//! Reverse traceroute messages: the request a client sends to a reverse-traceroute server, the
//! response the server sends back, and the shape of the probe the server sends in between
//! (draft-heiwin-intarea-reverse-traceroute, "Traceroute Request" and the sections after it).
//!
//! The draft body could not be checked (only its front matter was read), so every layout here is
//! the one the deployed servers speak: the reference implementation HSAnet/reverse-traceroute
//! ("Augsburg traceroute"; `main` for the base format, `indirect_multipart` for the extension),
//! as described by the clean-room specification `shared/reference/reverse-traceroute.md`
//! ("spec §n" below). Where the reference and the draft (or RFC 4884) may differ, the comment
//! at the point of use says which one is followed and why.
//!
//! What it does:
//! - [`Request`]: ICMP Echo Request (type 8 / ICMPv6 128) with **code 1** (spec §1.1, §1.2):
//!   TTL, protocol and flow of the probe the server shall send, the optional "indirect target"
//!   extension (RFC 4884-style, spec §1.3) and zero padding (anti-amplification, spec §5,
//!   item 2);
//!   [`Request::parse`] says exactly why a malformed request is malformed ([`ParseError`]);
//! - [`Response`]: ICMP Echo Reply (type 0 / ICMPv6 129) with code 1 (spec §1.4): the
//!   [`State`], and on success the address of the hop that answered the probe and the RTT
//!   (parsed leniently: deployed servers send 32 bits of nanoseconds, the draft may send 64);
//! - [`checksum_v4`] / [`checksum_v6`]: the ICMP (RFC 792) / ICMPv6 (RFC 4443 §2.3,
//!   pseudo-header included) checksum of a message;
//! - [`Request::probe`]: the transport fields of the server's probe for a request (spec §1.6),
//!   as [`crate::probe`] emits them; [`quoted_identifier`] and [`answer_identifier`]: the
//!   identifier a probe carries, recovered from the probe quoted in an ICMP error or from the
//!   probed host's direct answer (spec §1.7).
//!
//! What it does not do: IP headers (the response goes out with TTL 64 from the address the
//! request was sent to, spec §1.4; that is the caller's socket's business), sessions, policy
//! (whether indirect tracing is allowed, spec §1.3) or clocks. Parsing never verifies the ICMP
//! checksum, like the reference server (spec §1.2): compare [`checksum_v4`] / [`checksum_v6`]
//! with bytes 2..4 when that matters. The messages are small and fixed, so [`Request`] and
//! [`Response`] are plain values copied out of the bytes; nothing borrows the input.
//!
//! Panic contract: as for the whole crate, no function here panics on any input. Emission never
//! fails: padding that would not fit the IP length field is cut (see [`Request::emit_v4`]).
//!
//! ```
//! use svctr_wire::revtr::{Family, Request, TcpProbe};
//! use svctr_wire::probe::TransportFields;
//!
//! // spec §1.2: id 0x1234, TTL 5, UDP, flow 40000.
//! let bytes = [0x08, 0x01, 0x44, 0x79, 0x12, 0x34, 0x00, 0x00, 0x05, 0x11, 0x9c, 0x40];
//! let request = Request::parse(Family::V4, &bytes).unwrap();
//! assert_eq!((request.ident, request.ttl, request.flow), (0x1234, 5, 40000));
//! let probe = request.probe(Family::V4, request.ident, TcpProbe::Syn).unwrap();
//! let TransportFields::Udp(udp) = probe.transport else { panic!() };
//! assert_eq!((udp.src_port, udp.dst_port, probe.forced_checksum), (1021, 40000, Some(0x1234)));
//! let mut out = Vec::new();
//! request.emit_v4(&mut out);
//! assert_eq!(out, bytes);
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::flow::Protocol;
use crate::icmp::ones_complement_sum;
use crate::probe::{ones_add, EchoFields, TcpFields, TransportFields, UdpFields};

/// Code of a reverse-traceroute request in an Echo Request (spec §1.1). Echo code 1 is not
/// assigned by IANA: the reference squats it (its README's "Disclaimer"), and the server treats
/// only Echo Request code 1 as a request.
pub const REQUEST_CODE: u8 = 1;
/// Code of a reverse-traceroute response in an Echo Reply (spec §1.1).
pub const RESPONSE_CODE: u8 = 1;

/// Length of a request without extension and padding: the 8-byte echo header, TTL, protocol and
/// flow (spec §1.2; the reference's `union trhdr`).
pub const REQUEST_LEN: usize = 12;
/// Length of the indirect-target extension: 4-byte extension header, 4-byte object header and a
/// 16-byte address (spec §1.3).
pub const EXTENSION_LEN: usize = 24;
/// Length of an error response, and of the part every response has (spec §1.4).
pub const ERROR_RESPONSE_LEN: usize = 12;
/// Length of a success response as emitted (spec §1.4): header, state, 16-byte hop address and
/// the 8-byte RTT field.
pub const SUCCESS_RESPONSE_LEN: usize = 36;
/// Shortest success response accepted: the deployed Python client reads the address and a
/// 32-bit RTT (`!16sI`, ICMP bytes 12..32) and needs no more (spec §1.4, §3.2).
pub const SUCCESS_RESPONSE_MIN_LEN: usize = 32;

/// The probe's UDP destination port when the request's flow is 0 (spec §1.2).
pub const DEFAULT_UDP_PORT: u16 = 53;
/// The probe's TCP destination port when the request's flow is 0 (spec §1.2).
pub const DEFAULT_TCP_PORT: u16 = 80;
/// The probe's ICMP checksum when the request's flow is 0 (spec §1.2).
pub const DEFAULT_ICMP_CHECKSUM: u16 = 0xBEAF;
/// Source port of the server's UDP and TCP probes: 1021, from the RFC 4727 experimental range
/// (spec §1.6). Operators filter on it; the matchers require it.
pub const PROBE_PORT: u16 = 1021;
/// Sequence number of the server's ICMP echo probes (spec §1.6, reference PR #14: so that ping
/// and traceroute running on the server host do not collide with them).
pub const PROBE_ICMP_SEQ: u16 = 0xFFFF;
/// Longest transport part of a probe (spec §1.6): TCP, 20-byte header and 4 bytes (the MSS
/// option, or 4 payload bytes); UDP and ICMP probes have 16 (8-byte header, 8 payload bytes).
/// With [`SUCCESS_RESPONSE_LEN`] it bounds what one request makes the server send (spec §2.5).
pub const MAX_PROBE_TRANSPORT_LEN: usize = 24;
/// TTL / hop limit of the IP packet that carries a response (spec §1.4).
pub const RESPONSE_TTL: u8 = 64;
/// Window of the server's TCP probes (spec §1.6).
pub const PROBE_TCP_WINDOW: u16 = 1024;
/// The TCP option of the server's SYN probes: MSS (kind 2, length 4) 1460 (spec §1.6).
pub const PROBE_TCP_MSS_OPTION: [u8; 4] = [2, 4, 0x05, 0xb4];

/// Version of the extension header, in its high 4 bits (RFC 4884 §7): a request's extension
/// starts with the bytes 0x20 0x00.
pub const EXTENSION_VERSION: u8 = 2;
/// Object length of the indirect-target object as the reference sends and requires it: 16.
/// ⚠ RFC 4884 §7 counts the 4-byte object header too (that would be 20); the reference counts
/// only the address, and a server that wants to be understood must do the same (spec §1.3).
pub const OBJECT_LENGTH: u16 = 16;
/// Class-num of the indirect-target object (spec §1.3).
pub const OBJECT_CLASS: u8 = 5;
/// C-type of the indirect-target object (spec §1.3).
pub const OBJECT_CTYPE: u8 = 0;

/// Class-num of this project's experimental *flow-probe* object ([`FlowProbe`]): one of the
/// class-nums the IANA "ICMP Extension Object Classes" registry keeps for private use
/// (247-255), so that no assigned class is squatted. The reference's `main` ignores it (bytes
/// after the fixed part) and sends its ordinary probe: our server marks the success responses
/// of probes it sent in the flow's shape ([`FLOW_PROBE_MARK`]), so a client knows which it
/// got. The reference's `indirect_multipart` branch, and ours with `--no-flow-probes`, refuse
/// it with state 4 (value `class_num << 8 | c_type`).
pub const FLOW_OBJECT_CLASS: u8 = 250;
/// C-type of the flow-probe object (version 1 of its layout).
pub const FLOW_OBJECT_CTYPE: u8 = 1;
/// The value field of a success response whose probe was the flow's own packet (see
/// [`ResponseBody::Success`]): the object's `class_num << 8 | c_type`.
pub const FLOW_PROBE_MARK: u16 = (FLOW_OBJECT_CLASS as u16) << 8 | FLOW_OBJECT_CTYPE as u16;
/// Object length of the flow-probe object, counted as RFC 4884 §7 counts it: the 4-byte
/// object header and its 16 bytes.
pub const FLOW_OBJECT_LENGTH: u16 = 20;

/// The address family of a message: which echo types and which ICMP protocol number apply.
/// The reference runs one server per family (spec §2.1); the wire format is the same for both
/// except for the types (and the ICMPv6 checksum's pseudo-header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// ICMP over IPv4.
    V4,
    /// ICMPv6 over IPv6.
    V6,
}

impl Family {
    /// Echo Request type: 8 (RFC 792) / 128 (RFC 4443 §4.1).
    pub fn echo_request(self) -> u8 {
        match self {
            Self::V4 => 8,
            Self::V6 => 128,
        }
    }
    /// Echo Reply type: 0 (RFC 792) / 129 (RFC 4443 §4.2).
    pub fn echo_reply(self) -> u8 {
        match self {
            Self::V4 => 0,
            Self::V6 => 129,
        }
    }
    /// IP protocol number of ICMP in this family: 1 / 58.
    pub fn icmp_protocol(self) -> u8 {
        match self {
            Self::V4 => 1,
            Self::V6 => 58,
        }
    }
    /// Longest ICMP message an IP packet of this family can carry without options, extension
    /// headers or jumbograms: 65535 - 20 (IPv4 total length) / 65535 (IPv6 payload length).
    fn max_icmp_len(self) -> usize {
        match self {
            Self::V4 => 65535 - 20,
            Self::V6 => 65535,
        }
    }
}

/// The state of a response (its byte 8; spec §1.5). The numbering is the **server's**
/// (`server/src/bpf/probe.h` / `tr_error.h`), which is what goes on the wire. The reference
/// Python client swaps 2 and 3 in its messages (`STATUS_TO_EXCEPTION` says "invalid flow" for 2
/// and "invalid protocol" for 3); that is a bug of the client, not the wire format.
///
/// An open enum: values without a name are kept as [`State::Unknown`], never a parse error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// 0: the probe was answered; the response carries the hop and the RTT.
    Success,
    /// 1: the request's TTL is 0. Clients use this as the presence check (TTL 0, protocol 0,
    /// flow 0: a server answers state 1; spec §1.5).
    Ttl,
    /// 2: the request's protocol is not 0, ICMP of the family, TCP or UDP.
    Protocol,
    /// 3: invalid flow. Defined by the reference but never emitted: every flow is accepted.
    Flow,
    /// 4: an extension is present but rejected (indirect tracing disabled, requester not
    /// allowed, or an object that is not length 16, class 5, c-type 0). The response's value
    /// field then holds `class_num << 8 | c_type` of the rejected object.
    MultipartNotSupported,
    /// Any other value.
    Unknown(u8),
}

impl From<u8> for State {
    fn from(v: u8) -> Self {
        match v {
            0 => Self::Success,
            1 => Self::Ttl,
            2 => Self::Protocol,
            3 => Self::Flow,
            4 => Self::MultipartNotSupported,
            v => Self::Unknown(v),
        }
    }
}

impl From<State> for u8 {
    fn from(s: State) -> Self {
        match s {
            State::Success => 0,
            State::Ttl => 1,
            State::Protocol => 2,
            State::Flow => 3,
            State::MultipartNotSupported => 4,
            State::Unknown(v) => v,
        }
    }
}

/// Why bytes are not a reverse-traceroute request or response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The message ends before the part it must have: the 12 fixed bytes, or, once an
    /// extension was detected, its object header (`need` 20) or its address (`need` 36).
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// bytes needed
        need: usize,
        /// bytes available
        have: usize,
    },
    /// The ICMP type is not the echo request (request) / echo reply (response) type of the
    /// family.
    #[error("ICMP type {0} is not the expected echo type")]
    Type(u8),
    /// The ICMP code is not 1 (a plain echo has code 0).
    #[error("ICMP code {0} is not 1")]
    Code(u8),
    /// The extension's object header is not length 16, class 5, c-type 0. The reference server
    /// answers such a request with state 4 and the value `class_num << 8 | c_type`.
    #[error("extension object length {length}, class {class_num}, c-type {c_type}: want 16, 5, 0")]
    Object {
        /// object length as sent
        length: u16,
        /// class-num as sent
        class_num: u8,
        /// c-type as sent
        c_type: u8,
    },
    /// The extension checksum is neither 0 ("no checksum", RFC 4884 §7) nor the one computed
    /// over the extension. (The reference server does not verify it, spec §1.3; this parser
    /// does, so that a corrupted target address is not traced to.)
    #[error("extension checksum {carried:#06x}, computed {computed:#06x}")]
    ExtensionChecksum {
        /// checksum as sent
        carried: u16,
        /// checksum computed over the received extension
        computed: u16,
    },
}

impl From<ParseError> for crate::Error {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::Truncated { need, have } => crate::Error::Truncated { need, have },
            ParseError::Type(_) => crate::Error::Unsupported("not a reverse-traceroute echo type"),
            ParseError::Code(_) => crate::Error::Unsupported("echo code is not 1"),
            ParseError::Object { .. } => crate::Error::Malformed("reverse-traceroute object"),
            ParseError::ExtensionChecksum { .. } => {
                crate::Error::Malformed("reverse-traceroute extension checksum")
            }
        }
    }
}

/// A reverse-traceroute request (spec §1.2, §1.3).
///
/// | ICMP offset | size | field |
/// |---|---|---|
/// | 0 | 1 | type 8 / 128 |
/// | 1 | 1 | code 1 |
/// | 2 | 2 | checksum (ICMPv6: with pseudo-header) |
/// | 4 | 2 | identifier |
/// | 6 | 2 | sequence (clients send 0, the server ignores it) |
/// | 8 | 1 | TTL of the probe |
/// | 9 | 1 | protocol of the probe |
/// | 10 | 2 | flow |
/// | 12 | 24 | optional extension: `20 00`, checksum, length 16, class 5, c-type 0, address |
/// | … | … | padding |
///
/// The fields hold the values on the wire (0 in `protocol` or `flow` means "the server's
/// default", see [`Request::probe`]), so that parse and emit are inverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Request {
    /// Identifier, chosen by the client and echoed in the response. The reference `main` also
    /// uses it as the session key with the client address, and as the probe's identifier.
    pub ident: u16,
    /// Sequence number: 0 from the reference client, ignored by the server.
    pub seq: u16,
    /// Hop limit of the server's probe. 0 is answered with state 1; any other value is used as
    /// is (the reference has no upper bound check).
    pub ttl: u8,
    /// IP protocol of the probe: 0 (the server's default, ICMP), 1 (IPv4 server) or 58 (IPv6
    /// server) for ICMP, 6 TCP, 17 UDP. Anything else is answered with state 2.
    pub protocol: u8,
    /// Flow, per protocol: UDP/TCP destination port or ICMP checksum; 0 asks for the default
    /// (53, 80, 0xBEAF). Never rejected.
    pub flow: u16,
    /// The indirect-target extension's address (`indirect_multipart`): trace towards this
    /// address instead of back to the requester. An IPv4 server reads the last 4 bytes (sent
    /// IPv4-mapped, `::ffff:a.b.c.d`); see [`Request::indirect_target`].
    pub indirect: Option<Ipv6Addr>,
    /// The experimental flow-probe object (this project's, [`FlowProbe`]): send the probe as
    /// a live flow's own packet from the server to the requester. Emitted only without
    /// `indirect` (one object per extension, as the reference reads it).
    pub flow_probe: Option<FlowProbe>,
    /// Number of bytes after the fixed part (or after the extension). Emitted as zeros.
    pub padding: usize,
}

/// **Experimental** (not in the draft, not understood by the reference): a request's
/// extension object asking the server to send its probe with the *reverse 5-tuple of a live
/// flow* between the server and the requester, in the shape the flow tracer gives its own
/// probes (see `svctr_core`'s probe module), so that load balancers on the way back treat
/// the probes as the flow's own packets and neither end changes state:
///
/// * TCP: a pure ACK from `server_port` to `client_port` with `seq` (the requester sends the
///   server's `SND.UNA - 1` as far as it knows it, its own `RCV.NXT - 1`, less a small
///   per-request offset: below the requester's receive window, so its stack discards it as
///   it discards a keep-alive, and outside `[SND.UNA, SND.NXT]` on the server, whose stack
///   ignores the ICMP errors it draws), `ack` and `window` as given, no options, no payload;
///   the server tells its probes apart by `seq`.
/// * UDP: from `server_port` to `client_port` with two payload bytes that set the checksum to
///   the request's identifier (Paris traceroute's trick); the requester asks only for TTLs
///   short of itself (its distance from the server's packets' TTL), so its application never
///   receives one.
///
/// The probe always goes to the requester (never with the indirect-target object), the
/// request's protocol must be TCP or UDP (else state 2), and the request's TOS / traffic
/// class and flow label are the probe's, as for every probe (the requester copies the
/// flow's own incoming ones). Rate limits apply as to any request.
///
/// | object offset | size | field |
/// |---|---|---|
/// | 0 | 2 | length 20 |
/// | 2 | 1 | class-num [`FLOW_OBJECT_CLASS`] |
/// | 3 | 1 | c-type [`FLOW_OBJECT_CTYPE`] |
/// | 4 | 2 | server port (the probe's source port) |
/// | 6 | 2 | client port (its destination port) |
/// | 8 | 4 | TCP sequence number |
/// | 12 | 4 | TCP acknowledgment number |
/// | 16 | 2 | TCP window |
/// | 18 | 2 | reserved, 0 |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowProbe {
    /// The flow's port on the server: the probe's source port.
    pub server_port: u16,
    /// The flow's port on the requester: the probe's destination port.
    pub client_port: u16,
    /// TCP: the probe's sequence number.
    pub seq: u32,
    /// TCP: the probe's acknowledgment number.
    pub ack: u32,
    /// TCP: the probe's window.
    pub window: u16,
}

/// The object a request's extension carries.
enum Extension {
    Indirect(Ipv6Addr),
    Flow(FlowProbe),
}

impl Request {
    /// Parses a request, starting at the ICMP type byte.
    ///
    /// After the 12 fixed bytes the reference server looks for an extension only where at least
    /// 4 more bytes start with the version nibble 2 (spec §1.3), and this parser does the same.
    /// Everything else after the fixed part, and everything after an extension, is padding: it
    /// is accepted whatever it holds, because the reference ignores trailing bytes (`main`) and
    /// the padding rule of the coming anti-amplification change is not known (spec §5, item 2);
    /// only its length is kept. So there is no "bad extension version" error: a version other
    /// than 2 means "no extension". Clients must pad with zeros (a padding that starts with 0x2X
    /// would be read as an extension), which is what [`Request::emit_v4`] does.
    ///
    /// The ICMP checksum is not verified (neither does the reference, spec §1.2); the extension
    /// checksum is (see [`ParseError::ExtensionChecksum`]).
    pub fn parse(family: Family, icmp: &[u8]) -> Result<Self, ParseError> {
        let h = fixed_header(icmp, family.echo_request(), REQUEST_CODE)?;
        let rest = icmp.get(REQUEST_LEN..).unwrap_or_default();
        let (indirect, flow_probe, padding) = match rest.first() {
            Some(b) if rest.len() >= 4 && b >> 4 == EXTENSION_VERSION => {
                let after = rest.len().saturating_sub(EXTENSION_LEN);
                match parse_extension(icmp.len(), rest)? {
                    Extension::Indirect(target) => (Some(target), None, after),
                    Extension::Flow(flow) => (None, Some(flow), after),
                }
            }
            _ => (None, None, rest.len()),
        };
        Ok(Self {
            ident: u16::from_be_bytes([h[4], h[5]]),
            seq: u16::from_be_bytes([h[6], h[7]]),
            ttl: h[8],
            protocol: h[9],
            flow: u16::from_be_bytes([h[10], h[11]]),
            indirect,
            flow_probe,
            padding,
        })
    }

    /// Writes the request as ICMP (type 8) into `out` (cleared first), checksum computed.
    /// Returns the length. Padding that would make the message longer than an IPv4 packet can
    /// carry (65515 bytes of ICMP) is cut.
    pub fn emit_v4(&self, out: &mut Vec<u8>) -> usize {
        self.write(Family::V4, out);
        let checksum = checksum_v4(out);
        set_checksum(out, checksum)
    }

    /// Writes the request as ICMPv6 (type 128) from `src` to `dst` into `out` (cleared first),
    /// checksum computed over the RFC 4443 §2.3 pseudo-header. Returns the length. Padding that
    /// would not fit the IPv6 payload length (65535 bytes) is cut.
    ///
    /// Unlike over IPv4, adding an extension changes the ICMP checksum: the pseudo-header holds
    /// the message length.
    pub fn emit_v6(&self, src: &Ipv6Addr, dst: &Ipv6Addr, out: &mut Vec<u8>) -> usize {
        self.write(Family::V6, out);
        let checksum = checksum_v6(src, dst, out);
        set_checksum(out, checksum)
    }

    /// The message with checksum 0.
    fn write(&self, family: Family, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&[family.echo_request(), REQUEST_CODE, 0, 0]);
        out.extend_from_slice(&self.ident.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&[self.ttl, self.protocol]);
        out.extend_from_slice(&self.flow.to_be_bytes());
        if let Some(target) = self.indirect {
            let at = out.len();
            // RFC 4884 §7 extension header: version 2, reserved 0, checksum (below); then the
            // object header (RFC 4884 §8, with the reference's length 16, see OBJECT_LENGTH).
            out.extend_from_slice(&[EXTENSION_VERSION << 4, 0, 0, 0]);
            out.extend_from_slice(&OBJECT_LENGTH.to_be_bytes());
            out.extend_from_slice(&[OBJECT_CLASS, OBJECT_CTYPE]);
            out.extend_from_slice(&target.octets());
            let sum = extension_checksum(out.get(at..).unwrap_or_default());
            if let Some(field) = out.get_mut(at + 2..at + 4) {
                field.copy_from_slice(&sum.to_be_bytes());
            }
        } else if let Some(f) = self.flow_probe {
            let at = out.len();
            out.extend_from_slice(&[EXTENSION_VERSION << 4, 0, 0, 0]);
            out.extend_from_slice(&FLOW_OBJECT_LENGTH.to_be_bytes());
            out.extend_from_slice(&[FLOW_OBJECT_CLASS, FLOW_OBJECT_CTYPE]);
            out.extend_from_slice(&f.server_port.to_be_bytes());
            out.extend_from_slice(&f.client_port.to_be_bytes());
            out.extend_from_slice(&f.seq.to_be_bytes());
            out.extend_from_slice(&f.ack.to_be_bytes());
            out.extend_from_slice(&f.window.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            let sum = extension_checksum(out.get(at..).unwrap_or_default());
            if let Some(field) = out.get_mut(at + 2..at + 4) {
                field.copy_from_slice(&sum.to_be_bytes());
            }
        }
        let room = family.max_icmp_len().saturating_sub(out.len());
        out.resize(out.len() + self.padding.min(room), 0);
    }

    /// The protocol of the probe this request asks for, in `family`: 0 is the server's default,
    /// ICMP (spec §1.2); 1 is ICMP only for an IPv4 server and 58 only for an IPv6 server.
    /// `None` for anything else (the server answers state 2).
    pub fn probe_protocol(&self, family: Family) -> Option<Protocol> {
        match self.protocol {
            0 => Some(Protocol::Icmp),
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            p if p == family.icmp_protocol() => Some(Protocol::Icmp),
            _ => None,
        }
    }

    /// The flow of the probe for `protocol`: the request's flow, or the default when it is 0.
    pub fn probe_flow(&self, protocol: Protocol) -> u16 {
        match self.flow {
            0 => default_flow(protocol),
            f => f,
        }
    }

    /// The address the server should trace towards instead of the requester, if the request
    /// has the extension: for an IPv4 server the last 4 bytes of the address, whatever the
    /// first 12 hold (the reference does not check the `::ffff:0:0/96` prefix, spec §1.3).
    /// Whether to honour it is the server's policy (off by default in the reference).
    pub fn indirect_target(&self, family: Family) -> Option<IpAddr> {
        let a = self.indirect?;
        Some(match family {
            Family::V4 => {
                let [.., a, b, c, d] = a.octets();
                IpAddr::V4(Ipv4Addr::new(a, b, c, d))
            }
            Family::V6 => IpAddr::V6(a),
        })
    }

    /// The probe the server sends for this request (spec §1.6), carrying `identifier` (the
    /// request's [`Request::ident`] on the reference `main`, a server-wide session number on
    /// `indirect_multipart`). Fails with the state the server answers instead: [`State::Ttl`]
    /// for TTL 0, [`State::Protocol`] for an unsupported protocol. The TTL is checked first, so
    /// the presence check (TTL 0) is answered with state 1 whatever its protocol says (the
    /// reference's order is not documented).
    pub fn probe(&self, family: Family, identifier: u16, tcp: TcpProbe) -> Result<Probe, State> {
        if self.ttl == 0 {
            return Err(State::Ttl);
        }
        let protocol = self.probe_protocol(family).ok_or(State::Protocol)?;
        if let Some(f) = self.flow_probe {
            return f.probe(protocol, self.ttl, identifier);
        }
        let flow = self.probe_flow(protocol);
        Ok(match protocol {
            // UDP header + 8 payload bytes: 6 server-random, the last 2 chosen so that the UDP
            // checksum equals the identifier (Paris traceroute; the 5-tuple stays constant).
            Protocol::Udp => Probe {
                protocol,
                ttl: self.ttl,
                transport: TransportFields::Udp(UdpFields {
                    src_port: PROBE_PORT,
                    dst_port: flow,
                }),
                tcp_options: &[],
                payload_len: 8,
                forced_checksum: Some(identifier),
            },
            // The identifier is the sequence number. The reference writes the 16-bit session
            // value through a 32-bit byte swap, so on x86 its wire value is the identifier
            // byte-swapped; only the server itself reads it back (from quotes and from the
            // answers' acknowledgment number), so this crate uses the plain value.
            Protocol::Tcp => Probe {
                protocol,
                ttl: self.ttl,
                transport: TransportFields::Tcp(TcpFields {
                    src_port: PROBE_PORT,
                    dst_port: flow,
                    seq: u32::from(identifier),
                    ack: 0,
                    flags: match tcp {
                        TcpProbe::Syn => TCP_SYN,
                        TcpProbe::Plain => 0,
                    },
                    // The spec gives the window for SYN probes; flagless probes are assumed to
                    // keep it.
                    window: PROBE_TCP_WINDOW,
                }),
                tcp_options: match tcp {
                    TcpProbe::Syn => &PROBE_TCP_MSS_OPTION,
                    TcpProbe::Plain => &[],
                },
                payload_len: match tcp {
                    TcpProbe::Syn => 0,
                    TcpProbe::Plain => 4,
                },
                forced_checksum: None,
            },
            // Echo request code 0, identifier, sequence 0xFFFF, 8 payload bytes: 6 random, the
            // last 2 chosen so that the checksum equals the flow (load balancers hash the first
            // 4 ICMP bytes).
            Protocol::Icmp => Probe {
                protocol,
                ttl: self.ttl,
                transport: TransportFields::Echo(EchoFields {
                    ident: identifier,
                    seq: PROBE_ICMP_SEQ,
                }),
                tcp_options: &[],
                payload_len: 8,
                forced_checksum: Some(flow),
            },
        })
    }
}

impl FlowProbe {
    /// The probe for a request with this object (see the type's doc): TCP or UDP only.
    fn probe(&self, protocol: Protocol, ttl: u8, identifier: u16) -> Result<Probe, State> {
        Ok(match protocol {
            Protocol::Tcp => Probe {
                protocol,
                ttl,
                transport: TransportFields::Tcp(TcpFields {
                    src_port: self.server_port,
                    dst_port: self.client_port,
                    seq: self.seq,
                    ack: self.ack,
                    flags: TCP_ACK,
                    window: self.window,
                }),
                tcp_options: &[],
                payload_len: 0,
                forced_checksum: None,
            },
            Protocol::Udp => Probe {
                protocol,
                ttl,
                transport: TransportFields::Udp(UdpFields {
                    src_port: self.server_port,
                    dst_port: self.client_port,
                }),
                tcp_options: &[],
                payload_len: 2,
                forced_checksum: Some(identifier),
            },
            Protocol::Icmp => return Err(State::Protocol),
        })
    }

    /// What tells one of these probes apart, from the start of its transport header (as sent,
    /// or as an ICMP error quotes it; the RFC 792 minimum of 8 bytes suffices): the TCP
    /// sequence number, or the UDP checksum.
    pub fn tag(protocol: u8, transport: &[u8]) -> Option<u32> {
        match protocol {
            6 => crate::be32(transport, 4),
            17 => crate::be16(transport, 6).map(u32::from),
            _ => None,
        }
    }
}

/// The flow the reference server uses when a request's flow is 0 (spec §1.2): UDP destination
/// port 53, TCP destination port 80, ICMP checksum 0xBEAF.
pub fn default_flow(protocol: Protocol) -> u16 {
    match protocol {
        Protocol::Udp => DEFAULT_UDP_PORT,
        Protocol::Tcp => DEFAULT_TCP_PORT,
        Protocol::Icmp => DEFAULT_ICMP_CHECKSUM,
    }
}

/// Which TCP probes the server sends (the reference's `--tcp-syn-probes`, `indirect_multipart`;
/// `main` sends SYNs only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TcpProbe {
    /// SYN with the MSS option (data offset 6), no payload: answered by SYN+ACK or RST.
    #[default]
    Syn,
    /// No flags, data offset 5, 4 random payload bytes: answered by RST+ACK.
    Plain,
}

/// What the server's probe for a request looks like (spec §1.6). It describes the transport
/// header for [`crate::probe::emit`] and friends; the IP header takes the server's address as
/// source, the requester's (or the indirect target's) as destination, [`Probe::ttl`] as TTL /
/// hop limit, and the request's TOS / traffic class and flow label (the reference reuses the
/// request's IP header, spec §1.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Transport protocol (ICMP means ICMPv6 for an IPv6 server).
    pub protocol: Protocol,
    /// TTL / hop limit: the request's.
    pub ttl: u8,
    /// Transport header fields: source port 1021 and destination port = flow (UDP, TCP);
    /// TCP sequence number = identifier; echo identifier = identifier, sequence 0xFFFF.
    pub transport: TransportFields,
    /// TCP options: MSS 1460 for SYN probes, none otherwise.
    pub tcp_options: &'static [u8],
    /// Payload length after the transport header. The payload is server-random (reference PR
    /// #14: a client must not choose bytes delivered to third parties).
    pub payload_len: usize,
    /// For UDP and ICMP: the checksum the probe must carry, reached by choosing the last two
    /// payload bytes ([`crate::probe::force_checksum`]): the identifier (UDP; an identifier
    /// of 0 would read as "no checksum") or the flow (ICMP).
    pub forced_checksum: Option<u16>,
}

/// TCP flag bits (RFC 9293 §3.1), as in [`crate::probe::TcpFields::flags`].
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The identifier carried by one of the server's probes, from the start of its transport header
/// as quoted by an ICMP Time Exceeded or Destination Unreachable (spec §1.7; e.g.
/// [`crate::icmp::Quote`]'s `protocol` and `transport`). Only the RFC 792 minimum of 8 bytes
/// is needed:
/// - UDP (17) from source port 1021: the UDP checksum;
/// - TCP (6) from source port 1021: the sequence number (see [`Request::probe`]);
/// - ICMP (1, quoted type 8) / ICMPv6 (58, quoted type 128), code 0, sequence 0xFFFF: the echo
///   identifier.
///
/// `None` for anything else: ICMP errors about other traffic of the host must not be taken for
/// answers to probes.
pub fn quoted_identifier(protocol: u8, transport: &[u8]) -> Option<u16> {
    match protocol {
        17 if crate::be16(transport, 0)? == PROBE_PORT => crate::be16(transport, 6),
        6 if crate::be16(transport, 0)? == PROBE_PORT => {
            u16::try_from(crate::be32(transport, 4)?).ok()
        }
        1 | 58 => echo_identifier(protocol, transport, Family::echo_request),
        _ => None,
    }
}

/// The identifier of the probe that the probed host answered directly (spec §1.7), from the
/// answer's transport header:
/// - ICMP (1, type 0) / ICMPv6 (58, type 129) Echo Reply, code 0, sequence 0xFFFF: the echo
///   identifier;
/// - TCP (6) to destination port 1021: for [`TcpProbe::Syn`] a RST or a SYN+ACK, which
///   acknowledge the SYN: acknowledgment number - 1; for [`TcpProbe::Plain`] a RST+ACK, which
///   acknowledges the 4 payload bytes: acknowledgment number - 4.
///
/// UDP answers are never matched (the reference does not either: a UDP reply has nothing of the
/// probe in it; the last hop shows up through ICMP Port Unreachable instead).
pub fn answer_identifier(protocol: u8, transport: &[u8], tcp: TcpProbe) -> Option<u16> {
    match protocol {
        6 if crate::be16(transport, 2)? == PROBE_PORT => {
            let flags = *transport.get(13)?;
            let ack = crate::be32(transport, 8)?;
            let rst = flags & TCP_RST != 0;
            let sent = match tcp {
                TcpProbe::Syn if rst || flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK => 1,
                TcpProbe::Plain if rst && flags & TCP_ACK != 0 => 4,
                _ => return None,
            };
            u16::try_from(ack.wrapping_sub(sent)).ok()
        }
        1 | 58 => echo_identifier(protocol, transport, Family::echo_reply),
        _ => None,
    }
}

/// The identifier of an echo message of the type `want` gives for the protocol's family, code 0
/// and sequence [`PROBE_ICMP_SEQ`].
fn echo_identifier(protocol: u8, transport: &[u8], want: fn(Family) -> u8) -> Option<u16> {
    let family = if protocol == 1 {
        Family::V4
    } else {
        Family::V6
    };
    let header = transport.get(..8)?;
    let matches = header[0] == want(family)
        && header[1] == 0
        && u16::from_be_bytes([header[6], header[7]]) == PROBE_ICMP_SEQ;
    matches.then(|| u16::from_be_bytes([header[4], header[5]]))
}

/// A reverse-traceroute response (spec §1.4).
///
/// | ICMP offset | size | field |
/// |---|---|---|
/// | 0 | 1 | type 0 / 129 |
/// | 1 | 1 | code 1 |
/// | 2 | 2 | checksum (ICMPv6: with pseudo-header) |
/// | 4 | 2 | identifier (the request's) |
/// | 6 | 2 | sequence (0) |
/// | 8 | 1 | state |
/// | 9 | 1 | error message length: 0 from the reference; ignored, emitted as 0 |
/// | 10 | 2 | value: 0 on success; state 4: the rejected object's `class_num << 8 \| c_type` |
/// | 12 | 16 | success only: hop address, IPv4 as `::ffff:a.b.c.d` |
/// | 28 | 8 | success only: RTT (see [`ResponseBody::Success`]) |
///
/// ⚠ The draft presumably lets an error message of the length in byte 9 follow; the reference
/// never sends one and its client ignores the byte, so this parser ignores it too and ignores
/// any bytes after the fixed part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Response {
    /// Identifier: the request's.
    pub ident: u16,
    /// Sequence number: always 0 from the reference server.
    pub seq: u16,
    /// What the state says.
    pub body: ResponseBody,
}

/// The part of a response after the echo header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseBody {
    /// State 0: the probe was answered.
    Success {
        /// Source address of the packet that answered the probe (the ICMP error's or the direct
        /// answer's outer source). IPv4-mapped addresses are returned as IPv4 and an IPv4
        /// address is emitted IPv4-mapped.
        hop: IpAddr,
        /// Round-trip time between the server and the hop, in nanoseconds (the client-server leg
        /// is not included, spec §1.8).
        ///
        /// On the wire, as deployed (spec §1.4): the low 32 bits of the nanoseconds, big-endian,
        /// then 4 zero bytes (the reference writes a 64-bit field through a 32-bit `htonl`, so
        /// the value wraps at about 4.295 s). ⚠ The draft may define a 64-bit field, so parsing
        /// is lenient: 4 zero (or absent) bytes after the first 4 mean 32 bits, otherwise the 8
        /// bytes are a 64-bit big-endian value. Emission writes the deployed form whenever the
        /// value fits 32 bits, which the reference Python client reads right; a larger value is
        /// written as 64 bits (wrapping it would make it wrong for every reader), and if its low
        /// 32 bits are all zero it is sent 1 ns longer so that it cannot read as 32 bits.
        rtt_ns: u64,
        /// The value field (bytes 10..12): 0 from the reference; our server sets
        /// [`FLOW_PROBE_MARK`] when the probe it sent was the flow's own packet (the request's
        /// [`FlowProbe`] object honoured), so that a client can tell it from a server that
        /// ignored the object (the reference's `main` ignores bytes after the fixed part and
        /// sends an ordinary probe from port 1021).
        value: u16,
    },
    /// Any other state: no address, no RTT.
    Error {
        /// The state (emitting [`State::Success`] here gives a message that does not parse).
        state: State,
        /// The 16-bit value field (bytes 10..12).
        value: u16,
    },
}

impl Response {
    /// The response's state.
    pub fn state(&self) -> State {
        match self.body {
            ResponseBody::Success { .. } => State::Success,
            ResponseBody::Error { state, .. } => state,
        }
    }

    /// Parses a response, starting at the ICMP type byte. The checksum is not verified.
    ///
    /// A success needs at least 32 bytes ([`SUCCESS_RESPONSE_MIN_LEN`]), what the deployed
    /// client reads; an error needs 12. A host without a server answers a request with a plain
    /// kernel echo reply that keeps code 1 and echoes the request's TTL, protocol and flow
    /// (spec §1.5, §6): it parses as a truncated success when the TTL was 0, which is why the
    /// presence check uses TTL 0, and otherwise as an error whose state is that TTL.
    pub fn parse(family: Family, icmp: &[u8]) -> Result<Self, ParseError> {
        let h = fixed_header(icmp, family.echo_reply(), RESPONSE_CODE)?;
        let body = match State::from(h[8]) {
            State::Success => {
                let truncated = ParseError::Truncated {
                    need: SUCCESS_RESPONSE_MIN_LEN,
                    have: icmp.len(),
                };
                let hop: [u8; 16] = icmp
                    .get(12..28)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(truncated)?;
                let high = crate::be32(icmp, 28).ok_or(truncated)?;
                let rtt_ns = match crate::be32(icmp, 32) {
                    Some(low) if low != 0 => (u64::from(high) << 32) | u64::from(low),
                    _ => u64::from(high),
                };
                let hop = Ipv6Addr::from(hop);
                let hop = hop.to_ipv4_mapped().map_or(IpAddr::V6(hop), IpAddr::V4);
                ResponseBody::Success {
                    hop,
                    rtt_ns,
                    value: u16::from_be_bytes([h[10], h[11]]),
                }
            }
            state => ResponseBody::Error {
                state,
                value: u16::from_be_bytes([h[10], h[11]]),
            },
        };
        Ok(Self {
            ident: u16::from_be_bytes([h[4], h[5]]),
            seq: u16::from_be_bytes([h[6], h[7]]),
            body,
        })
    }

    /// Writes the response as ICMP (type 0) into `out` (cleared first), checksum computed.
    /// Returns the length: 36 for a success, 12 for an error.
    pub fn emit_v4(&self, out: &mut Vec<u8>) -> usize {
        self.write(Family::V4, out);
        let checksum = checksum_v4(out);
        set_checksum(out, checksum)
    }

    /// Writes the response as ICMPv6 (type 129) from `src` to `dst` into `out` (cleared first),
    /// checksum computed over the RFC 4443 §2.3 pseudo-header. Returns the length.
    pub fn emit_v6(&self, src: &Ipv6Addr, dst: &Ipv6Addr, out: &mut Vec<u8>) -> usize {
        self.write(Family::V6, out);
        let checksum = checksum_v6(src, dst, out);
        set_checksum(out, checksum)
    }

    /// The message with checksum 0.
    fn write(&self, family: Family, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&[family.echo_reply(), RESPONSE_CODE, 0, 0]);
        out.extend_from_slice(&self.ident.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        match self.body {
            ResponseBody::Success { hop, rtt_ns, value } => {
                out.extend_from_slice(&[u8::from(State::Success), 0]);
                out.extend_from_slice(&value.to_be_bytes());
                let hop = match hop {
                    IpAddr::V4(a) => a.to_ipv6_mapped(),
                    IpAddr::V6(a) => a,
                };
                out.extend_from_slice(&hop.octets());
                match u32::try_from(rtt_ns) {
                    Ok(ns) => {
                        out.extend_from_slice(&ns.to_be_bytes());
                        out.extend_from_slice(&[0; 4]);
                    }
                    Err(_) => {
                        let ns = if rtt_ns & 0xffff_ffff == 0 {
                            rtt_ns | 1
                        } else {
                            rtt_ns
                        };
                        out.extend_from_slice(&ns.to_be_bytes());
                    }
                }
            }
            ResponseBody::Error { state, value } => {
                out.extend_from_slice(&[u8::from(state), 0]);
                out.extend_from_slice(&value.to_be_bytes());
            }
        }
    }
}

/// The ICMP checksum (RFC 792) `icmp` should carry: the one's complement of the one's-complement
/// sum (RFC 1071) of the message with the checksum field (bytes 2..4) taken as zero. A message
/// verifies when this equals its bytes 2..4.
pub fn checksum_v4(icmp: &[u8]) -> u16 {
    !message_sum(icmp)
}

/// The ICMPv6 checksum (RFC 4443 §2.3) `icmp`, sent from `src` to `dst`, should carry: as
/// [`checksum_v4`], with the RFC 8200 §8.1 pseudo-header (source, destination, 32-bit
/// upper-layer length, next header 58) included.
pub fn checksum_v6(src: &Ipv6Addr, dst: &Ipv6Addr, icmp: &[u8]) -> u16 {
    let length = u32::try_from(icmp.len()).unwrap_or(u32::MAX);
    let pseudo = [
        ones_complement_sum(&src.octets()),
        ones_complement_sum(&dst.octets()),
        (length >> 16) as u16,
        length as u16,
        u16::from(Family::V6.icmp_protocol()),
    ];
    !pseudo.into_iter().fold(message_sum(icmp), ones_add)
}

/// One's-complement sum of a message without its checksum field (bytes 2..4). Both parts start
/// at even offsets, so their sums add up to the sum of the message with a zero checksum.
fn message_sum(icmp: &[u8]) -> u16 {
    let head = icmp.get(..2).unwrap_or(icmp);
    let tail = icmp.get(4..).unwrap_or_default();
    ones_add(ones_complement_sum(head), ones_complement_sum(tail))
}

/// The RFC 4884 §7 checksum of an extension structure (header and objects), its checksum field
/// (bytes 2..4) taken as zero.
fn extension_checksum(ext: &[u8]) -> u16 {
    !message_sum(ext)
}

/// Writes `checksum` into bytes 2..4 of `out` and returns the length of `out`.
fn set_checksum(out: &mut [u8], checksum: u16) -> usize {
    if let Some(field) = out.get_mut(2..4) {
        field.copy_from_slice(&checksum.to_be_bytes());
    }
    out.len()
}

/// The 12 bytes every request and response starts with, if they are there and the type and
/// code are the expected ones. The length is checked first: shorter bytes are no reverse
/// traceroute message whatever they start with.
fn fixed_header(icmp: &[u8], icmp_type: u8, code: u8) -> Result<[u8; 12], ParseError> {
    let h: [u8; 12] = icmp
        .get(..REQUEST_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(ParseError::Truncated {
            need: REQUEST_LEN,
            have: icmp.len(),
        })?;
    if h[0] != icmp_type {
        return Err(ParseError::Type(h[0]));
    }
    if h[1] != code {
        return Err(ParseError::Code(h[1]));
    }
    Ok(h)
}

/// The indirect target of the extension that starts `ext` (the bytes after the fixed part of a
/// request `total` bytes long), spec §1.3.
fn parse_extension(total: usize, ext: &[u8]) -> Result<Extension, ParseError> {
    // The extension header's 12 reserved bits (RFC 4884 §7: "must be set to 0") are not checked,
    // like the reference; they are covered by the checksum.
    let object: [u8; 4] =
        ext.get(4..8)
            .and_then(|s| s.try_into().ok())
            .ok_or(ParseError::Truncated {
                need: REQUEST_LEN + 8,
                have: total,
            })?;
    let length = u16::from_be_bytes([object[0], object[1]]);
    let (class_num, c_type) = (object[2], object[3]);
    let flow =
        (length, class_num, c_type) == (FLOW_OBJECT_LENGTH, FLOW_OBJECT_CLASS, FLOW_OBJECT_CTYPE);
    if !flow && (length, class_num, c_type) != (OBJECT_LENGTH, OBJECT_CLASS, OBJECT_CTYPE) {
        return Err(ParseError::Object {
            length,
            class_num,
            c_type,
        });
    }
    let ext = ext.get(..EXTENSION_LEN).ok_or(ParseError::Truncated {
        need: REQUEST_LEN + EXTENSION_LEN,
        have: total,
    })?;
    let carried = crate::be16(ext, 2).unwrap_or_default();
    let computed = extension_checksum(ext);
    // RFC 4884 §7: an all-zero checksum means that none was sent. The computed value is never
    // 0xFFFF (the header word 0x2000 makes the sum non-zero), so "carried == computed" is exact.
    if carried != 0 && carried != computed {
        return Err(ParseError::ExtensionChecksum { carried, computed });
    }
    let body: [u8; 16] = ext
        .get(8..EXTENSION_LEN)
        .and_then(|s| s.try_into().ok())
        .unwrap_or_default();
    if flow {
        let be16 = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
        let be32 = |i: usize| u32::from_be_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
        return Ok(Extension::Flow(FlowProbe {
            server_port: be16(0),
            client_port: be16(2),
            seq: be32(4),
            ack: be32(8),
            window: be16(12),
        }));
    }
    Ok(Extension::Indirect(Ipv6Addr::from(body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vectors::*;

    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
    const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x20);

    /// A buffer full of 0xa5 (longer than any message here), so that emit must replace it all.
    fn prefilled() -> Vec<u8> {
        vec![0xa5; 100]
    }

    fn emit_request(r: &Request, family: Family) -> Vec<u8> {
        let mut out = prefilled();
        let n = match family {
            Family::V4 => r.emit_v4(&mut out),
            Family::V6 => r.emit_v6(&CLIENT6, &SERVER6, &mut out),
        };
        assert_eq!(n, out.len());
        out
    }

    fn emit_response(r: &Response, family: Family) -> Vec<u8> {
        let mut out = prefilled();
        let n = match family {
            Family::V4 => r.emit_v4(&mut out),
            Family::V6 => r.emit_v6(&SERVER6, &CLIENT6, &mut out),
        };
        assert_eq!(n, out.len());
        out
    }

    fn request(ident: u16, ttl: u8, protocol: u8, flow: u16) -> Request {
        Request {
            ident,
            ttl,
            protocol,
            flow,
            ..Request::default()
        }
    }

    /// Every request vector: its family and what it holds. Parse gives the value, emit gives the
    /// bytes back.
    fn request_vectors() -> Vec<(&'static [u8], Family, Request)> {
        let indirect4 = Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped();
        let indirect6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99);
        vec![
            (REVTR_REQUEST, Family::V4, request(0x1234, 5, 17, 40000)),
            (
                REVTR_REQUEST_INDIRECT,
                Family::V4,
                Request {
                    indirect: Some(indirect4),
                    ..request(0x1234, 5, 17, 40000)
                },
            ),
            (
                REVTR_REQUEST_FLOW,
                Family::V4,
                Request {
                    flow_probe: Some(FlowProbe {
                        server_port: 8080,
                        client_port: 50000,
                        seq: 0x0102_0304,
                        ack: 0x0a0b_0c0d,
                        window: 0xffff,
                    }),
                    ..request(0x1234, 5, 6, 50000)
                },
            ),
            (REVTR_PRESENCE_CHECK, Family::V4, request(0x1235, 0, 0, 0)),
            (REVTR_REQUEST_V6, Family::V6, request(0xabcd, 3, 6, 443)),
            (
                REVTR_REQUEST_V6_INDIRECT_PADDED,
                Family::V6,
                Request {
                    indirect: Some(indirect6),
                    padding: 8,
                    ..request(0xabcd, 3, 6, 443)
                },
            ),
        ]
    }

    fn response_vectors() -> Vec<(&'static [u8], Family, Response)> {
        let success = |ident, hop, rtt_ns| Response {
            ident,
            seq: 0,
            body: ResponseBody::Success {
                hop,
                rtt_ns,
                value: 0,
            },
        };
        let error = |ident, state, value| Response {
            ident,
            seq: 0,
            body: ResponseBody::Error { state, value },
        };
        let hop4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let hop6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1));
        vec![
            (REVTR_SUCCESS, Family::V4, success(0x1234, hop4, 12_345_678)),
            (REVTR_ERROR_TTL, Family::V4, error(0x1234, State::Ttl, 0)),
            (
                REVTR_ERROR_MULTIPART,
                Family::V4,
                error(0x1234, State::MultipartNotSupported, 0x0500),
            ),
            (
                REVTR_SUCCESS_RTT64,
                Family::V4,
                success(0x1234, hop4, 5_000_000_000),
            ),
            (
                REVTR_SUCCESS_V6,
                Family::V6,
                success(0xabcd, hop6, 1_500_000),
            ),
            (
                REVTR_ERROR_PROTOCOL_V6,
                Family::V6,
                error(0xabcd, State::Protocol, 0),
            ),
        ]
    }

    #[test]
    fn request_vectors_parse_and_emit_byte_exact() {
        for (bytes, family, want) in request_vectors() {
            assert_eq!(Request::parse(family, bytes), Ok(want), "{bytes:02x?}");
            assert_eq!(emit_request(&want, family), bytes);
        }
    }

    /// A success response of a flow-shaped probe carries the mark in its value field, which
    /// the reference leaves 0: the bytes, and the round trip.
    #[test]
    fn flow_probe_mark_rides_in_the_value_field() {
        let r = Response {
            ident: 0x1234,
            seq: 0,
            body: ResponseBody::Success {
                hop: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                rtt_ns: 1000,
                value: FLOW_PROBE_MARK,
            },
        };
        let mut out = Vec::new();
        r.emit_v4(&mut out);
        assert_eq!(&out[8..12], &[0, 0, 0xfa, 0x01]);
        assert_eq!(Response::parse(Family::V4, &out), Ok(r));
        // The reference's success (value 0) parses with value 0.
        let reference = Response::parse(Family::V4, REVTR_SUCCESS).unwrap();
        assert!(matches!(
            reference.body,
            ResponseBody::Success { value: 0, .. }
        ));
    }

    /// The flow-probe object's probes: TCP a pure ACK with the flow's ports and numbers, UDP
    /// the flow's ports with the identifier as checksum, ICMP refused (state 2); the object
    /// with another length is refused like any unknown object (state 4 with its class).
    #[test]
    fn flow_probe_object_gives_the_flows_own_packet() {
        let flow = FlowProbe {
            server_port: 8080,
            client_port: 50000,
            seq: 77,
            ack: 99,
            window: 512,
        };
        let req = |protocol| Request {
            flow_probe: Some(flow),
            ..request(0x1234, 5, protocol, 50000)
        };
        let p = req(6).probe(Family::V4, 0x1234, TcpProbe::Syn).unwrap();
        assert_eq!(
            p.transport,
            TransportFields::Tcp(TcpFields {
                src_port: 8080,
                dst_port: 50000,
                seq: 77,
                ack: 99,
                flags: TCP_ACK,
                window: 512,
            })
        );
        assert!(p.tcp_options.is_empty() && p.payload_len == 0);
        let p = req(17).probe(Family::V6, 0x1234, TcpProbe::Syn).unwrap();
        assert_eq!(
            p.transport,
            TransportFields::Udp(UdpFields {
                src_port: 8080,
                dst_port: 50000
            })
        );
        assert_eq!((p.payload_len, p.forced_checksum), (2, Some(0x1234)));
        assert_eq!(
            req(1).probe(Family::V4, 1, TcpProbe::Syn),
            Err(State::Protocol)
        );
        assert_eq!(
            FlowProbe::tag(6, &[0x1f, 0x90, 0xc3, 0x50, 0, 0, 0, 77]),
            Some(77)
        );
        assert_eq!(
            FlowProbe::tag(17, &[0x1f, 0x90, 0xc3, 0x50, 0, 10, 0x12, 0x34]),
            Some(0x1234)
        );
        let mut bad = REVTR_REQUEST_FLOW.to_vec();
        bad[17] = 16;
        assert_eq!(
            Request::parse(Family::V4, &bad),
            Err(ParseError::Object {
                length: 16,
                class_num: FLOW_OBJECT_CLASS,
                c_type: FLOW_OBJECT_CTYPE
            })
        );
        assert!(matches!(
            Request::parse(Family::V4, &REVTR_REQUEST_FLOW[..30]),
            Err(ParseError::Truncated { .. })
        ));
    }

    #[test]
    fn response_vectors_parse_and_emit_byte_exact() {
        for (bytes, family, want) in response_vectors() {
            assert_eq!(Response::parse(family, bytes), Ok(want), "{bytes:02x?}");
            assert_eq!(emit_response(&want, family), bytes);
        }
    }

    #[test]
    fn vector_checksums_verify() {
        let carried = |m: &[u8]| u16::from_be_bytes([m[2], m[3]]);
        for (bytes, family, _) in request_vectors() {
            let want = match family {
                Family::V4 => checksum_v4(bytes),
                Family::V6 => checksum_v6(&CLIENT6, &SERVER6, bytes),
            };
            assert_eq!(carried(bytes), want);
        }
        for (bytes, family, _) in response_vectors() {
            let want = match family {
                Family::V4 => checksum_v4(bytes),
                Family::V6 => checksum_v6(&SERVER6, &CLIENT6, bytes),
            };
            assert_eq!(carried(bytes), want);
        }
        // spec §1.3: over IPv4 the self-checksummed extension leaves the ICMP checksum as it
        // was; over IPv6 the pseudo-header's length changes it.
        assert_eq!(carried(REVTR_REQUEST), carried(REVTR_REQUEST_INDIRECT));
        let v6_no_ext = emit_request(&request(0xabcd, 3, 6, 443), Family::V6);
        assert_eq!(v6_no_ext, REVTR_REQUEST_V6);
        assert_ne!(
            carried(REVTR_REQUEST_V6),
            carried(REVTR_REQUEST_V6_INDIRECT_PADDED)
        );
    }

    /// The checksum helpers against etherparse's (an independent implementation), including
    /// odd lengths and the IPv6 pseudo-header.
    #[test]
    fn checksums_match_etherparse() {
        use etherparse::{Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type};
        let mut rng = XorShift(0x2e77_7ace_0001_beaf);
        for _ in 0..2000 {
            let len = 8 + rng.below(60);
            let m: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let bytes5to8 = [m[4], m[5], m[6], m[7]];
            let v4 = Icmpv4Header::with_checksum(
                Icmpv4Type::Unknown {
                    type_u8: m[0],
                    code_u8: m[1],
                    bytes5to8,
                },
                &m[8..],
            );
            assert_eq!(checksum_v4(&m), v4.checksum, "{m:02x?}");
            let src = Ipv6Addr::from(rng.next() as u128 | (u128::from(rng.next()) << 64));
            let dst = Ipv6Addr::from(rng.next() as u128 | (u128::from(rng.next()) << 64));
            // etherparse reads types 1..4 and 128..137 as known messages; give it an unknown
            // type with the same bytes instead and compare sums over a type-neutral message.
            let unknown = Icmpv6Type::Unknown {
                type_u8: 200,
                code_u8: m[1],
                bytes5to8,
            };
            let v6 =
                Icmpv6Header::with_checksum(unknown, src.octets(), dst.octets(), &m[8..]).unwrap();
            let mut ours = m.clone();
            ours[0] = 200;
            assert_eq!(checksum_v6(&src, &dst, &ours), v6.checksum, "{m:02x?}");
        }
        // Too short to have a checksum field: still a value, no panic.
        for len in 0..4 {
            let _ = checksum_v4(&[0xff; 4][..len]);
            let _ = checksum_v6(&CLIENT6, &SERVER6, &[0xff; 4][..len]);
        }
    }

    #[test]
    fn request_prefixes_of_every_length() {
        // The indirect request followed by zero padding up to 64 bytes.
        let mut v = REVTR_REQUEST_INDIRECT.to_vec();
        v.resize(64, 0);
        let full = Request::parse(Family::V4, REVTR_REQUEST_INDIRECT).unwrap();
        for len in 0..=v.len() {
            let got = Request::parse(Family::V4, &v[..len]);
            let want = match len {
                0..=11 => Err(ParseError::Truncated {
                    need: 12,
                    have: len,
                }),
                // Fewer than 4 bytes after the fixed part: no extension, whatever they hold.
                12..=15 => Ok(Request {
                    indirect: None,
                    padding: len - 12,
                    ..full
                }),
                16..=19 => Err(ParseError::Truncated {
                    need: 20,
                    have: len,
                }),
                20..=35 => Err(ParseError::Truncated {
                    need: 36,
                    have: len,
                }),
                _ => Ok(Request {
                    padding: len - 36,
                    ..full
                }),
            };
            assert_eq!(got, want, "len {len}");
        }
        // The plain request with zero padding: every length from 12 on is that request.
        let mut v = REVTR_REQUEST.to_vec();
        v.resize(64, 0);
        for len in 0..=v.len() {
            let got = Request::parse(Family::V4, &v[..len]);
            if len < 12 {
                assert_eq!(
                    got,
                    Err(ParseError::Truncated {
                        need: 12,
                        have: len
                    })
                );
            } else {
                let want = Request {
                    padding: len - 12,
                    ..request(0x1234, 5, 17, 40000)
                };
                assert_eq!(got, Ok(want));
                // Emitted, the padding is zeros again: byte-exact.
                assert_eq!(emit_request(&want, Family::V4), &v[..len]);
            }
        }
    }

    #[test]
    fn response_prefixes_of_every_length() {
        let mut v = REVTR_SUCCESS.to_vec();
        v.resize(64, 0);
        let full = Response::parse(Family::V4, REVTR_SUCCESS).unwrap();
        for len in 0..=v.len() {
            let got = Response::parse(Family::V4, &v[..len]);
            let want = match len {
                0..=11 => Err(ParseError::Truncated {
                    need: 12,
                    have: len,
                }),
                12..=31 => Err(ParseError::Truncated {
                    need: 32,
                    have: len,
                }),
                // 32..36: the deployed client's minimum, the RTT's zero half missing or cut.
                _ => Ok(full),
            };
            assert_eq!(got, want, "len {len}");
        }
        let mut v = REVTR_ERROR_MULTIPART.to_vec();
        v.resize(64, 0xee);
        let full = Response::parse(Family::V4, REVTR_ERROR_MULTIPART).unwrap();
        for len in 0..=v.len() {
            let got = Response::parse(Family::V4, &v[..len]);
            if len < 12 {
                assert_eq!(
                    got,
                    Err(ParseError::Truncated {
                        need: 12,
                        have: len
                    })
                );
            } else {
                assert_eq!(got, Ok(full), "trailing bytes are ignored");
            }
        }
    }

    #[test]
    fn wrong_type_or_code() {
        let mut v = REVTR_REQUEST.to_vec();
        assert_eq!(Request::parse(Family::V6, &v), Err(ParseError::Type(8)));
        assert_eq!(Response::parse(Family::V4, &v), Err(ParseError::Type(8)));
        v[1] = 0; // a plain ping
        assert_eq!(Request::parse(Family::V4, &v), Err(ParseError::Code(0)));
        assert_eq!(
            Request::parse(Family::V4, REVTR_SUCCESS),
            Err(ParseError::Type(0))
        );
        assert_eq!(
            Response::parse(Family::V6, REVTR_SUCCESS),
            Err(ParseError::Type(0))
        );
        assert_eq!(
            Request::parse(Family::V4, REVTR_REQUEST_V6),
            Err(ParseError::Type(128))
        );
        let mut v = REVTR_ERROR_TTL.to_vec();
        v[1] = 2;
        assert_eq!(Response::parse(Family::V4, &v), Err(ParseError::Code(2)));
        // The length is checked before the type: 11 bytes of anything are "truncated".
        assert_eq!(
            Request::parse(Family::V4, &[0xff; 11]),
            Err(ParseError::Truncated { need: 12, have: 11 })
        );
    }

    #[test]
    fn bad_extension_objects() {
        let edited = |at: usize, b: u8| {
            let mut v = REVTR_REQUEST_INDIRECT.to_vec();
            v[at] = b;
            Request::parse(Family::V4, &v)
        };
        // RFC 4884's length (header included) is not what the reference speaks.
        assert_eq!(
            edited(17, 20),
            Err(ParseError::Object {
                length: 20,
                class_num: 5,
                c_type: 0
            })
        );
        assert_eq!(
            edited(18, 1),
            Err(ParseError::Object {
                length: 16,
                class_num: 1,
                c_type: 0
            })
        );
        assert_eq!(
            edited(19, 1),
            Err(ParseError::Object {
                length: 16,
                class_num: 5,
                c_type: 1
            })
        );
        // The object header is judged as soon as it is there, before the address.
        assert_eq!(
            Request::parse(
                Family::V4,
                &[&REVTR_REQUEST_INDIRECT[..18], &[9, 9]].concat()
            ),
            Err(ParseError::Object {
                length: 16,
                class_num: 9,
                c_type: 9
            })
        );
        // A corrupted address: the checksum says so.
        assert_eq!(
            edited(35, 8),
            Err(ParseError::ExtensionChecksum {
                carried: 0xb0b4,
                computed: 0xb0b3
            })
        );
        // Checksum 0: none sent (RFC 4884 §7); accepted, re-emitted with the checksum.
        let mut v = REVTR_REQUEST_INDIRECT.to_vec();
        v[14..16].copy_from_slice(&[0, 0]);
        let r = Request::parse(Family::V4, &v).unwrap();
        assert_eq!(emit_request(&r, Family::V4), REVTR_REQUEST_INDIRECT);
        // The 12 reserved bits are not checked (the checksum still covers them).
        let mut v = REVTR_REQUEST_INDIRECT.to_vec();
        v[12..16].copy_from_slice(&[0x2f, 0xff, 0, 0]);
        assert_eq!(
            Request::parse(Family::V4, &v).unwrap().indirect,
            Some(Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped())
        );
    }

    /// Trailing bytes are padding whatever they hold (the reference ignores them), unless 4 or
    /// more of them start with the version nibble 2.
    #[test]
    fn trailing_bytes_are_padding() {
        let base = request(0x1234, 5, 17, 40000);
        for tail in [
            &[0x20][..],
            &[0x2f, 0xff, 0xff],
            &[0x10, 0x00, 0xb0, 0xb4, 0x00, 0x10, 0x05, 0x00],
            &[0xff; 40],
            &[0x00, 0x20, 0x00, 0x00, 0x00],
        ] {
            let v = [REVTR_REQUEST, tail].concat();
            assert_eq!(
                Request::parse(Family::V4, &v),
                Ok(Request {
                    padding: tail.len(),
                    ..base
                }),
                "{tail:02x?}"
            );
        }
        // After an extension too.
        let v = [REVTR_REQUEST_INDIRECT, &[0x20, 0, 0, 0, 0x77]].concat();
        assert_eq!(Request::parse(Family::V4, &v).unwrap().padding, 5);
    }

    #[test]
    fn padding_is_cut_to_fit_the_ip_length() {
        let r = Request {
            padding: usize::MAX,
            ..request(1, 1, 0, 0)
        };
        let mut out = Vec::new();
        assert_eq!(r.emit_v4(&mut out), 65515);
        assert_eq!(
            Request::parse(Family::V4, &out).unwrap().padding,
            65515 - 12
        );
        assert_eq!(r.emit_v6(&CLIENT6, &SERVER6, &mut out), 65535);
        let r = Request {
            indirect: Some(CLIENT6),
            ..r
        };
        assert_eq!(r.emit_v6(&CLIENT6, &SERVER6, &mut out), 65535);
        assert_eq!(
            Request::parse(Family::V6, &out).unwrap().padding,
            65535 - 36
        );
    }

    #[test]
    fn indirect_target_per_family() {
        let r = Request::parse(Family::V4, REVTR_REQUEST_INDIRECT).unwrap();
        assert_eq!(
            r.indirect_target(Family::V4),
            Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)))
        );
        // An IPv4 server takes the last 4 bytes without checking the prefix (spec §1.3).
        let r = Request::parse(Family::V6, REVTR_REQUEST_V6_INDIRECT_PADDED).unwrap();
        assert_eq!(
            r.indirect_target(Family::V4),
            Some(IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0x99)))
        );
        assert_eq!(
            r.indirect_target(Family::V6),
            Some(IpAddr::V6(Ipv6Addr::new(
                0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99
            )))
        );
        assert_eq!(request(1, 1, 0, 0).indirect_target(Family::V6), None);
    }

    #[test]
    fn rtt_is_parsed_leniently_and_emitted_as_deployed() {
        let hop = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let response = |rtt_ns| Response {
            ident: 0x1234,
            seq: 0,
            body: ResponseBody::Success {
                hop,
                rtt_ns,
                value: 0,
            },
        };
        let rtt_of = |bytes: &[u8]| match Response::parse(Family::V4, bytes).unwrap().body {
            ResponseBody::Success { rtt_ns, .. } => rtt_ns,
            other => panic!("{other:?}"),
        };
        // 32 bits and 4 zero bytes; the largest value that fits.
        let out = emit_response(&response(u64::from(u32::MAX)), Family::V4);
        assert_eq!(&out[28..], &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(rtt_of(&out), u64::from(u32::MAX));
        // 64 bits when it does not fit (the 5 s vector), and 2^32 sent as 2^32 + 1 ns so that
        // it cannot read as the 32-bit value 1.
        let out = emit_response(&response(1 << 32), Family::V4);
        assert_eq!(&out[28..], &[0, 0, 0, 1, 0, 0, 0, 1]);
        assert_eq!(rtt_of(&out), (1 << 32) + 1);
        assert_eq!(rtt_of(&out[..32]), 1, "what the deployed client reads");
        let out = emit_response(&response(u64::MAX), Family::V4);
        assert_eq!(rtt_of(&out), u64::MAX);
        // Bytes 32..36 non-zero but 28..32 zero: a small 64-bit value, emitted as 32 bits.
        let mut v = REVTR_SUCCESS.to_vec();
        v[28..36].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0x30, 0x39]);
        assert_eq!(rtt_of(&v), 12345);
        assert_eq!(
            &emit_response(&response(12345), Family::V4)[28..32],
            &[0, 0, 0x30, 0x39]
        );
    }

    #[test]
    fn hop_addresses_are_mapped_and_unmapped() {
        let mut v = REVTR_SUCCESS_V6.to_vec();
        let r = Response::parse(Family::V6, &v).unwrap();
        assert_eq!(r.state(), State::Success);
        // An IPv4-mapped hop in an ICMPv6 response is IPv4 too; an IPv4-compatible one is not.
        v[12..28].copy_from_slice(&Ipv4Addr::new(203, 0, 113, 1).to_ipv6_mapped().octets());
        let ResponseBody::Success { hop, .. } = Response::parse(Family::V6, &v).unwrap().body
        else {
            panic!()
        };
        assert_eq!(hop, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)));
        v[22..24].copy_from_slice(&[0, 0]);
        let ResponseBody::Success { hop, .. } = Response::parse(Family::V6, &v).unwrap().body
        else {
            panic!()
        };
        assert_eq!(hop, "::203.0.113.1".parse::<IpAddr>().unwrap());
    }

    /// A plain kernel echo reply to a request (code kept, the request's 4 bytes echoed; spec
    /// §1.5): a truncated success for the presence check, an "error" with the TTL as state
    /// otherwise. Neither looks like a server's answer to the presence check (state 1).
    #[test]
    fn kernel_echo_replies() {
        let mut echo = REVTR_PRESENCE_CHECK.to_vec();
        echo[0] = 0;
        assert_eq!(
            Response::parse(Family::V4, &echo),
            Err(ParseError::Truncated { need: 32, have: 12 })
        );
        let mut echo = REVTR_REQUEST.to_vec();
        echo[0] = 0;
        let r = Response::parse(Family::V4, &echo).unwrap();
        assert_eq!(r.state(), State::Unknown(5));
        assert_eq!(
            r.body,
            ResponseBody::Error {
                state: State::Unknown(5),
                value: 40000
            }
        );
    }

    #[test]
    fn states_are_the_servers_numbers() {
        let named = [
            (0, State::Success),
            (1, State::Ttl),
            (2, State::Protocol),
            (3, State::Flow),
            (4, State::MultipartNotSupported),
        ];
        for (v, s) in named {
            assert_eq!(State::from(v), s);
            assert_eq!(u8::from(s), v);
        }
        for v in 5..=255u8 {
            assert_eq!(State::from(v), State::Unknown(v));
            assert_eq!(u8::from(State::from(v)), v);
        }
        // Emitted as given, including unnamed states.
        let r = Response {
            ident: 7,
            seq: 0,
            body: ResponseBody::Error {
                state: State::Unknown(200),
                value: 0xbeef,
            },
        };
        assert_eq!(
            Response::parse(Family::V4, &emit_response(&r, Family::V4)),
            Ok(r)
        );
    }

    #[test]
    fn probe_fields_and_defaults() {
        let id = 0x4242;
        let udp = |dst_port| {
            TransportFields::Udp(UdpFields {
                src_port: 1021,
                dst_port,
            })
        };
        let tcp = |dst_port, flags| {
            TransportFields::Tcp(TcpFields {
                src_port: 1021,
                dst_port,
                seq: 0x4242,
                ack: 0,
                flags,
                window: 1024,
            })
        };
        let echo = TransportFields::Echo(EchoFields {
            ident: id,
            seq: 0xffff,
        });
        let p = request(1, 5, 17, 40000)
            .probe(Family::V4, id, TcpProbe::Syn)
            .unwrap();
        assert_eq!(
            p,
            Probe {
                protocol: Protocol::Udp,
                ttl: 5,
                transport: udp(40000),
                tcp_options: &[],
                payload_len: 8,
                forced_checksum: Some(id),
            }
        );
        let p = request(1, 9, 17, 0)
            .probe(Family::V6, id, TcpProbe::Syn)
            .unwrap();
        assert_eq!((p.transport, p.ttl), (udp(53), 9));
        let p = request(1, 9, 6, 0)
            .probe(Family::V4, id, TcpProbe::Syn)
            .unwrap();
        assert_eq!(
            (p.transport, p.tcp_options, p.payload_len, p.forced_checksum),
            (tcp(80, 0x02), &[2u8, 4, 5, 0xb4][..], 0, None)
        );
        let p = request(1, 9, 6, 443)
            .probe(Family::V6, id, TcpProbe::Plain)
            .unwrap();
        assert_eq!(
            (p.transport, p.tcp_options, p.payload_len),
            (tcp(443, 0), &[][..], 4)
        );
        for (protocol, family) in [
            (0, Family::V4),
            (0, Family::V6),
            (1, Family::V4),
            (58, Family::V6),
        ] {
            let p = request(1, 2, protocol, 0)
                .probe(family, id, TcpProbe::Syn)
                .unwrap();
            assert_eq!(
                (p.protocol, p.transport, p.forced_checksum, p.payload_len),
                (Protocol::Icmp, echo, Some(0xbeaf), 8)
            );
            let p = request(1, 2, protocol, 7)
                .probe(family, id, TcpProbe::Syn)
                .unwrap();
            assert_eq!(p.forced_checksum, Some(7));
        }
        // ICMP of the other family, and everything else, is state 2; TTL 0 is state 1 first.
        for (protocol, family) in [
            (58, Family::V4),
            (1, Family::V6),
            (2, Family::V4),
            (255, Family::V6),
        ] {
            let r = request(1, 2, protocol, 0);
            assert_eq!(r.probe_protocol(family), None);
            assert_eq!(r.probe(family, id, TcpProbe::Syn), Err(State::Protocol));
            let r = request(1, 0, protocol, 0);
            assert_eq!(r.probe(family, id, TcpProbe::Syn), Err(State::Ttl));
        }
        assert_eq!(
            request(1, 0, 0, 0).probe(Family::V4, id, TcpProbe::Syn),
            Err(State::Ttl)
        );
        assert_eq!(default_flow(Protocol::Udp), 53);
        assert_eq!(default_flow(Protocol::Tcp), 80);
        assert_eq!(default_flow(Protocol::Icmp), 0xbeaf);
    }

    /// The probes built from the description with `crate::probe`, quoted by a router: the
    /// matcher recovers the identifier, and the flow fields are the ones a load balancer sees.
    #[test]
    fn emitted_probes_match_through_quotes() {
        use crate::icmp::{parse_icmpv4, parse_icmpv6, IcmpMessage};
        use crate::probe::{self as p, force_checksum, IpFields, Ipv4Fields, Ipv6Fields};

        let ip4 = |ttl| {
            IpFields::V4(Ipv4Fields {
                src: Ipv4Addr::new(198, 51, 100, 20),
                dst: Ipv4Addr::new(192, 0, 2, 10),
                ttl,
                tos: 0,
                dont_fragment: false,
                ident: 1,
            })
        };
        let ip6 = |hop_limit| {
            IpFields::V6(Ipv6Fields {
                src: SERVER6,
                dst: CLIENT6,
                hop_limit,
                traffic_class: 0,
                flow_label: 0,
            })
        };
        let mut rng = XorShift(0x00c0_ffee_1021_ffff);
        let mut pkt = Vec::new();
        for round in 0..600 {
            let family = if round % 2 == 0 {
                Family::V4
            } else {
                Family::V6
            };
            let protocol = [0u8, 6, 17][round / 2 % 3];
            let flow = [0u16, 1, 40000, 0xfffe][round % 4];
            let id = [1u16, 0x1234, 0xfffe, rng.next() as u16 | 1][round / 6 % 4];
            let r = request(id, 1 + rng.below(30) as u8, protocol, flow);
            let probe = r.probe(family, id, TcpProbe::Syn).unwrap();
            let mut payload: Vec<u8> = (0..probe.payload_len).map(|_| rng.next() as u8).collect();
            if let Some(last) = payload.len().checked_sub(2) {
                payload[last..].fill(0);
            }
            let ip = match family {
                Family::V4 => ip4(probe.ttl),
                Family::V6 => ip6(probe.ttl),
            };
            let l4 = match family {
                Family::V4 => 20,
                Family::V6 => 40,
            };
            match (probe.transport, ip) {
                (TransportFields::Tcp(t), IpFields::V4(v4)) => {
                    p::emit_tcp_v4_with_options(&v4, &t, probe.tcp_options, &mut pkt);
                    assert_eq!(pkt.len(), 20 + 24, "SYN with MSS, data offset 6");
                }
                // (The quote below needs only the first 8 bytes: no options over IPv6.)
                (t, ip) => {
                    p::emit(&ip, &t, &payload, &mut pkt);
                }
            }
            let csum_at = l4
                + if probe.protocol == Protocol::Udp {
                    6
                } else {
                    2
                };
            if let Some(want) = probe.forced_checksum {
                let word_at = pkt.len() - 2;
                force_checksum(&mut pkt, csum_at, word_at, want);
                assert_eq!(crate::be16(&pkt, csum_at), Some(want));
            }
            // A router quotes the IP header and 8 transport bytes.
            let mut te = vec![
                if family == Family::V4 { 11 } else { 3 },
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ];
            te.extend_from_slice(&pkt[..l4 + 8]);
            let parsed = match family {
                Family::V4 => parse_icmpv4(&te),
                Family::V6 => parse_icmpv6(&te),
            };
            let Ok(IcmpMessage::Error(e)) = parsed else {
                panic!("{parsed:?}")
            };
            let q = e.quote;
            assert_eq!(
                quoted_identifier(q.protocol, q.transport),
                Some(id),
                "{probe:?}"
            );
            let flow = r.probe_flow(probe.protocol);
            match probe.protocol {
                Protocol::Icmp => assert_eq!(q.icmp_checksum(), Some(flow)),
                _ => assert_eq!(q.ports(), Some((PROBE_PORT, flow))),
            }
            // Foreign traffic is not a probe: another source port, another echo sequence.
            let mut other = q.transport.to_vec();
            match probe.protocol {
                Protocol::Icmp => other[7] ^= 1,
                _ => other[1] ^= 1,
            }
            assert_eq!(quoted_identifier(q.protocol, &other), None);
        }
    }

    #[test]
    fn direct_answers() {
        // An echo reply to an ICMP probe: type 0 / 129, code 0, seq 0xFFFF.
        let reply4 = [0, 0, 0x12, 0x34, 0xab, 0xcd, 0xff, 0xff];
        assert_eq!(answer_identifier(1, &reply4, TcpProbe::Syn), Some(0xabcd));
        assert_eq!(answer_identifier(58, &reply4, TcpProbe::Syn), None);
        let reply6 = [129, 0, 0x12, 0x34, 0xab, 0xcd, 0xff, 0xff];
        assert_eq!(
            answer_identifier(58, &reply6, TcpProbe::Plain),
            Some(0xabcd)
        );
        assert_eq!(answer_identifier(58, &reply6[..7], TcpProbe::Plain), None);
        let mut ping = reply4;
        ping[7] = 0xfe;
        assert_eq!(answer_identifier(1, &ping, TcpProbe::Syn), None);
        // The quoted form is the request type.
        let request4 = [8, 0, 0x12, 0x34, 0xab, 0xcd, 0xff, 0xff];
        assert_eq!(quoted_identifier(1, &request4), Some(0xabcd));
        assert_eq!(answer_identifier(1, &request4, TcpProbe::Syn), None);

        // TCP from the probed host (port 80) to 1021.
        let tcp = |flags: u8, ack: u32| {
            let mut t = vec![0, 80, 0x03, 0xfd, 0, 0, 0, 0];
            t.extend_from_slice(&ack.to_be_bytes());
            t.extend_from_slice(&[0x50, flags, 0, 0, 0, 0, 0, 0]);
            t
        };
        let (syn_ack, rst, rst_ack) = (0x12, 0x04, 0x14);
        assert_eq!(
            answer_identifier(6, &tcp(syn_ack, 0x4243), TcpProbe::Syn),
            Some(0x4242)
        );
        assert_eq!(
            answer_identifier(6, &tcp(rst_ack, 0x4243), TcpProbe::Syn),
            Some(0x4242)
        );
        assert_eq!(
            answer_identifier(6, &tcp(rst, 0x4243), TcpProbe::Syn),
            Some(0x4242)
        );
        assert_eq!(
            answer_identifier(6, &tcp(rst_ack, 0x4246), TcpProbe::Plain),
            Some(0x4242)
        );
        assert_eq!(
            answer_identifier(6, &tcp(rst, 0x4246), TcpProbe::Plain),
            None
        );
        assert_eq!(
            answer_identifier(6, &tcp(syn_ack, 0x4243), TcpProbe::Plain),
            None
        );
        assert_eq!(
            answer_identifier(6, &tcp(0x10, 0x4243), TcpProbe::Syn),
            None,
            "bare ACK"
        );
        // An acknowledgment that cannot come from a 16-bit identifier; identifier 0xFFFF.
        assert_eq!(
            answer_identifier(6, &tcp(syn_ack, 0x2_0000), TcpProbe::Syn),
            None
        );
        assert_eq!(
            answer_identifier(6, &tcp(syn_ack, 0x1_0000), TcpProbe::Syn),
            Some(0xffff)
        );
        assert_eq!(answer_identifier(6, &tcp(syn_ack, 0), TcpProbe::Syn), None);
        // Not to port 1021; cut before the flags.
        let mut t = tcp(syn_ack, 0x4243);
        t[3] = 0xfe;
        assert_eq!(answer_identifier(6, &t, TcpProbe::Syn), None);
        assert_eq!(
            answer_identifier(6, &tcp(syn_ack, 0x4243)[..13], TcpProbe::Syn),
            None
        );
        // UDP answers are never matched.
        let udp = [0, 53, 0x03, 0xfd, 0, 16, 0x42, 0x42];
        assert_eq!(answer_identifier(17, &udp, TcpProbe::Syn), None);
    }

    /// Random and mutated bytes through every parser and matcher: no panic, and whatever parses
    /// emits to bytes that parse to the same value and re-emit byte for byte.
    #[test]
    fn pseudo_random_inputs_never_panic_and_round_trip() {
        let mut rng = XorShift(0x5eed_0f5e_1021_0001);
        let mut buf = Vec::with_capacity(128);
        for round in 0..100_000 {
            buf.clear();
            if round % 2 == 0 {
                let len = rng.below(80);
                buf.extend((0..len).map(|_| rng.next() as u8));
                // Half of them with a reverse-traceroute type and code.
                if round % 4 == 0 && len >= 2 {
                    buf[0] = [0, 8, 128, 129][rng.below(4)];
                    buf[1] = 1;
                }
            } else {
                let (_, v) = REVTR_ALL[rng.below(REVTR_ALL.len())];
                buf.extend_from_slice(v);
                for _ in 0..rng.below(4) {
                    let at = rng.below(buf.len());
                    buf[at] = rng.next() as u8;
                }
                match rng.below(3) {
                    0 => buf.truncate(rng.below(buf.len() + 1)),
                    1 => buf.extend((0..rng.below(40)).map(|_| rng.next() as u8)),
                    _ => {}
                }
            }
            round_trip(&buf);
        }
    }

    /// What the fuzz target checks, for the unit tests.
    fn round_trip(data: &[u8]) {
        for family in [Family::V4, Family::V6] {
            if let Ok(r) = Request::parse(family, data) {
                let out = emit_request(&r, family);
                assert_eq!(Request::parse(family, &out), Ok(r), "{data:02x?}");
                assert_eq!(emit_request(&r, family), out);
                for tcp in [TcpProbe::Syn, TcpProbe::Plain] {
                    let _ = r.probe(family, r.ident, tcp);
                }
                let _ = r.indirect_target(family);
            }
            if let Ok(r) = Response::parse(family, data) {
                let out = emit_response(&r, family);
                assert_eq!(Response::parse(family, &out), Ok(r), "{data:02x?}");
            }
        }
        for protocol in [1, 6, 17, 58, data.first().copied().unwrap_or(0)] {
            let _ = quoted_identifier(protocol, data);
            let _ = answer_identifier(protocol, data, TcpProbe::Syn);
            let _ = answer_identifier(protocol, data, TcpProbe::Plain);
        }
    }
}
