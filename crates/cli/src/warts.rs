//! `trace --format warts`: scamper's binary "warts" format (warts(5)), so that scamper's own
//! tools (`sc_warts2json`, `sc_wartsdump`, `sc_analysis_dump`, ...) and the libraries built on
//! them read our traceroutes.
//!
//! A warts file is a series of objects, each an 8-byte header (magic 0x1205, type, length)
//! and a body. Scamper writes a *list* and a *cycle start* before its measurements and a
//! *cycle stop* after them, and every trace names the list and cycle it belongs to; we do the
//! same (one list, `service-traceroute`, and one cycle per run), since readers resolve those
//! references and reject a trace that names a list or cycle they have not seen.
//!
//! Choices, where our results and scamper's model differ:
//!
//! * **Method.** Scamper knows ICMP echo, UDP and TCP SYN traceroute, each of ICMP and UDP also
//!   in a Paris flavour (`icmp-echo-paris`, `udp-paris`). Paris and Dublin both keep the flow
//!   identifier constant, which is what "Paris" means to a reader, so both are written as
//!   the Paris method; classic as the plain one. Scamper's TCP method keeps its ports
//!   constant (it is Paris-like already, and has no Paris variant), so every TCP trace is
//!   `tcp`.
//! * **Replies only.** Scamper records one hop record per reply; a probe nobody answered leaves
//!   no record (its TTL and attempt number are simply absent), and so does ours.
//! * **Attempt numbers** (`probe_id`) are the 0-based position of the probe among its TTL's
//!   probes, as on scamper's disk (readers show them 1-based).
//! * **Addresses** are embedded in the trace (the current form, not the deprecated global
//!   address objects): defined at their first use in an object, then referenced by number.
//! * **What we do not know is left out**, not written as 0: the probe and reply sizes, the
//!   reply's IP-ID and ToS (our `ip_id` is the probe's), the wait, the gap limit, and the hop
//!   limit unless the trace stopped at it. A reader then shows its default for them.
//! * **Out-of-range values** (no such value comes from our engines, but the writer takes any
//!   result) are clamped to the field's range or, where a clamped value would be a lie that
//!   breaks the reader (a TTL of 0), the field or record is omitted; each place says which.
//!
//! The layout follows warts(5) and, where that leaves a detail open, scamper's
//! `scamper_file_warts.c` and `trace/scamper_trace_warts.c`: for example the attempt number
//! on disk is 0-based and flag bit `n` of the flag bytes is bit `(n - 1) % 7` of byte
//! `(n - 1) / 7`.
//!
//! A multipath (MDA) discovery is written as scamper's *tracelb* object (type 8, laid out as
//! in `tracelb/scamper_tracelb_warts.c`); `tracelb_object` says how our graph maps onto it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use svctr_core::{MplsEntry, ProbeReply, Protocol, StopReason, Strategy, TracerouteResult};

/// Every warts object begins with this.
const MAGIC: u16 = 0x1205;

/// Object types (warts(5), "WARTS OBJECT HEADER").
const OBJ_LIST: u16 = 0x0001;
const OBJ_CYCLE_START: u16 = 0x0002;
const OBJ_CYCLE_STOP: u16 = 0x0004;
const OBJ_TRACE: u16 = 0x0006;
/// A load-balancer (MDA) traceroute (scamper's `SCAMPER_FILE_OBJ_TRACELB`).
const OBJ_TRACELB: u16 = 0x0008;

/// The list's id as warts numbers lists: readers count them from 1 (0 means "no list") and
/// check that the first list in a file says 1.
const LIST_ID: u32 = 1;
/// The list's id "assigned by a person" and its name.
const LIST_USER_ID: u32 = 0;
const LIST_NAME: &str = "service-traceroute";

/// Address types of an embedded address.
const ADDR_IPV4: u8 = 0x01;
const ADDR_IPV6: u8 = 0x02;

/// Trace types (scamper's `SCAMPER_TRACE_TYPE_*`).
const TYPE_ICMP_ECHO: u8 = 0x01;
const TYPE_UDP: u8 = 0x02;
const TYPE_TCP: u8 = 0x03;
const TYPE_ICMP_ECHO_PARIS: u8 = 0x04;
const TYPE_UDP_PARIS: u8 = 0x05;

/// Stop reasons (scamper's `SCAMPER_TRACE_STOP_*`).
const STOP_NONE: u8 = 0x00;
const STOP_COMPLETED: u8 = 0x01;
const STOP_UNREACH: u8 = 0x02;
const STOP_GAPLIMIT: u8 = 0x05;
const STOP_HOPLIMIT: u8 = 0x07;
const STOP_GSS: u8 = 0x08;
const STOP_HALTED: u8 = 0x09;

/// Trace flag: every probe of a TTL is sent even after one is answered (scamper's
/// `ALLATTEMPTS`, its `-Q`; scamper stops a TTL at its first reply by default).
const TRACE_FLAG_ALLATTEMPTS: u8 = 0x01;

/// Hop flags (scamper's `SCAMPER_TRACE_HOP_FLAG_*`): the reply TTL field is valid; the reply
/// is TCP. Neither TCP nor UDP means ICMP.
const HOP_FLAG_REPLY_TTL: u8 = 0x10;
const HOP_FLAG_TCP: u8 = 0x20;

/// Trace parameters (the flag numbers of warts(5), "TRACEROUTE STRUCTURE").
mod trace_param {
    pub(super) const LIST_ID: usize = 1;
    pub(super) const CYCLE_ID: usize = 2;
    pub(super) const START: usize = 5;
    pub(super) const STOP_REASON: usize = 6;
    pub(super) const STOP_DATA: usize = 7;
    pub(super) const FLAGS8: usize = 8;
    pub(super) const ATTEMPTS: usize = 9;
    pub(super) const HOPLIMIT: usize = 10;
    pub(super) const TYPE: usize = 11;
    pub(super) const SPORT: usize = 13;
    pub(super) const DPORT: usize = 14;
    pub(super) const FIRSTHOP: usize = 15;
    pub(super) const HOPCOUNT: usize = 19;
    pub(super) const PROBEC: usize = 23;
    pub(super) const SRC: usize = 26;
    pub(super) const DST: usize = 27;
}

/// Hop record parameters (warts(5) and `scamper_trace_warts.c`).
mod hop_param {
    pub(super) const PROBE_TTL: usize = 2;
    pub(super) const REPLY_TTL: usize = 3;
    pub(super) const FLAGS: usize = 4;
    pub(super) const PROBE_ID: usize = 5;
    pub(super) const RTT: usize = 6;
    pub(super) const ICMP_TC: usize = 7;
    pub(super) const NHMTU: usize = 12;
    pub(super) const Q_TTL: usize = 14;
    pub(super) const TCP_FLAGS: usize = 15;
    pub(super) const ICMPEXT: usize = 17;
    pub(super) const ADDR: usize = 18;
    pub(super) const NAME: usize = 20;
}

/// Tracelb methods (scamper's `SCAMPER_TRACELB_TYPE_*`): which probe field carries the flow
/// identifier.
const LB_TYPE_UDP_DPORT: u8 = 0x01;
const LB_TYPE_ICMP_ECHO: u8 = 0x02;
const LB_TYPE_UDP_SPORT: u8 = 0x03;
const LB_TYPE_TCP_SPORT: u8 = 0x04;

/// Tracelb reply flags (scamper's `SCAMPER_TRACELB_REPLY_FLAG_*`): the reply TTL field is
/// valid; the reply is TCP (else ICMP).
const LB_REPLY_FLAG_REPLY_TTL: u8 = 0x01;
const LB_REPLY_FLAG_TCP: u8 = 0x02;

/// Tracelb parameters (`WARTS_TRACELB_*` of scamper's `tracelb/scamper_tracelb_warts.c`).
mod lb_param {
    pub(super) const LIST_ID: usize = 1;
    pub(super) const CYCLE_ID: usize = 2;
    pub(super) const START: usize = 5;
    pub(super) const SPORT: usize = 6;
    pub(super) const DPORT: usize = 7;
    pub(super) const TYPE: usize = 9;
    pub(super) const FIRSTHOP: usize = 10;
    pub(super) const CONFIDENCE: usize = 14;
    pub(super) const NODEC: usize = 16;
    pub(super) const LINKC: usize = 17;
    pub(super) const PROBEC: usize = 18;
    pub(super) const SRC: usize = 21;
    pub(super) const DST: usize = 22;
}

/// Tracelb node parameters (`WARTS_TRACELB_NODE_*`).
mod lb_node_param {
    pub(super) const FLAGS: usize = 2;
    pub(super) const LINKC: usize = 3;
    pub(super) const ADDR: usize = 5;
    pub(super) const NAME: usize = 6;
}

/// Tracelb link parameters (`WARTS_TRACELB_LINK_*`): node indexes and the probe set count.
mod lb_link_param {
    pub(super) const FROM: usize = 1;
    pub(super) const TO: usize = 2;
    pub(super) const HOPC: usize = 3;
}

/// Tracelb probe set (`WARTS_TRACELB_PROBESET_PROBEC`) and probe parameters
/// (`WARTS_TRACELB_PROBE_*`).
mod lb_probe_param {
    pub(super) const SET_PROBEC: usize = 1;
    pub(super) const TX: usize = 1;
    pub(super) const FLOWID: usize = 2;
    pub(super) const TTL: usize = 3;
    pub(super) const ATTEMPT: usize = 4;
    pub(super) const RXC: usize = 5;
}

/// Tracelb reply parameters (`WARTS_TRACELB_REPLY_*`).
mod lb_reply_param {
    pub(super) const RX: usize = 1;
    pub(super) const TTL: usize = 3;
    pub(super) const FLAGS: usize = 4;
    pub(super) const ICMP_TC: usize = 5;
    pub(super) const TCP_FLAGS: usize = 6;
    pub(super) const ICMP_EXT: usize = 7;
    pub(super) const Q_TTL: usize = 8;
    pub(super) const FROM: usize = 11;
}

/// At most this many probe records go into one tracelb object (a probe answered by a node
/// with many links into it is written once per link): about 50 MB, far more than any
/// discovery sends, and it keeps the object's u32 length true for any input.
const MAX_LB_PROBES: usize = 1_000_000;

/// At most this many MPLS labels (the top of the stack) go into a hop record: RFC 4950
/// stacks are a few entries deep, and scamper's JSON conversion (`sc_warts2json`, Debian's
/// 20211212) garbles a stack of 10 or more.
const MAX_MPLS: usize = 8;

/// Names longer than this are left out of hop records: `sc_warts2json` (20211212) garbles a
/// name of 128 bytes or more (DNS allows 253), and a cut name would be a wrong one.
const MAX_NAME: usize = 127;

/// Writes one run's warts objects: [`header`](Self::header) (a list and a cycle start),
/// one [`trace`](Self::trace) object per result, [`finish`](Self::finish) (the cycle stop).
/// Each returns the bytes to append to the output, in that order.
///
/// Misuse still yields a file readers accept: `trace` writes the header first if it was
/// not written, `finish` on a run without traces writes an empty cycle, and a `trace` after
/// `finish` opens a new cycle (a trace must name an open cycle).
#[derive(Debug)]
pub(crate) struct Writer {
    /// The clock cycle start and stop times come from (fixed in tests).
    clock: fn() -> SystemTime,
    /// The list object was written.
    list_written: bool,
    /// Cycles started so far (cycle ids are 1, 2, ...: 0 means "no cycle" to readers).
    cycles: u32,
    /// The cycle traces are written into, if one is open.
    open_cycle: Option<u32>,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    /// A writer for one output.
    pub(crate) fn new() -> Self {
        Self::with_clock(SystemTime::now)
    }

    fn with_clock(clock: fn() -> SystemTime) -> Self {
        Self {
            clock,
            list_written: false,
            cycles: 0,
            open_cycle: None,
        }
    }

    /// The objects that precede the traces: the list (first call only) and a cycle start
    /// stamped with the current time. Empty if a cycle is already open.
    pub(crate) fn header(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.open_cycle.is_some() {
            return out;
        }
        if !self.list_written {
            out.extend(list_object());
            self.list_written = true;
        }
        // 4 billion cycles in one output cannot happen; saturating keeps this panic-free.
        self.cycles = self.cycles.saturating_add(1);
        out.extend(cycle_start_object(
            self.cycles,
            unix_seconds_u32((self.clock)()),
        ));
        self.open_cycle = Some(self.cycles);
        out
    }

    /// One trace object (after the header, if that was not written yet).
    pub(crate) fn trace(&mut self, r: &TracerouteResult) -> Vec<u8> {
        let mut out = self.header();
        let cycle = self.open_cycle.unwrap_or(self.cycles);
        out.extend(trace_object(r, cycle));
        out
    }

    /// One tracelb object (scamper's MDA traceroute) for a forward multipath discovery
    /// (after the header, if that was not written yet). See [`tracelb_object`] for the
    /// mapping.
    pub(crate) fn tracelb(&mut self, r: &svctr_core::MdaResult) -> Vec<u8> {
        let mut out = self.header();
        let cycle = self.open_cycle.unwrap_or(self.cycles);
        out.extend(tracelb_object(r, cycle));
        out
    }

    /// The cycle stop that ends the file (a whole empty cycle if nothing was written, so the
    /// output is a warts file all the same). Empty if the cycle was already stopped.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.cycles == 0 {
            out.extend(self.header());
        }
        if let Some(id) = self.open_cycle.take() {
            out.extend(cycle_stop_object(id, unix_seconds_u32((self.clock)())));
        }
        out
    }
}

/// An object: the 8-byte header, then the body.
fn object(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend(MAGIC.to_be_bytes());
    out.extend(kind.to_be_bytes());
    // Bodies stay far below 4 GiB (trace_object caps its records): saturation is a formality.
    out.extend(u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend(body);
    out
}

/// The list: its warts id, the id a person gave it, its name, no optional parameters (a
/// single zero flag byte).
fn list_object() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(LIST_ID.to_be_bytes());
    b.extend(LIST_USER_ID.to_be_bytes());
    push_string(&mut b, LIST_NAME);
    b.push(0);
    object(OBJ_LIST, &b)
}

/// A cycle start: its warts id, the list's warts id, the id a person gave it (the same
/// number: cycles of one run are 1, 2, ...), its start time, no optional parameters.
fn cycle_start_object(id: u32, start: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(id.to_be_bytes());
    b.extend(LIST_ID.to_be_bytes());
    b.extend(id.to_be_bytes());
    b.extend(start.to_be_bytes());
    b.push(0);
    object(OBJ_CYCLE_START, &b)
}

/// A cycle stop: the cycle's warts id, its stop time, no flags.
fn cycle_stop_object(id: u32, stop: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(id.to_be_bytes());
    b.extend(stop.to_be_bytes());
    b.push(0);
    object(OBJ_CYCLE_STOP, &b)
}

/// The optional parameters of an object: flag bytes that say which parameters follow, the
/// parameters' total length (u16, present if any flag is set) and the parameters, in flag
/// order.
#[derive(Default)]
struct Params {
    flags: Vec<u8>,
    data: Vec<u8>,
}

impl Params {
    /// Adds parameter `id` (1-based, in increasing order) with its encoded value. A value
    /// that would take the parameters past their 16-bit length is left out (the callers'
    /// caps keep that from happening).
    fn set(&mut self, id: usize, value: &[u8]) {
        if id == 0 || self.data.len() + value.len() > usize::from(u16::MAX) {
            return;
        }
        // Bit (id - 1) % 7 of byte (id - 1) / 7; the top bit of each byte but the last says
        // "another flag byte follows".
        let (byte, bit) = ((id - 1) / 7, (id - 1) % 7);
        if self.flags.len() <= byte {
            if let Some(last) = self.flags.last_mut() {
                *last |= 0x80;
            }
            while self.flags.len() < byte {
                self.flags.push(0x80);
            }
            self.flags.push(0);
        }
        self.flags[byte] |= 1 << bit;
        self.data.extend(value);
    }

    /// The encoded flags and parameters; a single zero byte when none was set.
    fn write(&self, out: &mut Vec<u8>) {
        if self.flags.is_empty() {
            out.push(0);
            return;
        }
        out.extend(&self.flags);
        // `set` keeps the length within u16.
        out.extend(
            u16::try_from(self.data.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        out.extend(&self.data);
    }
}

/// The addresses an object embeds: the first use of an address defines it (length, type,
/// bytes), later uses refer to it by its number (a zero byte, then the u32 number, numbered
/// from 0 in order of definition). The reader keeps one table per object.
#[derive(Default)]
struct AddrTable(HashMap<IpAddr, u32>);

impl AddrTable {
    fn encode(&mut self, a: IpAddr) -> Vec<u8> {
        if let Some(id) = self.0.get(&a) {
            let mut v = vec![0];
            v.extend(id.to_be_bytes());
            return v;
        }
        // A trace holds at most 65,535 records, far from 4 billion addresses.
        let id = u32::try_from(self.0.len()).unwrap_or(u32::MAX);
        self.0.insert(a, id);
        match a {
            IpAddr::V4(v4) => {
                let mut v = vec![4, ADDR_IPV4];
                v.extend(v4.octets());
                v
            }
            IpAddr::V6(v6) => {
                let mut v = vec![16, ADDR_IPV6];
                v.extend(v6.octets());
                v
            }
        }
    }
}

/// The trace object of one result.
fn trace_object(r: &TracerouteResult, cycle: u32) -> Vec<u8> {
    use trace_param as t;
    let mut table = AddrTable::default();
    let mut p = Params::default();
    p.set(t::LIST_ID, &LIST_ID.to_be_bytes());
    p.set(t::CYCLE_ID, &cycle.to_be_bytes());
    // Left out if it does not parse (ours always do) or falls outside the u32 seconds of a
    // timeval: the reader then shows the epoch.
    if let Some(tv) = timeval(&r.start) {
        p.set(t::START, &tv);
    }
    let (reason, data) = stop(r);
    p.set(t::STOP_REASON, &[reason]);
    p.set(t::STOP_DATA, &[data]);
    // Our traceroute sends every probe of a TTL whatever the answers.
    p.set(t::FLAGS8, &[TRACE_FLAG_ALLATTEMPTS]);
    // Probes per TTL: the most any TTL got (retries included), clamped to the byte.
    let attempts = r.hops.iter().map(|h| h.probes.len()).max().unwrap_or(0);
    if attempts > 0 {
        p.set(t::ATTEMPTS, &[u8::try_from(attempts).unwrap_or(u8::MAX)]);
    }
    let max_ttl = r.hops.iter().map(|h| h.ttl).max().unwrap_or(0);
    // The result does not carry the max TTL: it is known only when the trace stopped there.
    if r.stop_reason == StopReason::MaxTtl && max_ttl > 0 {
        p.set(t::HOPLIMIT, &[max_ttl]);
    }
    p.set(t::TYPE, &[trace_type(r.protocol, r.strategy)]);
    if let Some(sport) = r.source_port {
        p.set(t::SPORT, &sport.to_be_bytes());
    }
    if let Some(dport) = r.port {
        p.set(t::DPORT, &dport.to_be_bytes());
    }
    // TTL 0 is no TTL a probe is sent with (readers take 0 to mean 1).
    if let Some(first) = r.hops.iter().map(|h| h.ttl).filter(|&t| t > 0).min() {
        p.set(t::FIRSTHOP, &[first]);
    }
    // The highest TTL probed, answered or not (readers size the hop array by it).
    if max_ttl > 0 {
        p.set(t::HOPCOUNT, &u16::from(max_ttl).to_be_bytes());
    }
    p.set(
        t::PROBEC,
        &u16::try_from(r.probes_sent)
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    p.set(t::SRC, &table.encode(r.source));
    p.set(t::DST, &table.encode(r.destination));

    let mut body = Vec::new();
    p.write(&mut body);

    // One record per reply, in TTL order (the reader strings consecutive records of one TTL
    // together, so a TTL's records must be adjacent; ours come sorted, the stable sort is
    // for any other input). Replies at TTL 0 are left out: the reader rejects the whole
    // trace for one.
    let mut replies: Vec<(u8, usize, &ProbeReply, IpAddr)> = r
        .hops
        .iter()
        .filter(|h| h.ttl > 0)
        .flat_map(|h| {
            h.probes
                .iter()
                .enumerate()
                .filter_map(move |(i, p)| p.addr.map(|a| (h.ttl, i, p, a)))
        })
        .collect();
    replies.sort_by_key(|&(ttl, ..)| ttl);
    let mut records = Vec::new();
    let mut count: u16 = 0;
    for (ttl, attempt, reply, addr) in replies {
        // The count is a u16: further replies are left out (255 TTLs of 255 probes stay
        // within it). The object's u32 length needs no check: a record is at most a few
        // KiB (the name and MPLS caps), 65,535 of them a few hundred MiB.
        if count == u16::MAX {
            break;
        }
        records.extend(hop_record(ttl, attempt, reply, addr, &mut table));
        count += 1;
    }
    body.extend(count.to_be_bytes());
    body.extend(records);
    // No optional data (PMTUD, last-ditch, doubletree): the end-of-trace marker.
    body.extend(0u16.to_be_bytes());
    object(OBJ_TRACE, &body)
}

/// One reply's hop record.
fn hop_record(
    ttl: u8,
    attempt: usize,
    r: &ProbeReply,
    addr: IpAddr,
    table: &mut AddrTable,
) -> Vec<u8> {
    use hop_param as h;
    let tcp = r.tcp_flags.is_some();
    let mut p = Params::default();
    p.set(h::PROBE_TTL, &[ttl]);
    if let Some(t) = r.reply_ttl {
        p.set(h::REPLY_TTL, &[t]);
    }
    let mut flags = 0;
    if r.reply_ttl.is_some() {
        flags |= HOP_FLAG_REPLY_TTL;
    }
    if tcp {
        flags |= HOP_FLAG_TCP;
    }
    p.set(h::FLAGS, &[flags]);
    // The 256th and later probes of one TTL (never sent by our engines) share the last id.
    p.set(h::PROBE_ID, &[u8::try_from(attempt).unwrap_or(u8::MAX)]);
    if let Some(us) = r.rtt_ms.and_then(rtt_micros) {
        p.set(h::RTT, &us.to_be_bytes());
    }
    if !tcp {
        // A reader takes a record without type and code for ICMP type 0 code 0 (an IPv4
        // echo reply); there is nothing truer to write when we do not know them.
        if let (Some(ty), Some(code)) = (r.icmp_type, r.icmp_code) {
            p.set(h::ICMP_TC, &[ty, code]);
        }
        if let Some(mtu) = r.mtu {
            if is_too_big(addr, r.icmp_type, r.icmp_code) {
                // IPv6 jumbo MTUs do not fit warts' 16 bits: the largest that does.
                p.set(
                    h::NHMTU,
                    &u16::try_from(mtu).unwrap_or(u16::MAX).to_be_bytes(),
                );
            }
        }
        // The reader takes 1 when it is absent from an ICMP error, as scamper writes it.
        if let Some(q) = r.quoted_ttl.filter(|&q| q != 1) {
            p.set(h::Q_TTL, &[q]);
        }
    }
    if let Some(f) = r.tcp_flags {
        p.set(h::TCP_FLAGS, &[f]);
    }
    if !tcp && !r.mpls.is_empty() {
        p.set(h::ICMPEXT, &mpls_extension(&r.mpls));
    }
    p.set(h::ADDR, &table.encode(addr));
    if let Some(name) = &r.name {
        // Warts strings end at a NUL: a name holding one cannot be written as it is.
        if !name.contains('\0') && name.len() <= MAX_NAME {
            let mut v = Vec::with_capacity(name.len() + 1);
            push_string(&mut v, name);
            p.set(h::NAME, &v);
        }
    }
    let mut out = Vec::new();
    p.write(&mut out);
    out
}

/// Scamper's trace type for our protocol and strategy (see the module doc).
fn trace_type(protocol: Protocol, strategy: Strategy) -> u8 {
    let paris = strategy != Strategy::Classic;
    match protocol {
        Protocol::Icmp if paris => TYPE_ICMP_ECHO_PARIS,
        Protocol::Icmp => TYPE_ICMP_ECHO,
        Protocol::Udp if paris => TYPE_UDP_PARIS,
        Protocol::Udp => TYPE_UDP,
        Protocol::Tcp => TYPE_TCP,
    }
}

/// Scamper's stop reason and stop data for ours. Every variant is named, so that a new one
/// gets a decision here.
fn stop(r: &TracerouteResult) -> (u8, u8) {
    match r.stop_reason {
        // The destination answered.
        StopReason::RemoteReached => (STOP_COMPLETED, 0),
        // Silent TTLs in a row: scamper's gap limit.
        StopReason::MaxMissing => (STOP_GAPLIMIT, 0),
        // The max TTL was probed; a remote's distance ends probing at a TTL limit too.
        StopReason::MaxTtl | StopReason::RemoteDistance => (STOP_HOPLIMIT, 0),
        // A router in a set of addresses to stop at: scamper's (doubletree) global stop set.
        StopReason::StopAt => (STOP_GSS, 0),
        // Scamper keeps the unreachable's ICMP code as the stop data.
        StopReason::Unreachable => (STOP_UNREACH, unreachable_code(r).unwrap_or(0)),
        // Cut short from outside the trace.
        StopReason::Interrupted | StopReason::FlowEnded | StopReason::FlowTimeout => {
            (STOP_HALTED, 0)
        }
        // Nothing was probed.
        StopReason::NothingToProbe => (STOP_NONE, 0),
    }
}

/// The ICMP code of the last Destination Unreachable in the trace (IPv4 type 3, IPv6 type 1).
fn unreachable_code(r: &TracerouteResult) -> Option<u8> {
    r.hops
        .iter()
        .rev()
        .flat_map(|h| h.probes.iter().rev())
        .find_map(|p| {
            let unreach = match p.addr? {
                IpAddr::V4(_) => 3,
                IpAddr::V6(_) => 1,
            };
            (p.icmp_type? == unreach).then_some(p.icmp_code).flatten()
        })
}

/// An ICMP Fragmentation Needed (IPv4 type 3 code 4) or Packet Too Big (IPv6 type 2): the
/// messages whose next-hop MTU scamper records.
fn is_too_big(addr: IpAddr, ty: Option<u8>, code: Option<u8>) -> bool {
    match addr {
        IpAddr::V4(_) => ty == Some(3) && code == Some(4),
        IpAddr::V6(_) => ty == Some(2),
    }
}

/// An RTT in whole microseconds (warts' unit; we keep fractions of one, warts cannot).
/// Negative values (a clock step) are clamped to 0 and huge ones to the u32 maximum (71
/// minutes); NaN is left out.
fn rtt_micros(ms: f64) -> Option<u32> {
    if ms.is_nan() {
        return None;
    }
    let us = (ms * 1000.0).round();
    Some(if us <= 0.0 {
        0
    } else if us >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        // In range and integral: the conversion is exact.
        us as u32
    })
}

/// The MPLS label stack as warts' ICMP extension list: the list's length, then one
/// extension (length of its data, class 1 "MPLS Label Stack", type 1 "incoming"), whose data
/// are the RFC 4950 entries: label (20 bits), traffic class (3), bottom of stack (1), TTL (8).
fn mpls_extension(stack: &[MplsEntry]) -> Vec<u8> {
    let entries = &stack[..stack.len().min(MAX_MPLS)];
    let mut data = Vec::with_capacity(entries.len() * 4);
    for e in entries {
        let word = ((e.label & 0xf_ffff) << 12)
            | (u32::from(e.tc & 0x7) << 9)
            | (u32::from(e.s) << 8)
            | u32::from(e.ttl);
        data.extend(word.to_be_bytes());
    }
    // At most 8 entries of 4 bytes: the lengths fit their u16.
    let data_len = u16::try_from(data.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(data.len() + 6);
    out.extend(data_len.saturating_add(4).to_be_bytes());
    out.extend(data_len.to_be_bytes());
    out.push(1);
    out.push(1);
    out.extend(data);
    out
}

/// A warts string: its bytes and a terminating NUL.
fn push_string(out: &mut Vec<u8>, s: &str) {
    out.extend(s.as_bytes());
    out.push(0);
}

/// A timeval (u32 seconds since the epoch, u32 microseconds) from one of our RFC 3339 times;
/// None if it does not parse or is outside what u32 seconds hold (1970 to 2106).
fn timeval(t: &str) -> Option<[u8; 8]> {
    let d = humantime::parse_rfc3339_weak(t)
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?;
    let secs = u32::try_from(d.as_secs()).ok()?;
    let mut tv = [0; 8];
    tv[..4].copy_from_slice(&secs.to_be_bytes());
    tv[4..].copy_from_slice(&d.subsec_micros().to_be_bytes());
    Some(tv)
}

/// Unix seconds as warts' u32 cycle times: a clock before 1970 gives 0, one after 2106 the
/// largest value.
fn unix_seconds_u32(t: SystemTime) -> u32 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

/// The tracelb object of a multipath discovery. Scamper's model is a graph of *nodes*
/// (interface addresses) and *links* between them, each link holding the probes (flow id,
/// TTL, attempt, send time) whose replies (receive time, TTL, ICMP type and code or TCP
/// flags, address) showed it. Ours maps onto it as follows:
///
/// * **Nodes**: every distinct address that answered, once (scamper's nodes are interfaces,
///   not (address, TTL) pairs), in order of its first TTL; the silent probes are no node.
/// * **Links**: our links (`from` at `ttl`, `to` at `ttl + 1`), once per address pair, in
///   order of their `from` node (the reader hands a node the links that name it, in file
///   order). Each has one probe set (hop count 1: our links join consecutive TTLs): the
///   probes `to` answered at `ttl + 1` whose flow `from` answered at `ttl`, which are the
///   probes that showed the link; if none (flows unknown) all of `to`'s probes at that TTL.
///   A link into or out of a silence is left out (the reader needs an address for a node,
///   and `sc_warts2json` crashes on a node with several links one of which has no `to`).
/// * **Method**: ICMP is `icmp-echo`, TCP `tcp-sport` (our TCP discovery varies the source
///   port); UDP is `udp-dport` when the probes' destination ports vary (ours fix the
///   source port), `udp-sport` when only their source ports do. The ports are the lowest
///   each probe carried.
/// * **Times**: we keep no send time per probe, only its RTT: every probe is written as sent
///   at the discovery's start and its reply as received an RTT later, so that readers'
///   RTTs (receive minus send time) are ours, to the microsecond. A reply without an RTT is
///   written as received when sent.
/// * **Confidence**: scamper knows 95 and 99 %; ours is written as the nearer of the two.
/// * **Attempts** are the 0-based position of the probe among the probes of its flow and TTL
///   that the node answered (retries of a probe nobody answered are not known).
/// * **Left out**: what we do not know (probe size, ToS, waits, attempts per flow, gap limit,
///   the reply's IP-ID, the probe count limit), unanswered probes (scamper records them,
///   our graph keeps them only as silent nodes), the stop reason and end time (tracelb has
///   no field for them), node quoted-TTL flags, and links of a reverse discovery (the CLI
///   writes only forward ones). Counts are capped at their fields' u16 range and the probe
///   records at [`MAX_LB_PROBES`].
fn tracelb_object(r: &svctr_core::MdaResult, cycle: u32) -> Vec<u8> {
    use lb_param as t;
    let mut table = AddrTable::default();

    // The hops in TTL order (ours come sorted; the stable sort is for any other input).
    let mut hops: Vec<&svctr_core::GraphHop> = r.graph.hops.iter().collect();
    hops.sort_by_key(|h| h.ttl);
    let all_probes = || {
        hops.iter()
            .flat_map(|h| h.nodes.iter().flat_map(|n| &n.probes))
    };

    // Nodes: distinct answering addresses (u16 indexes: further ones are left out).
    let mut nodes: Vec<IpAddr> = Vec::new();
    let mut index: HashMap<IpAddr, u16> = HashMap::new();
    for a in hops.iter().flat_map(|h| h.addrs()) {
        if index.contains_key(&a) {
            continue;
        }
        // At most u16::MAX nodes, indexed 0 to u16::MAX - 1.
        let Some(i) = u16::try_from(nodes.len()).ok().filter(|&i| i < u16::MAX) else {
            break;
        };
        index.insert(a, i);
        nodes.push(a);
    }

    // Links: one per (from, to) pair, both nodes known, sorted by their indexes.
    let mut links: Vec<(u16, u16, &svctr_core::Link)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for l in &r.graph.links {
        if let (Some(&f), Some(&to)) = (index.get(&l.from), index.get(&l.to)) {
            if seen.insert((f, to)) {
                links.push((f, to, l));
            }
        }
    }
    links.sort_by_key(|&(f, to, _)| (f, to));
    links.truncate(usize::from(u16::MAX));

    let mut p = Params::default();
    p.set(t::LIST_ID, &LIST_ID.to_be_bytes());
    p.set(t::CYCLE_ID, &cycle.to_be_bytes());
    let start = timeval(&r.start);
    if let Some(tv) = start {
        p.set(t::START, &tv);
    }
    let (method, sport, dport) = tracelb_method(r.protocol, all_probes());
    if let Some(s) = sport {
        p.set(t::SPORT, &s.to_be_bytes());
    }
    if let Some(d) = dport {
        p.set(t::DPORT, &d.to_be_bytes());
    }
    p.set(t::TYPE, &[method]);
    // TTL 0 is no TTL a probe is sent with.
    if let Some(first) = hops.iter().map(|h| h.ttl).find(|&t| t > 0) {
        p.set(t::FIRSTHOP, &[first]);
    }
    if let Some(c) = tracelb_confidence(r.confidence) {
        p.set(t::CONFIDENCE, &[c]);
    }
    // Both fit: nodes and links were capped at u16 above.
    p.set(
        t::NODEC,
        &u16::try_from(nodes.len()).unwrap_or(u16::MAX).to_be_bytes(),
    );
    p.set(
        t::LINKC,
        &u16::try_from(links.len()).unwrap_or(u16::MAX).to_be_bytes(),
    );
    p.set(t::PROBEC, &r.probes_sent.to_be_bytes());
    p.set(t::SRC, &table.encode(r.source));
    p.set(t::DST, &table.encode(r.destination));
    let mut body = Vec::new();
    p.write(&mut body);

    // The node records: flags (none), their link count, the address, a name if resolved.
    for (i, &addr) in nodes.iter().enumerate() {
        use lb_node_param as n;
        let linkc = links.iter().filter(|&&(f, ..)| usize::from(f) == i).count();
        let mut p = Params::default();
        p.set(n::FLAGS, &[0]);
        p.set(
            n::LINKC,
            &u16::try_from(linkc).unwrap_or(u16::MAX).to_be_bytes(),
        );
        p.set(n::ADDR, &table.encode(addr));
        let name = hops
            .iter()
            .flat_map(|h| h.nodes.iter().filter(|n| n.addr == Some(addr)))
            .flat_map(|n| &n.probes)
            .find_map(|p| p.name.as_ref())
            .filter(|name| !name.contains('\0') && name.len() <= MAX_NAME);
        if let Some(name) = name {
            let mut v = Vec::with_capacity(name.len() + 1);
            push_string(&mut v, name);
            p.set(n::NAME, &v);
        }
        p.write(&mut body);
    }

    // The link records, each with its one probe set.
    let node_at = |ttl: u8, addr: IpAddr| {
        hops.iter()
            .filter(|h| h.ttl == ttl)
            .flat_map(|h| &h.nodes)
            .find(|n| n.addr == Some(addr))
    };
    let mut budget = MAX_LB_PROBES;
    for (from, to, l) in links {
        use lb_link_param as k;
        let mut p = Params::default();
        p.set(k::FROM, &from.to_be_bytes());
        p.set(k::TO, &to.to_be_bytes());
        p.set(k::HOPC, &[1]);
        p.write(&mut body);

        let to_ttl = l.ttl.checked_add(1);
        let answered: Vec<&ProbeReply> = to_ttl
            .and_then(|t| node_at(t, l.to))
            .map(|n| n.probes.iter().collect())
            .unwrap_or_default();
        let from_flows: Vec<u16> = node_at(l.ttl, l.from)
            .map(|n| n.probes.iter().filter_map(|p| p.flow).collect())
            .unwrap_or_default();
        let through: Vec<usize> = (0..answered.len())
            .filter(|&i| answered[i].flow.is_some_and(|f| from_flows.contains(&f)))
            .collect();
        let chosen: Vec<usize> = if through.is_empty() {
            (0..answered.len()).collect()
        } else {
            through
        };
        let count = chosen.len().min(usize::from(u16::MAX)).min(budget);
        budget -= count;
        let mut set = Params::default();
        set.set(
            lb_probe_param::SET_PROBEC,
            &u16::try_from(count).unwrap_or(u16::MAX).to_be_bytes(),
        );
        set.write(&mut body);
        for &i in &chosen[..count] {
            let probe = answered[i];
            // Earlier probes of the same flow (and TTL) answered by this node.
            let attempt = answered[..i]
                .iter()
                .filter(|q| q.flow == probe.flow)
                .count();
            // `to_ttl` is set: `answered` is empty otherwise.
            let ttl = to_ttl.unwrap_or(u8::MAX);
            body.extend(tracelb_probe(probe, ttl, attempt, start, l.to, &mut table));
        }
    }
    object(OBJ_TRACELB, &body)
}

/// A tracelb probe record and its one reply (from `addr`), sent at `tx` (absent: the epoch).
fn tracelb_probe(
    r: &ProbeReply,
    ttl: u8,
    attempt: usize,
    tx: Option<[u8; 8]>,
    addr: IpAddr,
    table: &mut AddrTable,
) -> Vec<u8> {
    use lb_probe_param as q;
    use lb_reply_param as y;
    let tx = tx.unwrap_or([0; 8]);
    let mut out = Vec::new();
    let mut p = Params::default();
    p.set(q::TX, &tx);
    if let Some(f) = r.flow {
        p.set(q::FLOWID, &f.to_be_bytes());
    }
    p.set(q::TTL, &[ttl]);
    // The 256th and later probes of one flow at one TTL (never sent) share the last number.
    p.set(q::ATTEMPT, &[u8::try_from(attempt).unwrap_or(u8::MAX)]);
    p.set(q::RXC, &1u16.to_be_bytes());
    p.write(&mut out);

    let tcp = r.tcp_flags.is_some();
    let mut p = Params::default();
    p.set(
        y::RX,
        &timeval_plus(tx, r.rtt_ms.and_then(rtt_micros).unwrap_or(0)),
    );
    if let Some(t) = r.reply_ttl {
        p.set(y::TTL, &[t]);
    }
    let mut flags = 0;
    if r.reply_ttl.is_some() {
        flags |= LB_REPLY_FLAG_REPLY_TTL;
    }
    if tcp {
        flags |= LB_REPLY_FLAG_TCP;
    }
    p.set(y::FLAGS, &[flags]);
    if !tcp {
        if let (Some(ty), Some(code)) = (r.icmp_type, r.icmp_code) {
            p.set(y::ICMP_TC, &[ty, code]);
        }
    }
    if let Some(f) = r.tcp_flags {
        p.set(y::TCP_FLAGS, &[f]);
    }
    if !tcp && !r.mpls.is_empty() {
        p.set(y::ICMP_EXT, &mpls_extension(&r.mpls));
    }
    if !tcp {
        // Unlike a trace's hop record, a tracelb reply has no default of 1 to omit.
        if let Some(qt) = r.quoted_ttl {
            p.set(y::Q_TTL, &[qt]);
        }
    }
    p.set(y::FROM, &table.encode(addr));
    p.write(&mut out);
    out
}

/// Scamper's tracelb method for our protocol, and the lowest source and destination ports
/// of the probes (see [`tracelb_object`]).
fn tracelb_method<'a>(
    protocol: Protocol,
    probes: impl Iterator<Item = &'a ProbeReply>,
) -> (u8, Option<u16>, Option<u16>) {
    let (mut sports, mut dports) = (
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
    );
    for p in probes {
        sports.extend(p.src_port);
        dports.extend(p.dst_port);
    }
    let method = match protocol {
        Protocol::Icmp => LB_TYPE_ICMP_ECHO,
        Protocol::Tcp => LB_TYPE_TCP_SPORT,
        Protocol::Udp if dports.len() <= 1 && sports.len() > 1 => LB_TYPE_UDP_SPORT,
        Protocol::Udp => LB_TYPE_UDP_DPORT,
    };
    (method, sports.first().copied(), dports.first().copied())
}

/// The confidence scamper can express (its `-c` takes 95 or 99 %) nearest ours (a fraction,
/// 0.95; a value above 1 is taken for a percentage); None if it is not a number.
fn tracelb_confidence(c: f64) -> Option<u8> {
    if c.is_nan() {
        return None;
    }
    let percent = if c <= 1.0 { c * 100.0 } else { c };
    Some(if percent >= 97.0 { 99 } else { 95 })
}

/// A timeval plus some microseconds (the seconds saturate at the u32 maximum).
fn timeval_plus(tv: [u8; 8], micros: u32) -> [u8; 8] {
    let secs = u32::from_be_bytes([tv[0], tv[1], tv[2], tv[3]]);
    let usec = u32::from_be_bytes([tv[4], tv[5], tv[6], tv[7]]);
    let total = u64::from(usec) + u64::from(micros);
    let secs = u64::from(secs) + total / 1_000_000;
    let usec = u32::try_from(total % 1_000_000).unwrap_or(0);
    let secs = u32::try_from(secs).unwrap_or(u32::MAX);
    let mut out = [0; 8];
    out[..4].copy_from_slice(&secs.to_be_bytes());
    out[4..].copy_from_slice(&usec.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::Duration;

    use serde_json::Value;
    use svctr_core::{Algorithm, Hop};

    use super::*;

    /// 2026-12-05T15:26:34Z, the cycle times of the byte tests.
    fn fixed_clock() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_796_484_394)
    }

    use crate::testdata::{reply, udp4};

    /// IPv6 UDP classic that ran to its max TTL (2): one reply, to the second probe of TTL 1.
    fn udp6() -> TracerouteResult {
        TracerouteResult {
            destination: "2001:db8:2::2".parse().unwrap(),
            port: Some(33434),
            source: "2001:db8:1::2".parse().unwrap(),
            source_port: Some(40001),
            source_port_count: None,
            protocol: Protocol::Udp,
            strategy: Strategy::Classic,
            ip_version: 6,
            algorithm: Algorithm::Concurrent,
            start: "2026-12-05T15:26:34Z".into(),
            end: "2026-12-05T15:26:38Z".into(),
            stop_reason: StopReason::MaxTtl,
            hops: vec![
                Hop {
                    ttl: 1,
                    probes: vec![
                        ProbeReply::default(),
                        ProbeReply {
                            reply_ttl: Some(64),
                            ..reply("2001:db8:1::1", 1.0, (3, 0))
                        },
                    ],
                },
                Hop {
                    ttl: 2,
                    probes: vec![ProbeReply::default()],
                },
            ],
            probes_sent: 3,
            replies: 1,
        }
    }

    /// IPv4 TCP (SYN) whose destination answers with a SYN-ACK; a router quotes a rewritten
    /// TTL and an MPLS label.
    fn tcp4() -> TracerouteResult {
        let syn_ack = ProbeReply {
            addr: Some("198.19.1.2".parse().unwrap()),
            rtt_ms: Some(3.125),
            reply_ttl: Some(61),
            tcp_flags: Some(0x12),
            ..ProbeReply::default()
        };
        let mpls = ProbeReply {
            quoted_ttl: Some(2),
            mpls: vec![MplsEntry {
                label: 16_001,
                tc: 5,
                s: true,
                ttl: 1,
            }],
            ..reply("198.18.2.2", 1.75, (11, 0))
        };
        TracerouteResult {
            port: Some(443),
            protocol: Protocol::Tcp,
            hops: vec![
                Hop {
                    ttl: 1,
                    probes: vec![
                        reply("198.18.1.1", 0.5, (11, 0)),
                        reply("198.18.1.1", 0.25, (11, 0)),
                    ],
                },
                Hop {
                    ttl: 2,
                    probes: vec![ProbeReply::default(), mpls],
                },
                Hop {
                    ttl: 3,
                    probes: vec![syn_ack.clone(), syn_ack],
                },
            ],
            probes_sent: 6,
            replies: 5,
            ..udp4()
        }
    }

    #[test]
    fn flag_bytes_as_warts_numbers_them() {
        // Flag n is bit (n - 1) % 7 of byte (n - 1) / 7; all but the last byte have 0x80.
        let mut p = Params::default();
        p.set(1, &[0xaa]);
        p.set(7, &[0xbb]);
        p.set(8, &[0xcc]);
        p.set(16, &[0xdd, 0xee]);
        let mut out = Vec::new();
        p.write(&mut out);
        assert_eq!(
            out,
            [0xc1, 0x81, 0x02, 0x00, 0x05, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]
        );
        // No parameter: one zero byte and no length.
        let mut out = Vec::new();
        Params::default().write(&mut out);
        assert_eq!(out, [0]);
    }

    #[test]
    fn header_and_finish_bytes() {
        let mut w = Writer::with_clock(fixed_clock);
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            // List: magic, type 1, length 28.
            &[0x12, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00, 0x1c][..],
            &[0, 0, 0, 1], // warts list id 1
            &[0, 0, 0, 0], // list id of a person: 0
            b"service-traceroute\0",
            &[0x00], // no flags
            // Cycle start: magic, type 2, length 17.
            &[0x12, 0x05, 0x00, 0x02, 0x00, 0x00, 0x00, 0x11],
            &[0, 0, 0, 1], // warts cycle id 1
            &[0, 0, 0, 1], // warts list id 1
            &[0, 0, 0, 1], // cycle id of a person
            &[0x6b, 0x14, 0x2d, 0x2a], // start 1796484394
            &[0x00], // no flags
        ]
        .concat();
        assert_eq!(w.header(), expected);
        assert!(w.header().is_empty(), "one cycle start per cycle");
        #[rustfmt::skip]
        let stop: Vec<u8> = [
            // Cycle stop: magic, type 4, length 9: cycle 1, stop time, no flags.
            &[0x12, 0x05, 0x00, 0x04, 0x00, 0x00, 0x00, 0x09][..],
            &[0, 0, 0, 1],
            &[0x6b, 0x14, 0x2d, 0x2a],
            &[0x00],
        ]
        .concat();
        assert_eq!(w.finish(), stop);
        assert!(w.finish().is_empty());
    }

    #[test]
    fn ipv4_udp_paris_trace_bytes() {
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            // Object header: magic, type 6 (trace), body length 114.
            &[0x12, 0x05, 0x00, 0x06, 0x00, 0x00, 0x00, 0x72][..],
            // Trace flags: 1 2 5 6 7 | 8 9 11 13 14 | 15 19 | 23 26 27 (0x80: more follow).
            &[0xf3, 0xeb, 0x91, 0x32],
            &[0x00, 0x2a],             // parameters: 42 bytes
            &[0, 0, 0, 1],             // 1: list id
            &[0, 0, 0, 1],             // 2: cycle id
            &[0x6b, 0x14, 0x2d, 0x2a, 0x00, 0x0e, 0xf4, 0x5a], // 5: start 1796484394.980058
            &[0x01],                   // 6: stop reason COMPLETED
            &[0x00],                   // 7: stop data
            &[0x01],                   // 8: flags: all attempts
            &[0x02],                   // 9: attempts
            &[0x05],                   // 11: type udp-paris
            &[0x9c, 0x40],             // 13: sport 40000
            &[0x82, 0x9a],             // 14: dport 33434
            &[0x01],                   // 15: first TTL
            &[0x00, 0x03],             // 19: hop count
            &[0x00, 0x04],             // 23: probes sent
            &[4, 1, 198, 18, 1, 2],    // 26: src, defined (address #0)
            &[4, 1, 198, 19, 1, 2],    // 27: dst, defined (address #1)
            &[0x00, 0x03],             // hop records: 3 (not the unanswered probe)
            // Hop flags: 2 3 4 5 6 7 | - | 18; 16 bytes.
            &[0xfe, 0x80, 0x08, 0x00, 0x10],
            &[1, 63, 0x10, 0],         // probe TTL, reply TTL, flags: reply TTL, attempt 0
            &[0, 0, 0, 50],            // RTT 50 us
            &[11, 0],                  // ICMP time exceeded
            &[4, 1, 198, 18, 1, 1],    // 18: address, defined (#2)
            &[0xfe, 0x80, 0x08, 0x00, 0x10],
            &[2, 63, 0x10, 0],
            &[0, 0, 0x05, 0xdc],       // 1500 us
            &[3, 1],                   // host unreachable
            &[4, 1, 198, 18, 2, 2],    // #3
            &[0xfe, 0x80, 0x08, 0x00, 0x0f],
            &[3, 63, 0x10, 0],
            &[0, 0, 0x08, 0xca],       // 2250 us
            &[3, 3],                   // port unreachable
            &[0, 0, 0, 0, 1],          // the destination again: a reference to #1
            &[0x00, 0x00],             // end of trace
        ]
        .concat();
        let mut w = Writer::with_clock(fixed_clock);
        let header = w.header();
        assert_eq!(w.trace(&udp4()), expected);
        // The object header's length is the body's.
        assert_eq!(expected.len() - 8, 0x72);
        assert!(header.len() > 8);
    }

    #[test]
    fn ipv6_udp_classic_trace_bytes() {
        let src = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let dst = [0x20, 0x01, 0x0d, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let hop = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            // Object header: magic, type 6, body length 110.
            &[0x12, 0x05, 0x00, 0x06, 0x00, 0x00, 0x00, 0x6e][..],
            // Trace flags: 1 2 5 6 7 | 8 9 10 11 13 14 | 15 19 | 23 26 27.
            &[0xf3, 0xef, 0x91, 0x32],
            &[0x00, 0x43],             // parameters: 67 bytes
            &[0, 0, 0, 1],             // 1: list id
            &[0, 0, 0, 1],             // 2: cycle id
            &[0x6b, 0x14, 0x2d, 0x2a, 0, 0, 0, 0], // 5: start
            &[0x07],                   // 6: stop reason HOPLIMIT
            &[0x00],                   // 7: stop data
            &[0x01],                   // 8: flags: all attempts
            &[0x02],                   // 9: attempts
            &[0x02],                   // 10: hop limit (it stopped there)
            &[0x02],                   // 11: type udp (classic)
            &[0x9c, 0x41],             // 13: sport 40001
            &[0x82, 0x9a],             // 14: dport 33434
            &[0x01],                   // 15: first TTL
            &[0x00, 0x02],             // 19: hop count
            &[0x00, 0x03],             // 23: probes sent
            &[16, 2], &src,            // 26: src, IPv6 (type 2), defined (#0)
            &[16, 2], &dst,            // 27: dst (#1)
            &[0x00, 0x01],             // one hop record
            &[0xfe, 0x80, 0x08, 0x00, 0x1c], // flags 2-7, 18; 28 bytes
            &[1, 64, 0x10, 1],         // TTL 1, reply TTL 64, flags, attempt 1 (the second)
            &[0, 0, 0x03, 0xe8],       // 1000 us
            &[3, 0],                   // ICMPv6 time exceeded
            &[16, 2], &hop,            // 18: address (#2)
            &[0x00, 0x00],             // end of trace
        ]
        .concat();
        assert_eq!(expected.len() - 8, 0x6e);
        let mut w = Writer::with_clock(fixed_clock);
        w.header();
        assert_eq!(w.trace(&udp6()), expected);
    }

    #[test]
    fn any_input_gives_well_formed_objects() {
        let odd = ProbeReply {
            addr: Some("198.18.9.9".parse().unwrap()),
            rtt_ms: Some(f64::NAN),
            name: Some("a\0b".into()),
            mtu: Some(70_000),
            mpls: vec![
                MplsEntry {
                    label: u32::MAX,
                    tc: 0xff,
                    s: false,
                    ttl: 255,
                };
                5000
            ],
            ..reply("198.18.9.9", 0.0, (3, 4))
        };
        let mut r = udp4();
        r.start = "not a time".into();
        r.probes_sent = u32::MAX;
        r.hops = vec![
            Hop {
                ttl: 0,
                probes: vec![reply("198.18.0.1", 1.0, (11, 0))],
            },
            Hop {
                ttl: 255,
                probes: vec![
                    odd,
                    ProbeReply {
                        name: Some("x".repeat(200)),
                        ..reply("198.18.9.8", -5.0, (11, 0))
                    },
                    reply("198.18.9.7", f64::INFINITY, (11, 0)),
                ],
            },
            Hop {
                ttl: 9,
                probes: vec![reply("198.18.9.6", 1e300, (11, 0)); 300],
            },
        ];
        let mut w = Writer::with_clock(fixed_clock);
        w.header();
        let obj = w.trace(&r);
        let len = u32::from_be_bytes([obj[4], obj[5], obj[6], obj[7]]) as usize;
        assert_eq!(obj.len(), 8 + len);
        assert_eq!(rtt_micros(-5.0), Some(0));
        assert_eq!(rtt_micros(f64::INFINITY), Some(u32::MAX));
        assert_eq!(rtt_micros(f64::NAN), None);
        assert_eq!(timeval("not a time"), None);
        // An empty run is still a list, a cycle start and a cycle stop.
        let mut w = Writer::with_clock(fixed_clock);
        assert_eq!(w.finish().len(), 36 + 25 + 17);
        // A trace after the stop opens cycle 2 (no second list).
        let again = w.trace(&udp4());
        assert_eq!(&again[..2], &[0x12, 0x05]);
        assert_eq!(&again[2..4], &[0x00, 0x02]);
        assert_eq!(&again[8..12], &[0, 0, 0, 2]);
        // Readers skip what they cannot use, but the file must still parse: checked with
        // scamper in `scamper_reads_our_traces` for the ordinary cases, here for this one.
        if let Some(dir) = TempDir::new() {
            let path = dir.0.join("odd.warts");
            let mut w = Writer::with_clock(fixed_clock);
            let mut bytes = w.trace(&r);
            bytes.extend(w.finish());
            std::fs::write(&path, bytes).unwrap();
            if let Some(lines) = run_json(&path) {
                let trace = lines.iter().find(|v| v["type"] == "trace").unwrap();
                let hops = trace["hops"].as_array().unwrap();
                // 3 at TTL 255 and 300 at TTL 9; the reply at TTL 0 is left out.
                assert_eq!(hops.len(), 303);
                assert_eq!(trace["hop_count"], 255);
                // Names with a NUL or too long for scamper's JSON are left out; so is the
                // stack below 8 MPLS labels.
                assert!(hops.iter().all(|h| h.get("name").is_none()));
                let odd = hops.iter().find(|h| h["addr"] == "198.18.9.9").unwrap();
                assert_eq!(
                    odd["icmpext"][0]["mpls_labels"].as_array().unwrap().len(),
                    8
                );
                // (20211212 spells the key with a colon inside the quotes.)
                let nhmtu = odd.get("icmp_nhmtu").or_else(|| odd.get("icmp_nhmtu:"));
                assert_eq!(nhmtu, Some(&Value::from(65535)));
            }
        }
    }

    /// A directory under the system's temporary one, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Option<Self> {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir().join(format!(
                "svctr-warts-{}-{nanos}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&dir).ok()?;
            Some(Self(dir))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Runs a scamper tool on a file: None if it is not installed, which fails the test on
    /// CI (scripts/setup.sh installs scamper there) and skips it elsewhere.
    fn run_tool(tool: &str, path: &Path) -> Option<std::process::Output> {
        match Command::new(tool).arg(path).output() {
            Ok(out) => Some(out),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "{tool} is not installed (scripts/setup.sh installs scamper)"
                );
                eprintln!("skipped: {tool} is not installed (apt-get install scamper)");
                None
            }
            Err(e) => panic!("{tool}: {e}"),
        }
    }

    /// `sc_warts2json FILE`, one JSON value per line.
    fn run_json(path: &Path) -> Option<Vec<Value>> {
        let out = run_tool("sc_warts2json", path)?;
        assert!(
            out.status.success(),
            "sc_warts2json: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        Some(
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect(),
        )
    }

    #[test]
    fn scamper_reads_our_traces() {
        let results = [udp4(), tcp4(), udp6()];
        let dir = TempDir::new().expect("a temporary directory");
        let path = dir.0.join("traces.warts");
        let mut w = Writer::new();
        let mut bytes = w.header();
        for r in &results {
            bytes.extend(w.trace(r));
        }
        bytes.extend(w.finish());
        std::fs::write(&path, &bytes).unwrap();

        let Some(lines) = run_json(&path) else {
            return;
        };
        let types: Vec<&str> = lines.iter().filter_map(|v| v["type"].as_str()).collect();
        assert_eq!(
            types,
            ["cycle-start", "trace", "trace", "trace", "cycle-stop"]
        );
        let traces: Vec<&Value> = lines.iter().filter(|v| v["type"] == "trace").collect();
        let methods = ["udp-paris", "tcp", "udp"];
        for ((r, t), method) in results.iter().zip(&traces).zip(methods) {
            assert_eq!(t["src"], r.source.to_string());
            assert_eq!(t["dst"], r.destination.to_string());
            assert_eq!(t["method"], method);
            assert_eq!(t["hop_count"], r.hops.iter().map(|h| h.ttl).max().unwrap());
            assert_eq!(t["probe_count"], r.probes_sent);
            assert_eq!(t["sport"], r.source_port.unwrap());
            assert_eq!(t["dport"], r.port.unwrap());
            let answered: Vec<(u8, usize, &ProbeReply)> = r
                .hops
                .iter()
                .flat_map(|h| {
                    h.probes
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| p.addr.is_some())
                        .map(move |(i, p)| (h.ttl, i, p))
                })
                .collect();
            let hops = t["hops"].as_array().unwrap();
            assert_eq!(hops.len(), answered.len(), "{t}");
            for (h, (ttl, attempt, p)) in hops.iter().zip(answered) {
                assert_eq!(h["addr"], p.addr.unwrap().to_string());
                assert_eq!(h["probe_ttl"], ttl);
                // Readers number attempts from 1.
                assert_eq!(h["probe_id"], attempt + 1);
                let rtt = h["rtt"].as_f64().unwrap();
                assert!((rtt - p.rtt_ms.unwrap()).abs() <= 0.001, "{rtt} {p:?}");
                assert_eq!(h["reply_ttl"], p.reply_ttl.unwrap());
                if let Some(f) = p.tcp_flags {
                    assert_eq!(h["tcp_flags"], f);
                    assert!(h.get("icmp_type").is_none());
                } else {
                    assert_eq!(h["icmp_type"], p.icmp_type.unwrap());
                    assert_eq!(h["icmp_code"], p.icmp_code.unwrap());
                }
                if let Some(q) = p.quoted_ttl {
                    assert_eq!(h["icmp_q_ttl"], q);
                }
                if let Some(m) = p.mpls.first() {
                    let label = &h["icmpext"][0]["mpls_labels"][0];
                    assert_eq!(label["mpls_label"], m.label);
                    assert_eq!(label["mpls_exp"], m.tc);
                    assert_eq!(label["mpls_s"], u8::from(m.s));
                    assert_eq!(label["mpls_ttl"], m.ttl);
                }
            }
        }
        assert_eq!(traces[0]["stop_reason"], "COMPLETED");
        assert_eq!(traces[2]["stop_reason"], "HOPLIMIT");
        assert_eq!(traces[2]["hoplimit"], 2);
        assert_eq!(traces[0]["start"]["usec"], 980_058);

        let Some(out) = run_tool("sc_wartsdump", &path) else {
            return;
        };
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        for r in &results {
            for a in r
                .hops
                .iter()
                .flat_map(|h| h.probes.iter().filter_map(|p| p.addr))
            {
                assert!(text.contains(&a.to_string()), "{a} missing from:\n{text}");
            }
        }
    }

    /// A diamond found by a UDP discovery (source port fixed, destination port per flow):
    /// 198.18.1.1 at TTL 1, 198.18.11.2 (flow 0) and 198.18.12.2 (flow 1) at TTL 2 (flow 2
    /// unanswered), the destination 198.19.1.2 at TTL 3.
    fn diamond() -> svctr_core::MdaResult {
        let probe = |addr: &str, rtt: f64, tc: (u8, u8), tag: u16, flow: u16| {
            serde_json::json!({
                "addr": addr, "rtt_ms": rtt, "icmp_type": tc.0, "icmp_code": tc.1,
                "reply_ttl": 64 - tag, "quoted_ttl": 1, "tag": tag, "flow": flow,
                "src_port": 40000, "dst_port": 33434 + flow
            })
        };
        serde_json::from_value(serde_json::json!({
            "destination": "198.19.1.2", "source": "198.18.1.2", "protocol": "udp",
            "ip_version": 4, "start": "2026-12-05T15:26:34.980058Z",
            "end": "2026-12-05T15:26:36Z", "stop_reason": "completed", "confidence": 0.95,
            "hops": [
                {"ttl": 1, "nodes": [{"addr": "198.18.1.1", "probes": [
                    probe("198.18.1.1", 0.25, (11, 0), 1, 0),
                    probe("198.18.1.1", 0.375, (11, 0), 2, 1)]}]},
                {"ttl": 2, "nodes": [
                    {"addr": "198.18.11.2", "probes": [
                        probe("198.18.11.2", 1.125, (11, 0), 3, 0)]},
                    {"addr": "198.18.12.2", "probes": [
                        probe("198.18.12.2", 1.25, (11, 0), 4, 1)]},
                    {"addr": null, "probes": [
                        {"addr": null, "rtt_ms": null, "icmp_type": null, "icmp_code": null,
                         "tag": 5, "flow": 2, "src_port": 40000, "dst_port": 33436}]}]},
                {"ttl": 3, "nodes": [{"addr": "198.19.1.2", "probes": [
                    probe("198.19.1.2", 2.5, (3, 3), 6, 0),
                    probe("198.19.1.2", 2.625, (3, 3), 7, 1)]}]}
            ],
            "links": [
                {"ttl": 1, "from": "198.18.1.1", "to": "198.18.11.2"},
                {"ttl": 1, "from": "198.18.1.1", "to": "198.18.12.2"},
                {"ttl": 2, "from": "198.18.11.2", "to": "198.19.1.2"},
                {"ttl": 2, "from": "198.18.12.2", "to": "198.19.1.2"}
            ],
            "diamonds": [], "flows": 3, "probes_sent": 7, "replies": 6
        }))
        .unwrap()
    }

    #[test]
    fn tracelb_params_bytes() {
        #[rustfmt::skip]
        let params: Vec<u8> = [
            // Flags: 1 2 5 6 7 | 9 10 14 | 16 17 18 21 | 22 (0x80: another byte follows).
            &[0xf3, 0xc6, 0xce, 0x01][..],
            &[0x00, 0x2b],             // parameters: 43 bytes
            &[0, 0, 0, 1],             // 1: list id
            &[0, 0, 0, 1],             // 2: cycle id
            &[0x6b, 0x14, 0x2d, 0x2a, 0x00, 0x0e, 0xf4, 0x5a], // 5: start 1796484394.980058
            &[0x9c, 0x40],             // 6: sport 40000 (fixed)
            &[0x82, 0x9a],             // 7: dport 33434 (the lowest; it varies)
            &[0x01],                   // 9: type udp-dport
            &[0x01],                   // 10: first hop
            &[95],                     // 14: confidence 0.95 -> 95
            &[0x00, 0x04],             // 16: nodes
            &[0x00, 0x04],             // 17: links
            &[0, 0, 0, 7],             // 18: probes sent (u32)
            &[4, 1, 198, 18, 1, 2],    // 21: src, defined (address #0)
            &[4, 1, 198, 19, 1, 2],    // 22: dst, defined (address #1)
        ]
        .concat();
        let mut w = Writer::with_clock(fixed_clock);
        w.header();
        let obj = w.tracelb(&diamond());
        // Magic, type 8 (tracelb), then the body's length.
        assert_eq!(&obj[..4], &[0x12, 0x05, 0x00, 0x08]);
        let len = u32::from_be_bytes([obj[4], obj[5], obj[6], obj[7]]) as usize;
        assert_eq!(obj.len(), 8 + len);
        assert_eq!(&obj[8..8 + params.len()], &params[..]);
        // The first node record follows: flags 2 3 5 (flags 0, 2 links, 198.18.1.1 defined).
        assert_eq!(
            &obj[8 + params.len()..8 + params.len() + 12],
            &[0x16, 0x00, 0x09, 0x00, 0x00, 0x02, 4, 1, 198, 18, 1, 1]
        );
        assert_eq!(tracelb_confidence(0.99), Some(99));
        assert_eq!(tracelb_confidence(99.0), Some(99));
        assert_eq!(tracelb_confidence(0.5), Some(95));
        assert_eq!(tracelb_confidence(f64::NAN), None);
        assert_eq!(
            timeval_plus([0, 0, 0, 1, 0, 0x0f, 0x42, 0x3f], 2),
            [0, 0, 0, 2, 0, 0, 0, 1]
        );
    }

    #[test]
    fn tracelb_of_odd_input_is_well_formed() {
        let mut r = diamond();
        r.start = "not a time".into();
        r.confidence = f64::INFINITY;
        r.probes_sent = u32::MAX;
        // A link to a silence, one to an address of no node, a repeated one, one at TTL 255.
        let a: IpAddr = "198.18.1.1".parse().unwrap();
        let b: IpAddr = "198.18.11.2".parse().unwrap();
        r.graph.links.push(svctr_core::Link {
            ttl: 255,
            from: a,
            to: "203.0.113.1".parse().unwrap(),
        });
        r.graph.links.push(svctr_core::Link {
            ttl: 255,
            from: a,
            to: b,
        });
        r.graph.hops[0].nodes[0].probes[0].rtt_ms = Some(f64::NAN);
        r.graph.hops[0].nodes[0].probes[1].mpls = vec![
            MplsEntry {
                label: u32::MAX,
                tc: 0xff,
                s: true,
                ttl: 1
            };
            100
        ];
        r.graph.hops[2].nodes[0].probes[0].tcp_flags = Some(0x12);
        r.graph.hops[2].nodes[0].probes[1].flow = None;
        let mut w = Writer::with_clock(fixed_clock);
        w.header();
        let obj = w.tracelb(&r);
        let len = u32::from_be_bytes([obj[4], obj[5], obj[6], obj[7]]) as usize;
        assert_eq!(obj.len(), 8 + len);
        let empty = svctr_core::MdaResult {
            graph: svctr_core::PathGraph::default(),
            ..diamond()
        };
        let obj = w.tracelb(&empty);
        let len = u32::from_be_bytes([obj[4], obj[5], obj[6], obj[7]]) as usize;
        assert_eq!(obj.len(), 8 + len);
        if let Some(dir) = TempDir::new() {
            let path = dir.0.join("odd-lb.warts");
            let mut w = Writer::with_clock(fixed_clock);
            let mut bytes = w.tracelb(&r);
            bytes.extend(w.tracelb(&empty));
            bytes.extend(w.finish());
            std::fs::write(&path, bytes).unwrap();
            if let Some(lines) = run_json(&path) {
                let lb: Vec<&Value> = lines.iter().filter(|v| v["type"] == "tracelb").collect();
                assert_eq!(lb.len(), 2);
                assert_eq!(lb[0]["linkc"], 4);
                assert_eq!(lb[1]["nodec"], 0);
            }
        }
    }

    #[test]
    fn scamper_reads_our_tracelb() {
        let r = diamond();
        let dir = TempDir::new().expect("a temporary directory");
        let path = dir.0.join("tracelb.warts");
        let mut w = Writer::new();
        let mut bytes = w.header();
        bytes.extend(w.tracelb(&r));
        bytes.extend(w.finish());
        std::fs::write(&path, &bytes).unwrap();

        let Some(lines) = run_json(&path) else {
            return;
        };
        let types: Vec<&str> = lines.iter().filter_map(|v| v["type"].as_str()).collect();
        assert_eq!(types, ["cycle-start", "tracelb", "cycle-stop"]);
        let lb = lines.iter().find(|v| v["type"] == "tracelb").unwrap();
        assert_eq!(lb["src"], "198.18.1.2");
        assert_eq!(lb["dst"], "198.19.1.2");
        assert_eq!(lb["method"], "udp-dport");
        assert_eq!(lb["sport"], 40000);
        assert_eq!(lb["dport"], 33434);
        assert_eq!(lb["firsthop"], 1);
        assert_eq!(lb["confidence"], 95);
        assert_eq!(lb["probec"], 7);
        assert_eq!(lb["nodec"], 4);
        assert_eq!(lb["linkc"], 4);
        assert_eq!(lb["start"]["usec"], 980_058);

        // Ours: the answering addresses and the links.
        let ours_nodes: std::collections::BTreeSet<String> = r
            .graph
            .hops
            .iter()
            .flat_map(|h| h.addrs())
            .map(|a| a.to_string())
            .collect();
        let ours_links: std::collections::BTreeSet<(String, String)> = r
            .graph
            .links
            .iter()
            .map(|l| (l.from.to_string(), l.to.to_string()))
            .collect();
        // Scamper's JSON lists the nodes with links (not the destination, which has none),
        // each with its links' `to` nodes and the probes that showed them.
        let mut nodes = std::collections::BTreeSet::new();
        let mut links = std::collections::BTreeSet::new();
        let mut replies = 0;
        for node in lb["nodes"].as_array().unwrap() {
            let from = node["addr"].as_str().unwrap().to_string();
            nodes.insert(from.clone());
            for link in node["links"].as_array().unwrap() {
                for to in link.as_array().unwrap() {
                    let to_addr = to["addr"].as_str().unwrap().to_string();
                    nodes.insert(to_addr.clone());
                    links.insert((from.clone(), to_addr.clone()));
                    let ttl = r
                        .graph
                        .links
                        .iter()
                        .find(|l| l.from.to_string() == from && l.to.to_string() == to_addr)
                        .unwrap()
                        .ttl
                        + 1;
                    let hop = r.graph.hops.iter().find(|h| h.ttl == ttl).unwrap();
                    let node = hop
                        .nodes
                        .iter()
                        .find(|n| n.addr.map(|a| a.to_string()) == Some(to_addr.clone()))
                        .unwrap();
                    for probe in to["probes"].as_array().unwrap() {
                        assert_eq!(probe["ttl"], ttl);
                        let ours = node
                            .probes
                            .iter()
                            .find(|p| p.flow.map(u64::from) == probe["flowid"].as_u64())
                            .unwrap();
                        assert_eq!(probe["replyc"], 1);
                        let reply = &probe["replies"][0];
                        let rtt = reply["rtt"].as_f64().unwrap();
                        assert!(
                            (rtt - ours.rtt_ms.unwrap()).abs() <= 0.001,
                            "{rtt} {ours:?}"
                        );
                        assert_eq!(reply["ttl"], ours.reply_ttl.unwrap());
                        assert_eq!(reply["icmp_type"], ours.icmp_type.unwrap());
                        assert_eq!(reply["icmp_code"], ours.icmp_code.unwrap());
                        assert_eq!(reply["icmp_q_ttl"], 1);
                        replies += 1;
                    }
                }
            }
        }
        assert_eq!(nodes, ours_nodes);
        assert_eq!(links, ours_links);
        // One probe per link: the flow that showed it.
        assert_eq!(replies, 4);

        let Some(out) = run_tool("sc_wartsdump", &path) else {
            return;
        };
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        for a in &ours_nodes {
            assert!(text.contains(a.as_str()), "{a} missing from:\n{text}");
        }
    }
}
