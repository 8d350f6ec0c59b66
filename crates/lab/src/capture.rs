//! Packet captures inside the lab (`tcpdump` in a namespace), for tests that must see
//! what really went on the wire: flow labels, TCP segment boundaries, QUIC long
//! headers, DNS answers.
//!
//! tcpdump runs in immediate mode (`--immediate-mode -U`), writing a pcap file into a
//! temporary directory; [`Capture::stop`] interrupts it and parses the file (pcap,
//! Ethernet frames) with etherparse. This is a test aid, not the tool's capture path
//! (that is svctr-io, on libpcap). On the client's `eth0`, transmitted TCP appears as
//! the stack handed it to the device: with GSO on, one "packet" can be several
//! segments on the wire (see [`Lab::split_client_segments`]).

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};

use crate::util::{describe, kill_child, TempDir};
use crate::Lab;

/// How long tcpdump may take to start listening.
const CAPTURE_START: Duration = Duration::from_secs(10);

/// A running `tcpdump` in a lab namespace. Dropping it kills tcpdump and removes its
/// file.
pub struct Capture {
    child: Option<Child>,
    dir: TempDir,
    file: PathBuf,
    what: String,
    stderr: Option<JoinHandle<String>>,
}

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedPacket {
    /// Capture time since the Unix epoch.
    pub time: Duration,
    /// The Ethernet frame as captured (the whole frame: no snap length is set).
    pub frame: Vec<u8>,
}

/// The IP and transport header fields of a captured packet ([`CapturedPacket::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketInfo {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol / IPv6 next header (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub proto: u8,
    /// TTL or hop limit.
    pub ttl: u8,
    /// IPv6 flow label (0 for IPv4).
    pub flow_label: u32,
    /// TCP/UDP source port (0 otherwise).
    pub sport: u16,
    /// TCP/UDP destination port (0 otherwise).
    pub dport: u16,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10); 0 otherwise.
    pub tcp_flags: u8,
    /// TCP sequence number (0 otherwise).
    pub tcp_seq: u32,
    /// The TCP/UDP payload (the ICMP message for ICMP).
    pub payload: Vec<u8>,
}

impl CapturedPacket {
    /// Parses the frame's IP and transport headers; `None` for non-IP frames or
    /// frames etherparse rejects.
    pub fn parse(&self) -> Option<PacketInfo> {
        let p = SlicedPacket::from_ethernet(&self.frame).ok()?;
        let (src, dst, proto, ttl, flow_label) = match p.net? {
            NetSlice::Ipv4(ip) => {
                let h = ip.header();
                (
                    IpAddr::V4(h.source_addr()),
                    IpAddr::V4(h.destination_addr()),
                    h.protocol().0,
                    h.ttl(),
                    0,
                )
            }
            NetSlice::Ipv6(ip) => {
                let h = ip.header();
                (
                    IpAddr::V6(h.source_addr()),
                    IpAddr::V6(h.destination_addr()),
                    ip.payload().ip_number.0,
                    h.hop_limit(),
                    u32::from(h.flow_label()),
                )
            }
            _ => return None,
        };
        let mut info = PacketInfo {
            src,
            dst,
            proto,
            ttl,
            flow_label,
            sport: 0,
            dport: 0,
            tcp_flags: 0,
            tcp_seq: 0,
            payload: Vec::new(),
        };
        match p.transport {
            Some(TransportSlice::Tcp(t)) => {
                info.sport = t.source_port();
                info.dport = t.destination_port();
                info.tcp_seq = t.sequence_number();
                let flags = [t.fin(), t.syn(), t.rst(), t.psh(), t.ack()];
                info.tcp_flags = flags
                    .iter()
                    .enumerate()
                    .map(|(i, &f)| u8::from(f) << i)
                    .sum();
                info.payload = t.payload().to_vec();
            }
            Some(TransportSlice::Udp(u)) => {
                info.sport = u.source_port();
                info.dport = u.destination_port();
                info.payload = u.payload().to_vec();
            }
            Some(TransportSlice::Icmpv4(i)) => info.payload = i.slice().to_vec(),
            Some(TransportSlice::Icmpv6(i)) => info.payload = i.slice().to_vec(),
            _ => {}
        }
        Some(info)
    }
}

impl Lab {
    /// Starts `tcpdump -i <iface> <filter>` in namespace `ns` (e.g.
    /// `lab.capture(lab.client_ns(), "eth0", "udp port 443")`) and returns once it is
    /// listening. [`Capture::stop`] returns the packets.
    pub fn capture(&self, ns: &str, iface: &str, filter: &str) -> Result<Capture> {
        let dir = TempDir::new("cap")?;
        let file = dir.path().join("cap.pcap");
        let mut c = self.command(ns, "tcpdump");
        c.args([
            "-i",
            iface,
            "-n",
            "-Z",
            "root",
            "--immediate-mode",
            "-U",
            "-w",
        ])
        .arg(&file);
        if !filter.trim().is_empty() {
            c.arg(filter);
        }
        let what = describe(&c);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .with_context(|| format!("cannot start `{what}`"))?;
        let pipe = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel::<()>();
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            let mut tx = Some(tx);
            for line in BufReader::new(pipe).lines().map_while(|l| l.ok()) {
                if line.contains("listening on") {
                    if let Some(t) = tx.take() {
                        let _ = t.send(());
                    }
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let mut cap = Capture {
            child: Some(child),
            dir,
            file,
            what,
            stderr: Some(stderr),
        };
        if rx.recv_timeout(CAPTURE_START).is_err() {
            let log = cap.finish();
            bail!("`{}` did not start listening: {log}", cap.what);
        }
        Ok(cap)
    }
}

impl Capture {
    /// Stops tcpdump (SIGINT after a short grace period, so that packets just sent
    /// are written) and returns every captured frame, in capture order.
    pub fn stop(mut self) -> Result<Vec<CapturedPacket>> {
        std::thread::sleep(Duration::from_millis(100));
        let log = self.finish();
        let data = std::fs::read(&self.file)
            .with_context(|| format!("reading the capture of `{}`: {log}", self.what))?;
        parse_pcap(&data).with_context(|| format!("capture of `{}`", self.what))
    }

    /// The directory holding the pcap file (removed on drop).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Interrupts tcpdump, waits for it (bounded) and returns its stderr.
    fn finish(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        kill_child(&mut child);
                        break;
                    }
                }
            }
        }
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Parses a pcap file (either byte order, microsecond or nanosecond timestamps).
pub(crate) fn parse_pcap(data: &[u8]) -> Result<Vec<CapturedPacket>> {
    if data.len() < 24 {
        bail!("pcap file of {} bytes has no header", data.len());
    }
    let magic = u32::from_le_bytes(data[..4].try_into().expect("4 bytes"));
    let (le, nanos) = match magic {
        0xa1b2_c3d4 => (true, false),
        0xa1b2_3c4d => (true, true),
        0xd4c3_b2a1 => (false, false),
        0x4d3c_b2a1 => (false, true),
        m => bail!("not a pcap file (magic {m:#010x})"),
    };
    let u32_at = |b: &[u8], i: usize| -> u32 {
        let a: [u8; 4] = b[i..i + 4].try_into().expect("4 bytes");
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let linktype = u32_at(data, 20);
    if linktype != 1 {
        bail!("pcap link type {linktype}, expected 1 (Ethernet)");
    }
    let mut out = Vec::new();
    let mut i = 24;
    while i + 16 <= data.len() {
        let (sec, frac, incl) = (u32_at(data, i), u32_at(data, i + 4), u32_at(data, i + 8));
        let start = i + 16;
        let end = start
            .checked_add(incl as usize)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| anyhow!("truncated pcap record at offset {i}"))?;
        let time = Duration::from_secs(u64::from(sec))
            + if nanos {
                Duration::from_nanos(u64::from(frac))
            } else {
                Duration::from_micros(u64::from(frac))
            };
        out.push(CapturedPacket {
            time,
            frame: data[start..end].to_vec(),
        });
        i = end;
    }
    Ok(out)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn pcap_records() {
        let mut f = Vec::new();
        f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        f.extend_from_slice(&[2, 0, 4, 0]);
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&262_144u32.to_le_bytes());
        f.extend_from_slice(&1u32.to_le_bytes());
        // One IPv6/UDP frame: dst mac, src mac, ethertype 0x86dd.
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x86, 0xdd]);
        let s: std::net::Ipv6Addr = "2001:2:0:1801::2".parse().unwrap();
        let d: std::net::Ipv6Addr = "2001:2:0:1901::2".parse().unwrap();
        frame.extend_from_slice(&[0x60, 0x0a, 0xbc, 0xde, 0, 10, 17, 64]);
        frame.extend_from_slice(&s.octets());
        frame.extend_from_slice(&d.octets());
        frame.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb, 0, 10, 0, 0, 0xc3, 0]);
        f.extend_from_slice(&5u32.to_le_bytes());
        f.extend_from_slice(&7u32.to_le_bytes());
        f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        f.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        f.extend_from_slice(&frame);
        let pkts = parse_pcap(&f).unwrap();
        assert_eq!(pkts.len(), 1);
        assert_eq!(pkts[0].time, Duration::new(5, 7000));
        let info = pkts[0].parse().unwrap();
        assert_eq!((info.src, info.dst), (IpAddr::V6(s), IpAddr::V6(d)));
        assert_eq!((info.proto, info.ttl, info.flow_label), (17, 64, 0xabcde));
        assert_eq!(
            (info.sport, info.dport, info.payload.as_slice()),
            (40000, 443, &[0xc3, 0][..])
        );
        assert!(parse_pcap(&f[..30]).unwrap().is_empty());
        assert!(parse_pcap(&f[..50]).is_err());
    }
}
