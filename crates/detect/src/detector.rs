//! The sans-IO detector: captured IP packets and time in, "this flow belongs to that service"
//! out.
//!
//! What it does:
//! - feeds DNS responses addressed to this host (UDP source port 53; TCP source port 53 with
//!   the 2-byte length framing of RFC 1035 §4.2.2, reassembled in order per connection) into
//!   a [`DnsCache`];
//! - reassembles the first bytes of each TCP flow, in both directions (this host may be the
//!   client or the server; the SYN gives the initial sequence number), until a ClientHello is
//!   complete ([`ClientHelloAssembler`]);
//! - decrypts QUIC client Initials (UDP datagrams of at least 1200 bytes, the minimum for a
//!   client Initial, RFC 9000 §14.1, starting with a long header) and reassembles their CRYPTO
//!   frames across datagrams ([`CryptoAssembler`]);
//! - reports a flow when its ClientHello's SNI matches a service ([`Detector::handle_packet`]),
//!   and answers "what do DNS and the prefixes say about this flow" ([`Detector::lookup`]).
//!
//! What it does not do: no sockets, no clock (time is always an argument), no pcap, no
//! link layer (packets start at the IP header), no IP reassembly (fragments are skipped), no
//! TCP stream beyond the ClientHello.
//!
//! Bounds: at most `max_pending` flows are being reassembled at once (the oldest is evicted),
//! and a reassembly older than `pending_timeout` is abandoned by [`Detector::handle_timeout`].
//! Flows that were decided (matched, no SNI, not TLS, or a QUIC flow whose datagrams do not
//! decrypt) are remembered, bounded, so that they are not parsed again; a new SYN on the same
//! 4-tuple starts over.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etherparse::{LaxNetSlice, LaxSlicedPacket, TcpSlice, TransportSlice, UdpSlice};

use svctr_wire::flow::{FlowKey, Protocol};

use crate::dns::DnsCache;
use crate::quic::{decrypt_initial, CryptoAssembler};
use crate::signatures::Signatures;
use crate::tls::{ClientHelloAssembler, Progress};

/// How a flow was attributed to a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// A sniffed DNS answer resolved a matching name to the remote address.
    Dns,
    /// The TLS ClientHello's server name matched.
    TlsSni,
    /// The QUIC Initial's ClientHello server name matched.
    QuicSni,
    /// The remote address is in a service prefix.
    Prefix,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Dns => "dns",
            Source::TlsSni => "tls-sni",
            Source::QuicSni => "quic-sni",
            Source::Prefix => "prefix",
        })
    }
}

/// A flow's service and the evidence for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceMatch {
    /// The service's display name.
    pub service: Arc<str>,
    /// The domain or SNI that matched; None for [`Source::Prefix`].
    pub name: Option<String>,
    /// Where the evidence came from.
    pub source: Source,
}

/// What the detector looks at and how much it keeps.
#[derive(Debug, Clone)]
pub struct DetectorConfig {
    /// Learn from DNS responses (and use them in [`Detector::lookup`]).
    pub dns: bool,
    /// Read TLS ClientHellos on TCP.
    pub tls: bool,
    /// Decrypt QUIC client Initials on UDP.
    pub quic: bool,
    /// Use the services' IP prefixes in [`Detector::lookup`].
    pub prefixes: bool,
    /// Bound of the DNS cache ((address, name) entries).
    pub max_dns_addresses: usize,
    /// Flows reassembled at once; beyond it the oldest is evicted. A TCP flow holds at most
    /// about 50 KiB per direction while its ClientHello is incomplete (typically a few KiB),
    /// a QUIC flow at most 16 KiB.
    pub max_pending: usize,
    /// A reassembly not finished after this long is abandoned.
    pub pending_timeout: Duration,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            dns: true,
            tls: true,
            quic: true,
            prefixes: true,
            max_dns_addresses: 100_000,
            max_pending: 4096,
            pending_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters since the detector was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct DetectorStats {
    /// Packets handed to [`Detector::handle_packet`].
    pub packets: u64,
    /// Packets that are not IPv4/IPv6 with a TCP or UDP header.
    pub unparsed: u64,
    /// Packets neither from nor to a local address (ignored).
    pub foreign: u64,
    /// Packets whose transport payload was cut by the capture (skipped for DNS and QUIC).
    pub truncated: u64,
    /// DNS messages handed to the cache (UDP and TCP).
    pub dns_messages: u64,
    /// DNS messages that did not parse.
    pub dns_errors: u64,
    /// (address, name) entries learned or refreshed.
    pub dns_addresses: u64,
    /// Complete ClientHellos read from TCP.
    pub tls_hellos: u64,
    /// Complete ClientHellos on TCP that failed to parse (or had an invalid SNI).
    pub tls_errors: u64,
    /// TCP directions given up as not TLS.
    pub tls_not_tls: u64,
    /// QUIC client Initial packets decrypted.
    pub quic_initials: u64,
    /// Long-header datagrams that did not decrypt as a client Initial, and QUIC flows whose
    /// CRYPTO stream was not a usable ClientHello.
    pub quic_errors: u64,
    /// Complete ClientHellos read from QUIC.
    pub quic_hellos: u64,
    /// ClientHellos (TLS or QUIC) whose SNI matched a service.
    pub sni_matched: u64,
    /// ClientHellos whose SNI matched no service.
    pub sni_unmatched: u64,
    /// ClientHellos without (valid) SNI.
    pub sni_absent: u64,
    /// Reassemblies evicted because `max_pending` was reached.
    pub pending_evicted: u64,
    /// Reassemblies abandoned after `pending_timeout`.
    pub pending_timeouts: u64,
    /// Reassemblies in progress now.
    pub pending_now: u64,
}

/// Direction of a packet relative to this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Out = 0,
    In = 1,
}

#[derive(Debug)]
enum Kind {
    Tcp {
        /// Per direction (index `Dir as usize`): the assembler, and whether it gave up.
        asm: [Option<Box<ClientHelloAssembler>>; 2],
        dead: [bool; 2],
    },
    Quic {
        client: Dir,
        original_dcid: Vec<u8>,
        crypto: CryptoAssembler,
    },
    /// UDP long-header datagrams that did not decrypt yet.
    QuicFailures(u8),
}

#[derive(Debug)]
struct Pending {
    id: u64,
    created: Instant,
    kind: Kind,
}

/// An in-order DNS-over-TCP stream from a server.
#[derive(Debug)]
struct DnsStream {
    next_seq: Option<u32>,
    buf: Vec<u8>,
    last: Instant,
}

/// What `handle_packet` learned from the IP header.
#[derive(Debug, Clone, Copy)]
struct Meta {
    now: Instant,
    src: IpAddr,
    dst: IpAddr,
    dir: Dir,
    /// The destination is a local address.
    to_me: bool,
    /// The capture cut the IP payload.
    truncated: bool,
}

/// Failed decryption attempts before a UDP flow is considered not QUIC.
const MAX_QUIC_FAILURES: u8 = 3;
/// DNS-over-TCP connections followed at once.
const MAX_DNS_STREAMS: usize = 256;
/// Minimum UDP payload of a datagram carrying a client Initial (RFC 9000 §14.1).
const MIN_CLIENT_INITIAL_DATAGRAM: usize = 1200;

/// Recognises which flows belong to which service, from captured packets.
///
/// The detector is sans-IO and deterministic. Its methods come in three groups:
///
/// - inputs: [`Detector::handle_packet`] for every captured IP packet (in capture order) and
///   [`Detector::handle_timeout`] when [`Detector::next_timeout`] is reached;
/// - queries: [`Detector::lookup`] (cheap: a couple of hash lookups) for each packet of a flow
///   not classified yet, [`Detector::stats`], [`Detector::dns`], [`Detector::signatures`];
/// - configuration: [`Detector::new`], [`Detector::set_signatures`].
///
/// `now` must not go backwards between calls (use the capture timestamps converted to a
/// monotonic [`Instant`]).
#[derive(Debug)]
pub struct Detector {
    sigs: Signatures,
    cfg: DetectorConfig,
    dns: DnsCache,
    stats: DetectorStats,
    pending: HashMap<FlowKey, Pending>,
    /// Creation order of `pending` (id -> tuple): the first is the oldest.
    order: BTreeMap<u64, FlowKey>,
    next_id: u64,
    /// Decided flows -> last packet seen.
    finished: HashMap<FlowKey, Instant>,
    dns_streams: HashMap<FlowKey, DnsStream>,
    next_sweep: Option<Instant>,
}

impl Detector {
    /// A detector for `signatures` with `cfg`.
    pub fn new(signatures: Signatures, cfg: DetectorConfig) -> Detector {
        Detector {
            sigs: signatures,
            dns: DnsCache::new(cfg.max_dns_addresses),
            cfg,
            stats: DetectorStats::default(),
            pending: HashMap::new(),
            order: BTreeMap::new(),
            next_id: 0,
            finished: HashMap::new(),
            dns_streams: HashMap::new(),
            next_sweep: None,
        }
    }

    /// The signature set in use.
    pub fn signatures(&self) -> &Signatures {
        &self.sigs
    }

    /// Replaces the signature set (e.g. after a reload); learned DNS data is kept.
    pub fn set_signatures(&mut self, signatures: Signatures) {
        self.sigs = signatures;
    }

    /// The configuration.
    pub fn config(&self) -> &DetectorConfig {
        &self.cfg
    }

    /// One captured IP packet (IPv4 or IPv6, link layer already stripped; may be truncated by
    /// the snap length: whatever needs the missing bytes is skipped). `local`: this host's
    /// addresses; a packet is outgoing if its source is local, incoming if its destination
    /// is, and ignored otherwise.
    ///
    /// Returns `Some` when this packet completes a ClientHello (TLS or QUIC) whose SNI matches
    /// a service; the tuple is from this host's point of view. A ClientHello whose SNI matches
    /// nothing is only counted ([`DetectorStats::sni_unmatched`]).
    pub fn handle_packet(
        &mut self,
        now: Instant,
        ip: &[u8],
        local: &[IpAddr],
    ) -> Option<(FlowKey, ServiceMatch)> {
        self.stats.packets += 1;
        let Ok(pkt) = LaxSlicedPacket::from_ip(ip) else {
            self.stats.unparsed += 1;
            return None;
        };
        let (src, dst) = match &pkt.net {
            Some(LaxNetSlice::Ipv4(v4)) => (
                IpAddr::V4(v4.header().source_addr()),
                IpAddr::V4(v4.header().destination_addr()),
            ),
            Some(LaxNetSlice::Ipv6(v6)) => (
                IpAddr::V6(v6.header().source_addr()),
                IpAddr::V6(v6.header().destination_addr()),
            ),
            _ => {
                self.stats.unparsed += 1;
                return None;
            }
        };
        let truncated = pkt
            .net
            .as_ref()
            .and_then(|n| n.ip_payload_ref())
            .is_some_and(|p| p.incomplete);
        let dir = if local.contains(&src) {
            Dir::Out
        } else if local.contains(&dst) {
            Dir::In
        } else {
            self.stats.foreign += 1;
            return None;
        };
        // DNS responses count when they are addressed to this host, whatever the source (a
        // local stub resolver answers from a local address too).
        let meta = Meta {
            now,
            src,
            dst,
            dir,
            to_me: local.contains(&dst),
            truncated,
        };
        match &pkt.transport {
            Some(TransportSlice::Udp(udp)) => self.handle_udp(&meta, udp),
            Some(TransportSlice::Tcp(tcp)) => self.handle_tcp(&meta, tcp),
            _ => {
                self.stats.unparsed += 1;
                None
            }
        }
    }

    /// What DNS answers and prefixes say about a flow now: the first name (in chain order)
    /// of `names_of(remote ip)` that matches a service, else the prefix of the remote
    /// address. DNS is preferred over a prefix.
    pub fn lookup(&self, now: Instant, flow: &FlowKey) -> Option<ServiceMatch> {
        let ip = flow.remote.ip().to_canonical();
        if self.cfg.dns {
            let mut service = None;
            let name = self.dns.for_each_name(now, ip, |name| {
                service = self.sigs.match_name(name).map(|s| s.shared_name().clone());
                service.is_some()
            });
            if let (Some(name), Some(service)) = (name, service) {
                return Some(ServiceMatch {
                    service,
                    name: Some(name.to_string()),
                    source: Source::Dns,
                });
            }
        }
        if self.cfg.prefixes {
            if let Some(s) = self.sigs.match_addr(ip) {
                return Some(ServiceMatch {
                    service: s.shared_name().clone(),
                    name: None,
                    source: Source::Prefix,
                });
            }
        }
        None
    }

    /// Expires DNS entries and abandons reassemblies older than `pending_timeout`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.dns.expire(now);
        let timeout = self.cfg.pending_timeout;
        while let Some((&id, &tuple)) = self.order.first_key_value() {
            let expired = self
                .pending
                .get(&tuple)
                .is_none_or(|p| p.created + timeout <= now || p.id != id);
            if !expired {
                break;
            }
            self.order.remove(&id);
            if self.pending.get(&tuple).is_some_and(|p| p.id == id) {
                self.pending.remove(&tuple);
                self.stats.pending_timeouts += 1;
            }
        }
        if self.next_sweep.is_none_or(|t| t <= now) {
            let idle = self.finished_idle();
            self.finished.retain(|_, last| *last + idle > now);
            self.dns_streams.retain(|_, s| s.last + timeout > now);
            self.next_sweep = if self.finished.is_empty() && self.dns_streams.is_empty() {
                None
            } else {
                Some(now + timeout)
            };
        }
    }

    /// When [`Detector::handle_timeout`] next has work to do (coarse: the next DNS expiry, the
    /// oldest reassembly's deadline, or the next sweep of remembered flows).
    pub fn next_timeout(&self) -> Option<Instant> {
        let oldest = self
            .order
            .first_key_value()
            .and_then(|(_, t)| self.pending.get(t))
            .map(|p| p.created + self.cfg.pending_timeout);
        [self.dns.next_expiry(), oldest, self.next_sweep]
            .into_iter()
            .flatten()
            .min()
    }

    /// The counters.
    pub fn stats(&self) -> DetectorStats {
        let mut s = self.stats;
        s.pending_now = self.pending.len() as u64;
        s
    }

    /// The DNS cache.
    pub fn dns(&self) -> &DnsCache {
        &self.dns
    }

    // ---- internals ---------------------------------------------------------------------

    fn finished_idle(&self) -> Duration {
        self.cfg.pending_timeout.max(Duration::from_secs(60))
    }

    fn tuple(protocol: Protocol, src: SocketAddr, dst: SocketAddr, dir: Dir) -> FlowKey {
        match dir {
            Dir::Out => FlowKey {
                protocol,
                local: src,
                remote: dst,
            },
            Dir::In => FlowKey {
                protocol,
                local: dst,
                remote: src,
            },
        }
    }

    fn handle_udp(&mut self, m: &Meta, udp: &UdpSlice<'_>) -> Option<(FlowKey, ServiceMatch)> {
        let Meta {
            now,
            src,
            dst,
            dir,
            to_me,
            truncated: ip_truncated,
        } = *m;
        let payload = udp.payload();
        let cut = ip_truncated || usize::from(udp.length()).saturating_sub(8) > payload.len();
        if udp.source_port() == 53 && to_me {
            if self.cfg.dns {
                if cut {
                    self.stats.truncated += 1;
                } else {
                    self.dns_message(now, payload);
                }
            }
            return None;
        }
        if udp.destination_port() == 53 || !self.cfg.quic {
            return None;
        }
        // RFC 9000 §17.2: long header form and fixed bit.
        if payload.first().is_none_or(|&b| b & 0xc0 != 0xc0) {
            return None;
        }
        if payload.len() < MIN_CLIENT_INITIAL_DATAGRAM {
            if cut {
                self.stats.truncated += 1;
            }
            return None;
        }
        let tuple = Self::tuple(
            Protocol::Udp,
            SocketAddr::new(src, udp.source_port()),
            SocketAddr::new(dst, udp.destination_port()),
            dir,
        );
        if let Some(last) = self.finished.get_mut(&tuple) {
            *last = now;
            return None;
        }
        if cut {
            self.stats.truncated += 1;
            return None;
        }
        let mut new_flow_dcid = None;
        let progress = match self.pending.get_mut(&tuple).map(|p| &mut p.kind) {
            Some(Kind::Quic {
                client,
                original_dcid,
                crypto,
            }) => {
                if *client != dir {
                    return None; // the server's Initials are not decryptable by an observer
                }
                match decrypt_initial(payload, Some(original_dcid)) {
                    Ok(pkts) => {
                        self.stats.quic_initials += pkts.len() as u64;
                        let mut p = Progress::NeedMore;
                        for pkt in &pkts {
                            p = crypto.push_packet(pkt);
                            if p != Progress::NeedMore {
                                break;
                            }
                        }
                        p
                    }
                    Err(_) => {
                        self.stats.quic_errors += 1;
                        return None;
                    }
                }
            }
            other => {
                let failures = match other {
                    Some(Kind::QuicFailures(n)) => *n,
                    _ => 0,
                };
                match decrypt_initial(payload, None) {
                    Ok(pkts) => {
                        self.stats.quic_initials += pkts.len() as u64;
                        let mut crypto = CryptoAssembler::new();
                        let mut p = Progress::NeedMore;
                        for pkt in &pkts {
                            p = crypto.push_packet(pkt);
                            if p != Progress::NeedMore {
                                break;
                            }
                        }
                        if p == Progress::NeedMore {
                            new_flow_dcid = Some((pkts[0].dcid.clone(), crypto));
                        }
                        p
                    }
                    Err(_) => {
                        self.stats.quic_errors += 1;
                        if failures + 1 >= MAX_QUIC_FAILURES {
                            self.finish(now, tuple);
                        } else {
                            self.set_pending(now, tuple, Kind::QuicFailures(failures + 1));
                        }
                        return None;
                    }
                }
            }
        };
        if let Some((original_dcid, crypto)) = new_flow_dcid {
            self.set_pending(
                now,
                tuple,
                Kind::Quic {
                    client: dir,
                    original_dcid,
                    crypto,
                },
            );
            return None;
        }
        match progress {
            Progress::NeedMore => None,
            Progress::NotTls => {
                // the CRYPTO stream is not a usable ClientHello
                self.stats.quic_errors += 1;
                self.finish(now, tuple);
                None
            }
            Progress::Done(sni) => {
                self.stats.quic_hellos += 1;
                self.finish(now, tuple);
                self.classify(tuple, sni, Source::QuicSni)
            }
        }
    }

    fn handle_tcp(&mut self, m: &Meta, tcp: &TcpSlice<'_>) -> Option<(FlowKey, ServiceMatch)> {
        let Meta {
            now,
            src,
            dst,
            dir,
            to_me,
            ..
        } = *m;
        let tuple = Self::tuple(
            Protocol::Tcp,
            SocketAddr::new(src, tcp.source_port()),
            SocketAddr::new(dst, tcp.destination_port()),
            dir,
        );
        if tcp.source_port() == 53 || tcp.destination_port() == 53 {
            if self.cfg.dns && tcp.source_port() == 53 && to_me {
                self.dns_tcp(now, tuple, tcp);
            }
            return None;
        }
        if !self.cfg.tls {
            return None;
        }
        let payload = tcp.payload();
        let syn = tcp.syn();
        if tcp.rst() {
            self.drop_pending(&tuple);
            return None;
        }
        if let Some(last) = self.finished.get_mut(&tuple) {
            if syn && !tcp.ack() {
                // a new connection reusing the 4-tuple
                self.finished.remove(&tuple);
            } else {
                *last = now;
                return None;
            }
        }
        if payload.is_empty() && !syn {
            return None;
        }
        let d = dir as usize;
        let seq = tcp.sequence_number();
        if !self.pending.contains_key(&tuple) {
            self.set_pending(
                now,
                tuple,
                Kind::Tcp {
                    asm: [None, None],
                    dead: [false, false],
                },
            );
        }
        let Some(Pending {
            kind: Kind::Tcp { asm, dead },
            ..
        }) = self.pending.get_mut(&tuple)
        else {
            return None;
        };
        // A SYN consumes one sequence number: data starts at seq + 1 (also for data carried
        // in the SYN itself, TCP Fast Open, RFC 7413).
        let data_seq = if syn {
            if asm[d].is_none() {
                asm[d] = Some(Box::new(ClientHelloAssembler::new(Some(
                    seq.wrapping_add(1),
                ))));
            }
            seq.wrapping_add(1)
        } else {
            seq
        };
        if payload.is_empty() || dead[d] {
            return None;
        }
        let a = asm[d].get_or_insert_with(|| Box::new(ClientHelloAssembler::new(None)));
        match a.push(data_seq, payload) {
            Progress::NeedMore => None,
            Progress::NotTls => {
                if a.error().is_some() {
                    self.stats.tls_hellos += 1;
                    self.stats.tls_errors += 1;
                    self.stats.sni_absent += 1;
                    self.finish(now, tuple);
                    return None;
                }
                self.stats.tls_not_tls += 1;
                asm[d] = None;
                dead[d] = true;
                if dead[0] && dead[1] {
                    self.finish(now, tuple);
                }
                None
            }
            Progress::Done(sni) => {
                self.stats.tls_hellos += 1;
                self.finish(now, tuple);
                self.classify(tuple, sni, Source::TlsSni)
            }
        }
    }

    fn classify(
        &mut self,
        tuple: FlowKey,
        sni: Option<String>,
        source: Source,
    ) -> Option<(FlowKey, ServiceMatch)> {
        let Some(sni) = sni else {
            self.stats.sni_absent += 1;
            return None;
        };
        match self.sigs.match_name(&sni) {
            Some(s) => {
                self.stats.sni_matched += 1;
                Some((
                    tuple,
                    ServiceMatch {
                        service: s.shared_name().clone(),
                        name: Some(sni),
                        source,
                    },
                ))
            }
            None => {
                self.stats.sni_unmatched += 1;
                None
            }
        }
    }

    fn dns_message(&mut self, now: Instant, msg: &[u8]) {
        self.stats.dns_messages += 1;
        match self.dns.handle_message(now, msg) {
            Ok(n) => self.stats.dns_addresses += n as u64,
            Err(_) => self.stats.dns_errors += 1,
        }
    }

    /// DNS over TCP (RFC 1035 §4.2.2, RFC 7766): messages prefixed by a 2-byte length. Only
    /// in-order data is used; a gap drops the connection's buffer (the framing is lost).
    fn dns_tcp(&mut self, now: Instant, tuple: FlowKey, tcp: &TcpSlice<'_>) {
        let seq = tcp.sequence_number();
        if tcp.rst() || tcp.fin() && tcp.payload().is_empty() {
            self.dns_streams.remove(&tuple);
            return;
        }
        if tcp.syn() {
            if self.dns_streams.len() >= MAX_DNS_STREAMS && !self.dns_streams.contains_key(&tuple) {
                self.evict_dns_stream();
            }
            self.dns_streams.insert(
                tuple,
                DnsStream {
                    next_seq: Some(seq.wrapping_add(1)),
                    buf: Vec::new(),
                    last: now,
                },
            );
            return;
        }
        let payload = tcp.payload();
        if payload.is_empty() {
            return;
        }
        if !self.dns_streams.contains_key(&tuple) {
            if self.dns_streams.len() >= MAX_DNS_STREAMS {
                self.evict_dns_stream();
            }
            // Joined without the SYN: assume the segment starts a message.
            self.dns_streams.insert(
                tuple,
                DnsStream {
                    next_seq: None,
                    buf: Vec::new(),
                    last: now,
                },
            );
        }
        let mut messages = Vec::new();
        let mut drop = false;
        if let Some(s) = self.dns_streams.get_mut(&tuple) {
            s.last = now;
            let next = s.next_seq.unwrap_or(seq);
            let off = seq.wrapping_sub(next) as i32;
            if off > 0 {
                drop = true;
            } else {
                let skip = off.unsigned_abs() as usize;
                if skip < payload.len() {
                    s.buf.extend_from_slice(&payload[skip..]);
                    s.next_seq = Some(next.wrapping_add((payload.len() - skip) as u32));
                }
                while s.buf.len() >= 2 {
                    let n = usize::from(u16::from_be_bytes([s.buf[0], s.buf[1]]));
                    if s.buf.len() < 2 + n {
                        break;
                    }
                    messages.push(s.buf[2..2 + n].to_vec());
                    s.buf.drain(..2 + n);
                }
            }
        }
        if drop || tcp.fin() {
            self.dns_streams.remove(&tuple);
        }
        for m in messages {
            self.dns_message(now, &m);
        }
    }

    fn evict_dns_stream(&mut self) {
        if let Some(oldest) = self
            .dns_streams
            .iter()
            .min_by_key(|(_, s)| s.last)
            .map(|(t, _)| *t)
        {
            self.dns_streams.remove(&oldest);
        }
    }

    /// Inserts or replaces the pending state of `tuple` (keeping its age when it exists).
    fn set_pending(&mut self, now: Instant, tuple: FlowKey, kind: Kind) {
        if let Some(p) = self.pending.get_mut(&tuple) {
            p.kind = kind;
            return;
        }
        while self.pending.len() >= self.cfg.max_pending.max(1) {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if self.pending.remove(&oldest).is_some() {
                self.stats.pending_evicted += 1;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.order.insert(id, tuple);
        self.pending.insert(
            tuple,
            Pending {
                id,
                created: now,
                kind,
            },
        );
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + self.cfg.pending_timeout);
        }
    }

    fn drop_pending(&mut self, tuple: &FlowKey) {
        if let Some(p) = self.pending.remove(tuple) {
            self.order.remove(&p.id);
        }
    }

    /// The flow is decided: release its reassembly and remember it (bounded).
    fn finish(&mut self, now: Instant, tuple: FlowKey) {
        self.drop_pending(&tuple);
        let cap = self.cfg.max_pending.max(1).saturating_mul(4);
        if self.finished.len() >= cap {
            let idle = self.finished_idle();
            self.finished.retain(|_, last| *last + idle > now);
            if self.finished.len() >= cap {
                // Still full of active flows: forget the least recently seen half. A forgotten
                // flow is at worst looked at again (mid-stream data is not a ClientHello).
                let mut lasts: Vec<Instant> = self.finished.values().copied().collect();
                lasts.sort_unstable();
                let median = lasts[lasts.len() / 2];
                self.finished.retain(|_, last| *last > median);
            }
        }
        self.finished.insert(tuple, now);
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + self.cfg.pending_timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quic::build::{crypto_frame, initial};
    use crate::quic::QuicVersion;
    use crate::testdata::{
        client_hello, record, tcp4, tcp6, udp4, udp6, CH_LARGE, CH_OPENSSL, RFC9001_CLIENT_INITIAL,
        RFC9001_SERVER_INITIAL, RFC9369_CLIENT_INITIAL, RFC_DCID,
    };

    const ME4: [u8; 4] = [192, 0, 2, 10];
    const PEER4: [u8; 4] = [198, 51, 100, 20];
    const ME6: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    const PEER6: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20,
    ];

    fn local() -> Vec<IpAddr> {
        vec![IpAddr::from(ME4), IpAddr::from(ME6)]
    }

    fn sigs() -> Signatures {
        Signatures::from_toml_str(
            r#"format = 1
[[service]]
name = "YouTube"
domains = ["googlevideo.com", "youtube.com"]
[[service]]
name = "Example"
domains = ["example.test", "example.com"]
[[service]]
name = "Netflix"
prefixes = ["198.51.100.0/24", "2001:db8::20/128"]
"#,
            "test",
        )
        .unwrap()
    }

    fn det() -> Detector {
        Detector::new(sigs(), DetectorConfig::default())
    }

    fn out_tuple(t: Protocol, lport: u16, rport: u16) -> FlowKey {
        FlowKey {
            protocol: t,
            local: SocketAddr::new(IpAddr::from(ME4), lport),
            remote: SocketAddr::new(IpAddr::from(PEER4), rport),
        }
    }

    fn sni_match(service: &str, name: &str, source: Source) -> ServiceMatch {
        ServiceMatch {
            service: Arc::from(service),
            name: Some(name.to_string()),
            source,
        }
    }

    #[test]
    fn tls_client_split_out_of_order_with_retransmission() {
        let mut d = det();
        let t0 = Instant::now();
        let rec = record(&client_hello("r4---sn-abc.googlevideo.com", 600));
        let isn = 0xffff_fff0; // the data wraps the sequence space
        assert_eq!(
            d.handle_packet(t0, &tcp4(ME4, PEER4, 40000, 443, isn, "S", b""), &local()),
            None
        );
        assert_eq!(
            d.handle_packet(t0, &tcp4(PEER4, ME4, 443, 40000, 7, "SA", b""), &local()),
            None
        );
        let s = |o: usize| isn.wrapping_add(1 + o as u32);
        let (a, b, c) = (&rec[..100], &rec[100..700], &rec[700..]);
        let pkts = [
            tcp4(ME4, PEER4, 40000, 443, s(700), "A", c),
            tcp4(ME4, PEER4, 40000, 443, s(0), "A", a),
            tcp4(ME4, PEER4, 40000, 443, s(0), "A", a), // duplicate
            tcp4(ME4, PEER4, 40000, 443, s(50), "A", &rec[50..400]), // overlapping
        ];
        for p in &pkts {
            assert_eq!(d.handle_packet(t0, p, &local()), None);
        }
        let got = d.handle_packet(t0, &tcp4(ME4, PEER4, 40000, 443, s(100), "A", b), &local());
        assert_eq!(
            got,
            Some((
                out_tuple(Protocol::Tcp, 40000, 443),
                sni_match("YouTube", "r4---sn-abc.googlevideo.com", Source::TlsSni)
            ))
        );
        // not re-parsed: a retransmission of the whole ClientHello yields nothing
        assert_eq!(
            d.handle_packet(t0, &tcp4(ME4, PEER4, 40000, 443, s(0), "A", &rec), &local()),
            None
        );
        let st = d.stats();
        assert_eq!((st.tls_hellos, st.sni_matched, st.pending_now), (1, 1, 0));
    }

    #[test]
    fn tls_real_capture_without_syn_and_as_server() {
        let mut d = det();
        let t0 = Instant::now();
        // joined mid-handshake (no SYN): the first segment carries the record header
        let (a, b) = CH_OPENSSL.split_at(200);
        assert_eq!(
            d.handle_packet(
                t0,
                &tcp4(ME4, PEER4, 40001, 4433, 5000 + 200, "A", b),
                &local()
            ),
            None
        );
        let got = d.handle_packet(t0, &tcp4(ME4, PEER4, 40001, 4433, 5000, "A", a), &local());
        assert_eq!(
            got.unwrap().1,
            sni_match("Example", "video.example.test", Source::TlsSni)
        );
        // this host is the server: the ClientHello comes in, the tuple is still ours
        let got = d.handle_packet(
            t0,
            &tcp4(PEER4, ME4, 51000, 443, 1, "A", CH_OPENSSL),
            &local(),
        );
        assert_eq!(
            got.map(|g| g.0),
            Some(FlowKey {
                protocol: Protocol::Tcp,
                local: "192.0.2.10:443".parse().unwrap(),
                remote: "198.51.100.20:51000".parse().unwrap(),
            })
        );
    }

    #[test]
    fn tls_ipv6_large_hello_over_mss_segments() {
        let mut d = det();
        let t0 = Instant::now();
        assert_eq!(
            d.handle_packet(t0, &tcp6(ME6, PEER6, 40002, 443, 99, "S", b""), &local()),
            None
        );
        let segs: Vec<&[u8]> = CH_LARGE.chunks(1440).collect();
        assert_eq!(segs.len(), 2);
        assert_eq!(
            d.handle_packet(
                t0,
                &tcp6(ME6, PEER6, 40002, 443, 100, "", segs[0]),
                &local()
            ),
            None
        );
        let got = d.handle_packet(
            t0,
            &tcp6(ME6, PEER6, 40002, 443, 1540, "", segs[1]),
            &local(),
        );
        let (t, m) = got.unwrap();
        assert_eq!(t.remote, "[2001:db8::20]:443".parse().unwrap());
        assert_eq!(m, sni_match("Example", "big.example.test", Source::TlsSni));
    }

    #[test]
    fn tls_unmatched_absent_and_not_tls() {
        let mut d = det();
        let t0 = Instant::now();
        let p = tcp4(
            ME4,
            PEER4,
            40003,
            443,
            1,
            "A",
            &record(&client_hello("www.other.test", 0)),
        );
        assert_eq!(d.handle_packet(t0, &p, &local()), None);
        assert_eq!(d.stats().sni_unmatched, 1);
        // ClientHello without SNI
        let p = tcp4(ME4, PEER4, 40004, 443, 1, "A", crate::testdata::CH_NO_SNI);
        assert_eq!(d.handle_packet(t0, &p, &local()), None);
        assert_eq!(d.stats().sni_absent, 1);
        // HTTP both ways, SYNs seen: both directions die, the flow is finished
        d.handle_packet(t0, &tcp4(ME4, PEER4, 40005, 80, 10, "S", b""), &local());
        d.handle_packet(t0, &tcp4(PEER4, ME4, 80, 40005, 20, "SA", b""), &local());
        d.handle_packet(
            t0,
            &tcp4(ME4, PEER4, 40005, 80, 11, "A", b"GET / HTTP/1.1\r\n\r\n"),
            &local(),
        );
        assert_eq!(d.stats().pending_now, 1);
        d.handle_packet(
            t0,
            &tcp4(PEER4, ME4, 80, 40005, 21, "A", b"HTTP/1.1 200 OK\r\n\r\n"),
            &local(),
        );
        assert_eq!(d.stats().pending_now, 0);
        assert_eq!(d.stats().tls_not_tls, 2);
        // later data is not looked at, not even a ClientHello-looking one
        let p = tcp4(
            ME4,
            PEER4,
            40005,
            80,
            29,
            "A",
            &record(&client_hello("www.youtube.com", 0)),
        );
        assert_eq!(d.handle_packet(t0, &p, &local()), None);
        assert_eq!(d.stats().tls_hellos, 2);
        // a new connection on the same 4-tuple (SYN) is looked at again
        d.handle_packet(t0, &tcp4(ME4, PEER4, 40005, 80, 1000, "S", b""), &local());
        let p = tcp4(
            ME4,
            PEER4,
            40005,
            80,
            1001,
            "A",
            &record(&client_hello("www.youtube.com", 0)),
        );
        assert_eq!(
            d.handle_packet(t0, &p, &local())
                .unwrap()
                .1
                .service
                .as_ref(),
            "YouTube"
        );
        // foreign packets and a disabled TLS path
        let p = tcp4(PEER4, [203, 0, 113, 1], 1, 443, 1, "A", CH_OPENSSL);
        assert_eq!(d.handle_packet(t0, &p, &local()), None);
        assert_eq!(d.stats().foreign, 1);
        let mut off = Detector::new(
            sigs(),
            DetectorConfig {
                tls: false,
                ..Default::default()
            },
        );
        let p = tcp4(ME4, PEER4, 40006, 443, 1, "A", CH_OPENSSL);
        assert_eq!(off.handle_packet(t0, &p, &local()), None);
    }

    #[test]
    fn tls_rst_drops_reassembly_and_malformed_counts() {
        let mut d = det();
        let t0 = Instant::now();
        d.handle_packet(
            t0,
            &tcp4(ME4, PEER4, 40010, 443, 1, "A", &CH_OPENSSL[..100]),
            &local(),
        );
        assert_eq!(d.stats().pending_now, 1);
        d.handle_packet(t0, &tcp4(PEER4, ME4, 443, 40010, 1, "R", b""), &local());
        assert_eq!(d.stats().pending_now, 0);
        let mut bad = CH_OPENSSL.to_vec();
        bad[9] = 1; // legacy_version 0x0103
        d.handle_packet(t0, &tcp4(ME4, PEER4, 40011, 443, 1, "A", &bad), &local());
        let st = d.stats();
        assert_eq!((st.tls_hellos, st.tls_errors, st.pending_now), (1, 1, 0));
    }

    #[test]
    fn quic_rfc_initials() {
        for (dgram, v) in [(RFC9001_CLIENT_INITIAL, 1), (RFC9369_CLIENT_INITIAL, 2)] {
            let mut d = det();
            let t0 = Instant::now();
            let got = d.handle_packet(t0, &udp4(ME4, PEER4, 50000, 443, dgram), &local());
            assert_eq!(
                got,
                Some((
                    out_tuple(Protocol::Udp, 50000, 443),
                    sni_match("Example", "example.com", Source::QuicSni)
                )),
                "v{v}"
            );
            let st = d.stats();
            assert_eq!(
                (st.quic_initials, st.quic_hellos, st.sni_matched),
                (1, 1, 1)
            );
            // the flow is finished: the same datagram again is not decrypted
            assert_eq!(
                d.handle_packet(t0, &udp4(ME4, PEER4, 50000, 443, dgram), &local()),
                None
            );
            assert_eq!(d.stats().quic_initials, 1);
        }
    }

    #[test]
    fn quic_hello_over_two_datagrams_with_server_reply() {
        let mut d = det();
        let t0 = Instant::now();
        let dcid = [7u8; 8];
        let ch = client_hello("rr1---sn-q4fl6n6s.googlevideo.com", 1500);
        let half = ch.len() / 2;
        let p1 = initial(
            QuicVersion::V1,
            &dcid,
            &dcid,
            b"cli",
            b"",
            0,
            &crypto_frame(half as u64, &ch[half..]),
            1200,
        );
        // the server's Initial (from the RFC, any bytes would do): ignored, not an error once
        // the client side is known
        let srv = {
            let mut s = RFC9001_SERVER_INITIAL.to_vec();
            s.resize(1200, 0);
            s
        };
        // the client's second Initial goes to the server-chosen CID, keys from the original
        let p2 = initial(
            QuicVersion::V1,
            &dcid,
            &[9; 4],
            b"cli",
            b"",
            1,
            &crypto_frame(0, &ch[..half]),
            1200,
        );
        assert_eq!(
            d.handle_packet(t0, &udp4(ME4, PEER4, 50001, 443, &p1), &local()),
            None
        );
        assert_eq!(d.stats().pending_now, 1);
        assert_eq!(
            d.handle_packet(t0, &udp4(PEER4, ME4, 443, 50001, &srv), &local()),
            None
        );
        assert_eq!(d.stats().quic_errors, 0);
        let got = d.handle_packet(t0, &udp4(ME4, PEER4, 50001, 443, &p2), &local());
        assert_eq!(
            got.unwrap().1,
            sni_match(
                "YouTube",
                "rr1---sn-q4fl6n6s.googlevideo.com",
                Source::QuicSni
            )
        );
        assert_eq!(d.stats().quic_initials, 2);
    }

    #[test]
    fn quic_ipv6_v2_as_server_and_non_quic_udp() {
        let mut d = det();
        let t0 = Instant::now();
        let p = initial(
            QuicVersion::V2,
            &[1; 8],
            &[1; 8],
            b"",
            b"",
            0,
            &crypto_frame(0, &client_hello("m.youtube.com", 0)),
            1250,
        );
        let got = d.handle_packet(t0, &udp6(PEER6, ME6, 50002, 443, &p), &local());
        let (t, m) = got.unwrap();
        assert_eq!(t.local, "[2001:db8::10]:443".parse().unwrap());
        assert_eq!(m.service.as_ref(), "YouTube");
        // a UDP flow with long-header-looking datagrams that never decrypt: given up after 3
        let junk = [0xc3u8; 1300];
        for _ in 0..10 {
            assert_eq!(
                d.handle_packet(t0, &udp4(ME4, PEER4, 50003, 9000, &junk), &local()),
                None
            );
        }
        assert_eq!(d.stats().quic_errors, 3);
        // short datagrams are not even tried (client Initials are >= 1200 bytes)
        assert_eq!(
            d.handle_packet(
                t0,
                &udp4(ME4, PEER4, 50004, 443, &RFC9001_CLIENT_INITIAL[..1199]),
                &local()
            ),
            None
        );
        assert_eq!(d.stats().quic_errors, 3);
        // a capture truncated by the snap length is skipped
        let full = udp4(ME4, PEER4, 50005, 443, RFC9001_CLIENT_INITIAL);
        assert_eq!(d.handle_packet(t0, &full[..384], &local()), None);
        assert_eq!(d.stats().truncated, 1);
        // QUIC disabled
        let mut off = Detector::new(
            sigs(),
            DetectorConfig {
                quic: false,
                ..Default::default()
            },
        );
        assert_eq!(off.handle_packet(t0, &full, &local()), None);
    }

    fn dns_response(answers: &[(&str, u32, [u8; 4])], cnames: &[(&str, &str)]) -> Vec<u8> {
        use hickory_proto::op::{Message, OpCode};
        use hickory_proto::rr::rdata::{A, CNAME};
        use hickory_proto::rr::{Name, RData, Record};
        use std::str::FromStr;
        let mut m = Message::response(9, OpCode::Query);
        for (from, to) in cnames {
            m.add_answer(Record::from_rdata(
                Name::from_str(from).unwrap(),
                300,
                RData::CNAME(CNAME(Name::from_str(to).unwrap())),
            ));
        }
        for (owner, ttl, ip) in answers {
            m.add_answer(Record::from_rdata(
                Name::from_str(owner).unwrap(),
                *ttl,
                RData::A(A::from(std::net::Ipv4Addr::from(*ip))),
            ));
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn dns_udp_lookup_and_prefix() {
        let mut d = det();
        let t0 = Instant::now();
        let resolver = [192, 0, 2, 53];
        let msg = dns_response(
            &[("edge.cdn.test", 60, [203, 0, 113, 7])],
            &[("www.youtube.com", "edge.cdn.test")],
        );
        assert_eq!(
            d.handle_packet(t0, &udp4(resolver, ME4, 53, 33333, &msg), &local()),
            None
        );
        assert_eq!(d.stats().dns_addresses, 1);
        let flow = FlowKey {
            remote: "203.0.113.7:443".parse().unwrap(),
            ..out_tuple(Protocol::Tcp, 1, 443)
        };
        assert_eq!(
            d.lookup(t0, &flow),
            Some(sni_match("YouTube", "www.youtube.com", Source::Dns))
        );
        // after the TTL: nothing
        assert_eq!(d.lookup(t0 + Duration::from_secs(60), &flow), None);
        // a prefix match; DNS wins over it when both match
        let nf = out_tuple(Protocol::Tcp, 1, 443);
        assert_eq!(d.lookup(t0, &nf).unwrap().source, Source::Prefix);
        assert_eq!(d.lookup(t0, &nf).unwrap().name, None);
        let msg = dns_response(&[("video.example.test", 60, PEER4)], &[]);
        d.handle_packet(t0, &udp4(resolver, ME4, 53, 33333, &msg), &local());
        assert_eq!(
            d.lookup(t0, &nf),
            Some(sni_match("Example", "video.example.test", Source::Dns))
        );
        // a DNS name that matches nothing falls back to the prefix
        let msg = dns_response(&[("nothing.test", 60, [198, 51, 100, 21])], &[]);
        d.handle_packet(t0, &udp4(resolver, ME4, 53, 33333, &msg), &local());
        let nf2 = FlowKey {
            remote: "198.51.100.21:443".parse().unwrap(),
            ..nf
        };
        assert_eq!(d.lookup(t0, &nf2).unwrap().source, Source::Prefix);
        // queries and responses to other hosts are ignored; garbage on port 53 is counted
        d.handle_packet(t0, &udp4(ME4, resolver, 33333, 53, &msg), &local());
        d.handle_packet(
            t0,
            &udp4(resolver, ME4, 53, 33333, b"\x00\x01garbage"),
            &local(),
        );
        assert_eq!(d.stats().dns_messages, 4);
        assert_eq!(d.stats().dns_errors, 1);
        // a local stub resolver (both ends local) answering this host
        let mut lo = det();
        let msg = dns_response(&[("c.youtube.com", 60, [203, 0, 113, 9])], &[]);
        let p = udp4([127, 0, 0, 53], [127, 0, 0, 1], 53, 40000, &msg);
        lo.handle_packet(
            t0,
            &p,
            &[IpAddr::from([127, 0, 0, 1]), IpAddr::from([127, 0, 0, 53])],
        );
        assert_eq!(lo.dns().len(), 1);
        // prefixes disabled
        let off = Detector::new(
            sigs(),
            DetectorConfig {
                prefixes: false,
                ..Default::default()
            },
        );
        assert_eq!(off.lookup(t0, &nf2), None);
        // expiry through handle_timeout
        assert!(d.next_timeout().is_some());
        d.handle_timeout(t0 + Duration::from_secs(3600));
        assert!(d.dns().is_empty());
    }

    #[test]
    fn dns_over_tcp_split_messages() {
        let mut d = det();
        let t0 = Instant::now();
        let resolver = [192, 0, 2, 53];
        let m1 = dns_response(&[("a.youtube.com", 60, [203, 0, 113, 1])], &[]);
        let m2 = dns_response(&[("b.youtube.com", 60, [203, 0, 113, 2])], &[]);
        let mut stream = Vec::new();
        for m in [&m1, &m2] {
            stream.extend_from_slice(&(m.len() as u16).to_be_bytes());
            stream.extend_from_slice(m);
        }
        d.handle_packet(
            t0,
            &tcp4(resolver, ME4, 53, 40100, 500, "SA", b""),
            &local(),
        );
        // three segments cutting through the length prefix and the first message, plus a
        // retransmission of the first segment
        let (s1, s2, s3) = (&stream[..1], &stream[1..20], &stream[20..]);
        for (seq, seg) in [(501u32, s1), (502, s2), (501, s1), (521, s3)] {
            assert_eq!(
                d.handle_packet(t0, &tcp4(resolver, ME4, 53, 40100, seq, "A", seg), &local()),
                None
            );
        }
        assert_eq!(d.stats().dns_messages, 2);
        assert_eq!(
            d.dns().names_of(t0, "203.0.113.2".parse().unwrap()),
            ["b.youtube.com"]
        );
        // a gap loses the framing: the connection's buffer is dropped, nothing is misparsed
        d.handle_packet(
            t0,
            &tcp4(resolver, ME4, 53, 40101, 900, "SA", b""),
            &local(),
        );
        d.handle_packet(
            t0,
            &tcp4(resolver, ME4, 53, 40101, 950, "A", &stream[30..]),
            &local(),
        );
        assert_eq!(d.stats().dns_errors, 0);
    }

    #[test]
    fn pending_bounds_and_timeouts() {
        let cfg = DetectorConfig {
            max_pending: 8,
            pending_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let mut d = Detector::new(sigs(), cfg);
        let t0 = Instant::now();
        assert_eq!(d.next_timeout(), None);
        for port in 0..20u16 {
            let t = t0 + Duration::from_millis(u64::from(port));
            d.handle_packet(
                t,
                &tcp4(ME4, PEER4, 30000 + port, 443, 1, "A", &CH_OPENSSL[..50]),
                &local(),
            );
        }
        let st = d.stats();
        assert_eq!((st.pending_now, st.pending_evicted), (8, 12));
        // the oldest were evicted: completing flow 0 no longer works (its tail starts a new,
        // unanchored reassembly, which evicts flow 12), flow 19 still does
        let t1 = t0 + Duration::from_millis(20);
        let p = tcp4(ME4, PEER4, 30000, 443, 51, "A", &CH_OPENSSL[50..]);
        assert_eq!(d.handle_packet(t1, &p, &local()), None);
        let p = tcp4(ME4, PEER4, 30019, 443, 51, "A", &CH_OPENSSL[50..]);
        assert!(d.handle_packet(t1, &p, &local()).is_some());
        assert_eq!((d.stats().pending_now, d.stats().pending_evicted), (7, 13));
        // the oldest pending flow (13) times out 5 s after it started
        let deadline = t0 + Duration::from_millis(13) + Duration::from_secs(5);
        assert!(d.next_timeout().unwrap() <= deadline);
        d.handle_timeout(deadline - Duration::from_millis(1));
        assert_eq!(d.stats().pending_timeouts, 0);
        d.handle_timeout(deadline);
        assert_eq!(d.stats().pending_timeouts, 1);
        d.handle_timeout(t0 + Duration::from_secs(10));
        let st = d.stats();
        assert_eq!((st.pending_now, st.pending_timeouts), (0, 7));
        // remembered flows are swept after a while too
        d.handle_timeout(t0 + Duration::from_secs(3600));
        d.handle_timeout(t0 + Duration::from_secs(7200));
        assert!(d.finished.is_empty());
        assert_eq!(d.next_timeout(), None);
    }

    #[test]
    fn truncated_packets_never_match_or_panic() {
        let mut pkts = vec![
            tcp4(ME4, PEER4, 40020, 443, 1, "A", CH_OPENSSL),
            udp4(ME4, PEER4, 50020, 443, RFC9001_CLIENT_INITIAL),
            tcp6(ME6, PEER6, 40021, 443, 1, "", CH_OPENSSL),
        ];
        pkts.push(udp4(
            [192, 0, 2, 53],
            ME4,
            53,
            1,
            &dns_response(&[("x.youtube.com", 60, [203, 0, 113, 3])], &[]),
        ));
        for p in &pkts {
            for cut in 0..p.len() {
                let mut d = det();
                assert_eq!(
                    d.handle_packet(Instant::now(), &p[..cut], &local()),
                    None,
                    "cut {cut}"
                );
                assert!(d.dns().is_empty());
            }
            let mut d = det();
            let _ = d.handle_packet(Instant::now(), p, &local());
        }
    }

    #[test]
    fn rfc_dcid_constant_matches_vector() {
        assert_eq!(&RFC9001_CLIENT_INITIAL[6..14], &RFC_DCID);
    }

    #[test]
    fn display_and_serde() {
        let t = out_tuple(Protocol::Udp, 5, 443);
        assert_eq!(t.to_string(), "udp 192.0.2.10:5 -> 198.51.100.20:443");
        for (s, j) in [
            (Source::Dns, "\"dns\""),
            (Source::TlsSni, "\"tls-sni\""),
            (Source::QuicSni, "\"quic-sni\""),
            (Source::Prefix, "\"prefix\""),
        ] {
            assert_eq!(serde_json::to_string(&s).unwrap(), j);
            assert_eq!(format!("\"{s}\""), j);
            assert_eq!(serde_json::from_str::<Source>(j).unwrap(), s);
        }
        assert_eq!(serde_json::to_string(&Protocol::Tcp).unwrap(), "\"tcp\"");
        assert_eq!(
            serde_json::from_str::<Protocol>("\"udp\"").unwrap(),
            Protocol::Udp
        );
    }
}
