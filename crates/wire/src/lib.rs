//! Wire formats for service-traceroute.
//!
//! What this crate does:
//! - [`flow`]: a flow's identity ([`flow::FlowKey`]: protocol and both endpoints).
//! - [`link`]: strips the link-layer header of a captured frame (Ethernet with VLAN tags,
//!   Linux "cooked" SLL and SLL2, raw IP, BSD loopback) and returns the IP packet.
//! - [`packet`]: summarises one captured IPv4/IPv6 packet ([`packet::Packet`]): the IP fields the
//!   tracer copies into probes, the TCP/UDP header fields it tracks, or a parsed ICMP message.
//!   Captures are truncated by the snap length, so the parse is *lax*: it never requires the
//!   whole datagram that the IP total length announces.
//! - [`icmp`]: ICMP/ICMPv6 error messages and the datagram they quote, even when only 8 bytes of
//!   the transport header are quoted, with IP options in the quote, and with RFC 4884 multi-part
//!   extensions (MPLS label stacks, RFC 4950).
//! - [`probe`]: emits TCP/UDP/ICMP-echo probe packets, IPv4 (IP_HDRINCL-ready headers) and
//!   IPv6 (header included), and computes the Paris traceroute fields (UDP payload that fixes
//!   the UDP checksum, ICMP identifier that keeps the ICMP checksum constant).
//! - [`revtr`]: reverse traceroute (draft-heiwin-intarea-reverse-traceroute) messages and probes.
//!
//! What it does not do: no sockets, no clock, no allocation on the parse path except where a
//! message carries a variable list (MPLS labels).
//!
//! Panic contract: no function in this crate panics on any input bytes. Every length is checked
//! before it is used; arithmetic on lengths read from the wire is checked or saturating.

pub mod flow;
pub mod icmp;
pub mod link;
pub mod packet;
pub mod probe;
pub mod revtr;

#[cfg(test)]
mod vectors;

/// Errors from parsing. Small and allocation-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The buffer ends before the structure it should hold.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// bytes needed
        need: usize,
        /// bytes available
        have: usize,
    },
    /// A field holds a value that makes the structure meaningless (bad version, bad IHL, ...).
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// Not a protocol this crate handles (e.g. not IP).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

impl From<etherparse::err::LenError> for Error {
    fn from(e: etherparse::err::LenError) -> Self {
        Error::Truncated {
            need: e.required_len,
            have: e.len,
        }
    }
}

impl From<etherparse::err::ipv4::HeaderSliceError> for Error {
    fn from(e: etherparse::err::ipv4::HeaderSliceError) -> Self {
        use etherparse::err::ipv4::{HeaderError, HeaderSliceError};
        match e {
            HeaderSliceError::Len(l) => l.into(),
            HeaderSliceError::Content(HeaderError::UnexpectedVersion { .. }) => {
                Error::Malformed("IPv4 header: version is not 4")
            }
            HeaderSliceError::Content(HeaderError::HeaderLengthSmallerThanHeader { .. }) => {
                Error::Malformed("IPv4 header: IHL < 5")
            }
        }
    }
}

impl From<etherparse::err::ipv6::HeaderSliceError> for Error {
    fn from(e: etherparse::err::ipv6::HeaderSliceError) -> Self {
        use etherparse::err::ipv6::HeaderSliceError;
        match e {
            HeaderSliceError::Len(l) => l.into(),
            HeaderSliceError::Content(_) => Error::Malformed("IPv6 header: version is not 6"),
        }
    }
}

/// Reads a big-endian `u16` at `at`, if the two bytes are there.
pub(crate) fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// Reads a big-endian `u32` at `at`, if the four bytes are there.
pub(crate) fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}
