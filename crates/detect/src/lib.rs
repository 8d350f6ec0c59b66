//! Recognition of a named service's flows ("YouTube", "my-cdn") from captured traffic, for
//! service-traceroute.
//!
//! The crate is **sans-IO**: bytes and time ([`std::time::Instant`]) go in, classifications
//! come out. It contains no sockets, reads no clock, does not capture packets and never
//! panics on untrusted bytes (every parser is exercised by fuzz targets and by the
//! deterministic `no_panic` unit tests).
//!
//! Four kinds of evidence tie a flow to a service:
//!
//! | evidence | module | how |
//! |---|---|---|
//! | DNS answers sniffed on the wire | [`dns`] | A/AAAA/CNAME of responses to this host, chains followed, TTLs honoured ([`DnsCache`]) |
//! | TLS ClientHello server name | [`tls`] | TCP stream and TLS record reassembly, SNI extension ([`ClientHelloAssembler`], [`sni_from_handshake`]) |
//! | QUIC Initial server name | [`quic`] | client Initial decryption (RFC 9001, RFC 9369), CRYPTO reassembly ([`decrypt_initial`], [`CryptoAssembler`]) |
//! | IP prefixes | [`signatures`] | longest-prefix match of the remote address |
//!
//! [`Signatures`] says which names and prefixes belong to which service; it is read from a
//! versioned TOML file ([`BUILTIN_SIGNATURES`] ships the services of the original Service
//! Traceroute tool). [`Detector`] ties everything together: feed it every captured IP packet
//! with [`Detector::handle_packet`]; it returns a flow as soon as its ClientHello names a
//! service, and [`Detector::lookup`] tells, for any flow, what DNS and the prefixes say.
//!
//! What the crate does not do: it does not decrypt beyond QUIC Initials (no TLS keys, no
//! ECH: an ECH ClientHello yields its outer, public name), does not reassemble IP fragments,
//! does not read DNS over TLS/HTTPS/QUIC, and does not decide *what to trace*: that is the
//! caller's policy (crates/core).
//!
//! Captures must carry whole payloads where the evidence is: DNS responses, the first data
//! segments of TCP flows (a ClientHello is 0.2-2 KiB, more with post-quantum key shares) and
//! QUIC client Initial datagrams (at least 1200 bytes, RFC 9000 §14.1). Packets cut by a short
//! snap length are handled safely but yield nothing beyond their headers
//! ([`DetectorStats::truncated`]).
//!
//! # Example
//!
//! ```
//! use std::net::IpAddr;
//! use std::time::Instant;
//! use svctr_detect::{Detector, DetectorConfig, FlowKey, Protocol, Signatures, Source};
//!
//! let sigs = Signatures::from_toml_str(
//!     r#"
//!     format = 1
//!     [[service]]
//!     name = "my-cdn"
//!     domains = ["cdn.example"]
//!     prefixes = ["203.0.113.0/24"]
//!     "#,
//!     "inline",
//! )
//! .unwrap();
//! assert_eq!(sigs.match_name("Video.CDN.example.").unwrap().name, "my-cdn");
//! assert!(sigs.match_name("badcdn.example").is_none());
//!
//! let mut det = Detector::new(sigs.clone(), DetectorConfig::default());
//! let me: IpAddr = "192.0.2.10".parse().unwrap();
//! let now = Instant::now();
//! // A captured IPv4/UDP packet: 198.51.100.53:53 -> 192.0.2.10:5353 carrying the DNS answer
//! // "video.cdn.example A 198.51.100.80, TTL 60".
//! let dns: &[u8] = &[
//!     0x12, 0x34, 0x81, 0x80, 0, 0, 0, 1, 0, 0, 0, 0, // header: response, 1 answer
//!     5, b'v', b'i', b'd', b'e', b'o', 3, b'c', b'd', b'n', 7, b'e', b'x', b'a', b'm', b'p',
//!     b'l', b'e', 0, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 51, 100, 80,
//! ];
//! let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 198, 51, 100, 53, 192, 0, 2, 10];
//! let total = (20 + 8 + dns.len()) as u16;
//! ip[2..4].copy_from_slice(&total.to_be_bytes());
//! ip.extend_from_slice(&53u16.to_be_bytes());
//! ip.extend_from_slice(&5353u16.to_be_bytes());
//! ip.extend_from_slice(&((8 + dns.len()) as u16).to_be_bytes());
//! ip.extend_from_slice(&[0, 0]);
//! ip.extend_from_slice(dns);
//! assert_eq!(det.handle_packet(now, &ip, &[me]), None); // DNS alone classifies no flow...
//!
//! // ...but every later flow to that address is known to belong to my-cdn.
//! let flow = FlowKey {
//!     protocol: Protocol::Tcp,
//!     local: "192.0.2.10:40000".parse().unwrap(),
//!     remote: "198.51.100.80:443".parse().unwrap(),
//! };
//! let m = det.lookup(now, &flow).unwrap();
//! assert_eq!((&*m.service, m.name.as_deref(), m.source), ("my-cdn", Some("video.cdn.example"), Source::Dns));
//!
//! // An address in the service's prefix needs no DNS at all.
//! let other = FlowKey { remote: "203.0.113.9:443".parse().unwrap(), ..flow };
//! assert_eq!(det.lookup(now, &other).unwrap().source, Source::Prefix);
//! ```

pub mod detector;
pub mod dns;
#[doc(hidden)]
pub mod fuzzing;
pub mod quic;
mod reassembly;
pub mod signatures;
pub mod tls;

#[cfg(test)]
mod no_panic;
#[cfg(test)]
mod testdata;

pub use detector::{Detector, DetectorConfig, DetectorStats, ServiceMatch, Source};
pub use dns::{DnsCache, DnsError};
pub use quic::{decrypt_initial, CryptoAssembler, InitialPacket, QuicError, QuicVersion};
pub use signatures::{
    Service, ServiceSpec, SignatureError, Signatures, BUILTIN_SIGNATURES, FORMAT_VERSION,
};
/// Flows are named as everywhere in service-traceroute (re-exported from `svctr-wire`).
pub use svctr_wire::flow::{FlowKey, Protocol};
pub use tls::{sni_from_handshake, ClientHelloAssembler, Progress, TlsError};
