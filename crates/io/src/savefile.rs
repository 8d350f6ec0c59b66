//! `--pcap FILE`: the run's own packets, every probe as it left and every reply matched to a
//! probe, in a pcap file that tshark, Wireshark and tcpdump read. Each packet is kept with
//! its kernel timestamp (nanoseconds: the file is pcap's nanosecond variant), the one the
//! RTTs are computed from.
//!
//! Which packets are the run's is known, not guessed by a filter. A probe is kept when the
//! capture shows it leaving: the driver notes each probe it sends (destination, TTL and its
//! transport bytes, which are ours to the byte) and the capture's copy with the same is the
//! probe, kept with the kernel's timestamp. A reply is kept when the engine matched it: the
//! driver compares the machine's count of matched replies before and after handing it each
//! packet (`Machine::replies_matched`). So the file holds every probe the capture saw leave
//! and exactly the replies the results count, and nothing of the application's traffic.
//!
//! The packets are IP datagrams without a link-layer header (LINKTYPE_RAW, both families in
//! one file), cut at the capture's snap length like the capture itself
//! ([`crate::SNAPLEN`]); each record's original length is the datagram's own.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Error;

/// libpcap's DLT_RAW on Linux (12), which libpcap writes as LINKTYPE_RAW (101) in the file.
const DLT_RAW: i32 = 12;

/// Transport bytes of a probe compared with a captured copy: the headers and the start of
/// the payload, enough to tell apart probes that differ in a checksum, a sequence number or
/// a port.
const SIGNATURE_BYTES: usize = 48;

/// A sent probe's copy not captured after this long never will be (the capture dropped it).
const PENDING_FOR: Duration = Duration::from_secs(10);

/// What identifies a probe's captured copy: destination, TTL, and the transport bytes (their
/// first [`SIGNATURE_BYTES`] and how many), kept inline: no allocation per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Signature {
    dst: IpAddr,
    ttl: u8,
    len: u8,
    bytes: [u8; SIGNATURE_BYTES],
}

impl Signature {
    fn new(dst: IpAddr, ttl: u8, transport: &[u8]) -> Self {
        let mut bytes = [0; SIGNATURE_BYTES];
        let n = transport.len().min(SIGNATURE_BYTES);
        bytes[..n].copy_from_slice(&transport[..n]);
        Self {
            dst,
            ttl,
            len: n as u8,
            bytes,
        }
    }
}

/// Probes and replies written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) probes: u64,
    pub(crate) replies: u64,
}

/// The open packet file and what it holds.
pub(crate) struct PacketLog {
    file: pcap::Savefile,
    path: PathBuf,
    /// Probes sent whose capture has not come yet (a count per signature: the flow tracer's
    /// IPv4 probes of one TTL may differ in their IP identification only).
    pending: HashMap<Signature, u32>,
    /// The same, oldest first, to forget what the capture never showed.
    sent: VecDeque<(Instant, Signature)>,
    /// The machine's count of matched replies after the last packet handed to it.
    replies_before: u64,
    pub(crate) written: Written,
}

impl PacketLog {
    /// Creates (or truncates) `path`. Called while setting up, before privileges are dropped.
    pub(crate) fn create(path: &Path) -> Result<Self, Error> {
        let err = |source| Error::Savefile {
            path: path.display().to_string(),
            source,
        };
        let dead =
            pcap::Capture::dead_with_precision(pcap::Linktype(DLT_RAW), pcap::Precision::Nano)
                .map_err(err)?;
        let file = dead.savefile(path).map_err(err)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            pending: HashMap::new(),
            sent: VecDeque::new(),
            replies_before: 0,
            written: Written::default(),
        })
    }

    /// A probe was sent (`ip`: the datagram as built, to `dst` with `ttl`).
    pub(crate) fn sent(&mut self, now: Instant, dst: IpAddr, ttl: u8, ip: &[u8]) {
        while let Some((at, _)) = self.sent.front() {
            if now.duration_since(*at) < PENDING_FOR {
                break;
            }
            if let Some((_, sig)) = self.sent.pop_front() {
                self.forget(&sig);
            }
        }
        let Some(t) = transport(ip) else { return };
        let sig = Signature::new(dst, ttl, t);
        *self.pending.entry(sig).or_default() += 1;
        self.sent.push_back((now, sig));
    }

    fn forget(&mut self, sig: &Signature) -> bool {
        match self.pending.get_mut(sig) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.pending.remove(sig);
            }
            None => return false,
        }
        true
    }

    /// After the machine took `ip` (captured at `ts`), with its count of matched replies now
    /// `replies`: keeps the packet if it is a probe leaving or a matched reply.
    pub(crate) fn after(&mut self, replies: Option<u64>, ts: SystemTime, ip: &[u8]) {
        let reply = replies.is_some_and(|r| r > self.replies_before);
        if let Some(r) = replies {
            self.replies_before = r;
        }
        let probe = !reply && !self.pending.is_empty() && {
            let sig = signature(ip);
            sig.is_some_and(|s| self.forget(&s))
        };
        if !(probe || reply) {
            return;
        }
        let since = ts.duration_since(UNIX_EPOCH).unwrap_or_default();
        let caplen = u32::try_from(ip.len()).unwrap_or(u32::MAX);
        let header = pcap::PacketHeader {
            ts: libc::timeval {
                tv_sec: since.as_secs() as libc::time_t,
                // The nanosecond file format reads this field as nanoseconds.
                tv_usec: since.subsec_nanos() as libc::suseconds_t,
            },
            caplen,
            len: caplen.max(original_len(ip)),
        };
        self.file.write(&pcap::Packet::new(&header, ip));
        if probe {
            self.written.probes += 1;
        } else {
            self.written.replies += 1;
        }
    }

    /// Flushes the file (at the end of the run).
    pub(crate) fn finish(&mut self) -> Result<(), Error> {
        self.file.flush().map_err(|source| Error::Savefile {
            path: self.path.display().to_string(),
            source,
        })
    }
}

/// The transport bytes of an IP datagram of ours (no IPv4 options, no IPv6 extension
/// headers).
fn transport(ip: &[u8]) -> Option<&[u8]> {
    let start = match ip.first()? >> 4 {
        4 => usize::from(ip[0] & 0x0f) * 4,
        6 => 40,
        _ => return None,
    };
    ip.get(start..)
}

/// A captured packet's signature: destination, TTL (hop limit) and transport bytes.
fn signature(ip: &[u8]) -> Option<Signature> {
    let (dst, ttl): (IpAddr, u8) = match ip.first()? >> 4 {
        4 => {
            let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (d.into(), *ip.get(8)?)
        }
        6 => {
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (d.into(), *ip.get(7)?)
        }
        _ => return None,
    };
    Some(Signature::new(dst, ttl, transport(ip)?))
}

/// The datagram's length from its own header (IPv4 total length; IPv6 payload length plus
/// the 40-byte header), 0 if the bytes are too short to say.
fn original_len(ip: &[u8]) -> u32 {
    match ip.first().map(|b| b >> 4) {
        Some(4) if ip.len() >= 4 => u32::from(u16::from_be_bytes([ip[2], ip[3]])),
        Some(6) if ip.len() >= 6 => 40 + u32::from(u16::from_be_bytes([ip[4], ip[5]])),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_length_of_either_family() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[2..4].copy_from_slice(&1500u16.to_be_bytes());
        assert_eq!(original_len(&v4), 1500);
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&20u16.to_be_bytes());
        assert_eq!(original_len(&v6), 60);
        assert_eq!(original_len(&[0x45]), 0);
        assert_eq!(original_len(&[]), 0);
    }

    fn v4_probe(ttl: u8, ident: u16, sport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[4..6].copy_from_slice(&ident.to_be_bytes());
        p[8] = ttl;
        p[9] = 17;
        p[12..16].copy_from_slice(&[198, 18, 1, 2]);
        p[16..20].copy_from_slice(&[198, 19, 1, 2]);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&33434u16.to_be_bytes());
        p
    }

    /// The probes whose copy the capture shows and the replies the machine matched are
    /// written, nothing else, and the file is a pcap file of nanosecond timestamps and raw
    /// IP that libpcap reads back.
    #[test]
    fn keeps_the_probes_leaving_and_the_matched_replies() {
        let dir = std::env::temp_dir().join(format!("svctr-savefile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.pcap");
        let mut log = PacketLog::create(&path).unwrap();
        let dst: IpAddr = "198.19.1.2".parse().unwrap();
        let now = Instant::now();
        // Two probes of one TTL that differ in their IP identification only, one more.
        let (a, b, c) = (
            v4_probe(1, 7, 40000),
            v4_probe(1, 8, 40000),
            v4_probe(2, 9, 40000),
        );
        for p in [&a, &b, &c] {
            log.sent(now, dst, p[8], p);
        }
        let ts = UNIX_EPOCH + Duration::new(1_796_484_394, 123_456_789);
        log.after(Some(0), ts, &a); // probe 1 leaving
        log.after(Some(0), ts, &v4_probe(64, 1, 40000)); // the application's: TTL 64
        log.after(Some(0), ts, &v4_probe(2, 9, 40001)); // another port: not ours
        log.after(Some(1), ts, &[0x45; 20]); // a reply the machine matched
        log.after(Some(1), ts, &[0x45; 20]); // a reply it did not
        log.after(Some(1), ts, &b); // probe 2 (same signature as probe 1)
        log.after(Some(1), ts, &b); // a third copy of that signature: no probe left
        log.after(None, ts, &c); // probe 3, from a machine that counts no replies
        log.finish().unwrap();
        assert_eq!(
            log.written,
            Written {
                probes: 3,
                replies: 1
            }
        );
        assert!(log.pending.is_empty());
        drop(log);
        // The file header (host byte order): the nanosecond magic, and LINKTYPE_RAW.
        let bytes = std::fs::read(&path).unwrap();
        let word = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!(word(0), 0xa1b2_3c4d);
        assert_eq!(word(20), 101);
        let mut back =
            pcap::Capture::from_file_with_precision(&path, pcap::Precision::Nano).unwrap();
        assert_eq!(back.get_datalink(), pcap::Linktype(DLT_RAW));
        let mut n = 0;
        while let Ok(p) = back.next_packet() {
            assert_eq!(p.header.ts.tv_sec, 1_796_484_394);
            assert_eq!(p.header.ts.tv_usec, 123_456_789);
            n += 1;
        }
        assert_eq!(n, 4);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A probe whose copy never came is forgotten after a while, not kept for ever.
    #[test]
    fn uncaptured_probes_are_forgotten() {
        let dir = std::env::temp_dir().join(format!("svctr-savefile-f-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut log = PacketLog::create(&dir.join("run.pcap")).unwrap();
        let dst: IpAddr = "198.19.1.2".parse().unwrap();
        let t0 = Instant::now();
        log.sent(t0, dst, 1, &v4_probe(1, 1, 40000));
        log.sent(t0 + PENDING_FOR, dst, 2, &v4_probe(2, 2, 40000));
        assert_eq!(log.pending.len(), 1);
        assert_eq!(log.sent.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
