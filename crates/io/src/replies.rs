//! Replies over raw sockets, for runs of up to [`RAW_TARGETS`] destinations: no packet socket.
//!
//! Why: a libpcap capture is an AF_PACKET socket, and the kernel waits for an RCU grace period
//! (`synchronize_net()`) both when its ring is set up and when it is
//! closed: about 12 ms and 20 ms on this lab's kernel, strace shows, against ~2 ms for all the
//! rest of a one-destination trace. Raw sockets cost neither. What they give up: the kernel
//! timestamp of each probe leaving (a probe's send time is then taken in user space right
//! before `sendto`, as Debian traceroute does: the send system call, a few µs, counts in the
//! RTT). Measured in the lab (BENCHMARKS.md), they also keep up with tens of thousands of
//! destinations as well as a capture's memory-mapped ring (no copy of every probe leaving to
//! make and read), so [`crate::probing`] uses them up to [`RAW_TARGETS`] destinations (the
//! default `--parallel`), where a capture's fixed ~30 ms still shows.
//!
//! One socket per IP version and protocol a reply can come in (ICMP, and TCP for the
//! destination's SYN-ACK or RST). The kernel filter is the capture's own (module `filter`,
//! without the clauses for our probes leaving), compiled by libpcap for raw IP packets and attached
//! with `SO_ATTACH_FILTER`:
//! - an IPv4 raw socket filters the packet from its IP header on (raw(7): received packets
//!   include the IP header), so the program runs as compiled;
//! - an IPv6 raw socket holds the packet from its transport header on (RFC 3542 section 3:
//!   no IPv6 header is passed), so each load of the IPv6 header (offsets 0-39) is rebased on
//!   the network header (`SKF_NET_OFF`, always linear memory) and each load past it moved
//!   back by 40 bytes (relative to the transport header, where the kernel also reads paged
//!   data). Indirect loads would not survive that: a program with one is refused and the run
//!   uses a capture.
//!
//! The engines read whole IP packets, so an IPv6 header is rebuilt from what the kernel says
//! about each packet (RFC 3542: `IPV6_PKTINFO` for the destination, `IPV6_HOPLIMIT`,
//! `IPV6_TCLASS`; the flow label is not told, and no engine reads it in a reply). Receive
//! timestamps are the kernel's (`SO_TIMESTAMPNS`), drops of a full socket buffer are counted
//! (`SO_RXQ_OVFL`).

use std::io::IoSliceMut;
use std::net::Ipv6Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, SystemTime};

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
};
use socket2::{Domain, SockFilter, Socket, Type};
use svctr_core::Protocol;

use crate::Error;

/// Up to this many destinations a run receives over raw sockets, beyond it over a capture.
pub const RAW_TARGETS: usize = 1024;

/// `SKF_NET_OFF` of linux/filter.h: a load at this offset plus k reads the network header's
/// byte k.
const SKF_NET_OFF: u32 = (-0x0010_0000i32) as u32;
/// The classic BPF classes and modes used below (linux/bpf_common.h).
const BPF_CLASS_MASK: u16 = 0x07;
const BPF_LD: u16 = 0x00;
const BPF_LDX: u16 = 0x01;
const BPF_MODE_MASK: u16 = 0xe0;
const BPF_ABS: u16 = 0x20;
const BPF_IND: u16 = 0x40;
const BPF_LEN: u16 = 0x80;
const BPF_MSH: u16 = 0xa0;
/// The IPv6 header's length: where an IPv6 raw socket's data begins.
const IPV6_HEADER: u32 = 40;
/// Receive buffer of each socket per destination (a small reply takes about 1 KiB of it,
/// kernel overhead included), from 1 MiB to 32 MiB: the replies to a turn's burst of
/// probes (see `run::SEND_MAX`) and to the probes of a destination in flight, with room.
const RCVBUF_PER_TARGET: usize = 64 << 10;
const RCVBUF_MIN: usize = 1 << 20;
const RCVBUF_MAX: usize = 32 << 20;

/// `expr` compiled by libpcap for raw IP packets, as (code, jt, jf, k).
fn compile(expr: &str) -> Result<Vec<(u16, u8, u8, u32)>, Error> {
    let filter_error = |e| Error::Filter {
        filter: expr.to_string(),
        source: e,
    };
    let dead = pcap::Capture::dead(pcap::Linktype(12)).map_err(filter_error)?;
    let prog = dead.compile(expr, true).map_err(filter_error)?;
    // The pcap crate shows an instruction only as text: "code jt jf k".
    prog.get_instructions()
        .iter()
        .map(|i| {
            let text = i.to_string();
            let f: Vec<&str> = text.split(' ').collect();
            let parsed = match f[..] {
                [c, t, e, k] => Some((c.parse(), t.parse(), e.parse(), k.parse())),
                _ => None,
            };
            match parsed {
                Some((Ok(c), Ok(t), Ok(e), Ok(k))) => Ok((c, t, e, k)),
                _ => Err(Error::Unsupported(format!(
                    "unexpected BPF instruction from libpcap: {text}"
                ))),
            }
        })
        .collect()
}

/// A program compiled for packets from their IPv6 header on, rewritten for an IPv6 raw
/// socket's data (see the module doc); `None` if it has a load that cannot be rewritten.
fn rebase_v6(prog: &[(u16, u8, u8, u32)]) -> Option<Vec<(u16, u8, u8, u32)>> {
    prog.iter()
        .map(|&(code, jt, jf, k)| {
            let class = code & BPF_CLASS_MASK;
            if class != BPF_LD && class != BPF_LDX {
                return Some((code, jt, jf, k));
            }
            match code & BPF_MODE_MASK {
                BPF_ABS if k < IPV6_HEADER => Some((code, jt, jf, SKF_NET_OFF + k)),
                BPF_ABS => Some((code, jt, jf, k - IPV6_HEADER)),
                // The packet's length and any load relative to X are off by the header.
                BPF_IND | BPF_LEN | BPF_MSH => None,
                _ => Some((code, jt, jf, k)),
            }
        })
        .collect()
}

/// The kernel programs for the two families from the run's capture filter text for each
/// (`None`: no destination of that family); `Ok(None)` if the IPv6 one cannot be rewritten.
pub(crate) struct Programs {
    v4: Option<Vec<SockFilter>>,
    v6: Option<Vec<SockFilter>>,
}

impl Programs {
    pub(crate) fn new(v4: Option<&str>, v6: Option<&str>) -> Result<Option<Self>, Error> {
        let to_sock = |p: Vec<(u16, u8, u8, u32)>| -> Vec<SockFilter> {
            p.into_iter()
                .map(|(c, t, f, k)| SockFilter::new(c, t, f, k))
                .collect()
        };
        let v4 = v4.map(compile).transpose()?.map(to_sock);
        let v6 = match v6.map(compile).transpose()? {
            Some(p) => match rebase_v6(&p) {
                Some(p) => Some(to_sock(p)),
                None => return Ok(None),
            },
            None => None,
        };
        Ok(Some(Self { v4, v6 }))
    }
}

/// One raw socket that receives.
struct Inbound {
    sock: Socket,
    v6: bool,
    /// Its protocol: the IPv6 header rebuilt says so.
    protocol: u8,
    /// The kernel's count of packets dropped at this socket (`SO_RXQ_OVFL`), as last seen.
    dropped: u32,
}

/// The raw sockets of a run's replies.
pub(crate) struct RawReplies {
    socks: Vec<Inbound>,
    received: u32,
    buf: Vec<u8>,
    packet: Vec<u8>,
    cmsg: Vec<u8>,
}

fn socket_error(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            Error::Privilege {
                what: "receiving replies (raw socket)".into(),
            }
        } else {
            Error::Socket {
                what: what.to_string(),
                source: e,
            }
        }
    }
}

fn nix_error(what: &str) -> impl Fn(nix::Error) -> Error + '_ {
    move |e| Error::Socket {
        what: what.to_string(),
        source: e.into(),
    }
}

impl RawReplies {
    /// Opens the sockets for replies to probes of `protocol`, of the families `programs` has,
    /// bound to `iface` if given.
    pub(crate) fn open(
        iface: Option<&str>,
        protocol: Protocol,
        programs: &Programs,
        targets: usize,
    ) -> Result<Self, Error> {
        let rcvbuf = targets
            .saturating_mul(RCVBUF_PER_TARGET)
            .clamp(RCVBUF_MIN, RCVBUF_MAX);
        let mut socks = Vec::new();
        for (v6, prog) in [(false, &programs.v4), (true, &programs.v6)] {
            let Some(prog) = prog else { continue };
            let icmp = if v6 {
                libc::IPPROTO_ICMPV6
            } else {
                libc::IPPROTO_ICMP
            };
            // UDP and ICMP probes are answered in ICMP (an error, an echo reply); TCP ones
            // by the destination in TCP too (its SYN-ACK or RST).
            let mut protos = vec![icmp];
            if protocol == Protocol::Tcp {
                protos.push(libc::IPPROTO_TCP);
            }
            for proto in protos {
                socks.push(Self::open_one(iface, v6, proto, prog, rcvbuf)?);
            }
        }
        Ok(Self {
            socks,
            received: 0,
            buf: vec![0; 65536],
            packet: Vec::with_capacity(65536 + 40),
            cmsg: nix::cmsg_space!(
                nix::sys::time::TimeSpec,
                libc::in6_pktinfo,
                libc::c_int,
                libc::c_int,
                u32
            ),
        })
    }

    fn open_one(
        iface: Option<&str>,
        v6: bool,
        proto: i32,
        prog: &[SockFilter],
        rcvbuf: usize,
    ) -> Result<Inbound, Error> {
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let sock = Socket::new(domain, Type::RAW, Some(socket2::Protocol::from(proto)))
            .map_err(socket_error("opening a raw socket for replies"))?;
        // The filter first: packets queued before it would pass unfiltered (the engine would
        // still drop them, but they cost a read).
        sock.attach_filter(prog)
            .map_err(socket_error("attaching the kernel filter to a raw socket"))?;
        crate::sender::bind_device(&sock, iface.filter(|i| *i != "any"))?;
        sock.set_nonblocking(true)
            .map_err(socket_error("setting a raw socket non-blocking"))?;
        // Root may exceed net.core.rmem_max; others get what it allows.
        if setsockopt(&sock, sockopt::RcvBufForce, &rcvbuf).is_err() {
            let _ = sock.set_recv_buffer_size(rcvbuf);
        }
        let what = "asking for kernel timestamps on a raw socket";
        setsockopt(&sock, sockopt::ReceiveTimestampns, &true).map_err(nix_error(what))?;
        setsockopt(&sock, sockopt::RxqOvfl, &1).map_err(nix_error("SO_RXQ_OVFL"))?;
        if v6 {
            let what = "asking for IPv6 packet information on a raw socket";
            setsockopt(&sock, sockopt::Ipv6RecvPacketInfo, &true).map_err(nix_error(what))?;
            setsockopt(&sock, sockopt::Ipv6RecvHopLimit, &true).map_err(nix_error(what))?;
            setsockopt(&sock, sockopt::Ipv6RecvTClass, &true).map_err(nix_error(what))?;
        }
        // Anything queued between socket(2) and the filter: drop it.
        let mut scratch = [0u8; 64];
        while nix::sys::socket::recv(sock.as_raw_fd(), &mut scratch, MsgFlags::MSG_DONTWAIT).is_ok()
        {
        }
        Ok(Inbound {
            sock,
            v6,
            protocol: proto as u8,
            dropped: 0,
        })
    }

    pub(crate) fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.socks.iter().map(|s| s.sock.as_fd())
    }

    /// Reads the packets available now, at most `max`; calls `f(timestamp, ip_packet)` for
    /// each.
    pub(crate) fn drain(
        &mut self,
        max: usize,
        mut f: impl FnMut(SystemTime, &[u8]),
    ) -> std::io::Result<usize> {
        let mut n = 0;
        for s in &mut self.socks {
            while n < max {
                let got = {
                    let mut iov = [IoSliceMut::new(&mut self.buf)];
                    let msg = match recvmsg::<SockaddrStorage>(
                        s.sock.as_raw_fd(),
                        &mut iov,
                        Some(&mut self.cmsg),
                        MsgFlags::MSG_DONTWAIT,
                    ) {
                        Ok(m) => m,
                        Err(nix::Error::EAGAIN) => break,
                        Err(nix::Error::EINTR) => continue,
                        Err(e) => return Err(e.into()),
                    };
                    let mut meta = Meta::default();
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            match c {
                                ControlMessageOwned::ScmTimestampns(ts) => {
                                    meta.ts = Some(
                                        SystemTime::UNIX_EPOCH
                                            + Duration::new(
                                                ts.tv_sec().max(0) as u64,
                                                ts.tv_nsec().clamp(0, 999_999_999) as u32,
                                            ),
                                    )
                                }
                                ControlMessageOwned::Ipv6PacketInfo(i) => {
                                    meta.dst = Some(Ipv6Addr::from(i.ipi6_addr.s6_addr))
                                }
                                ControlMessageOwned::Ipv6HopLimit(h) => meta.hops = h as u8,
                                ControlMessageOwned::Ipv6TClass(t) => meta.tclass = t as u8,
                                ControlMessageOwned::RxqOvfl(d) => s.dropped = d,
                                _ => {}
                            }
                        }
                    }
                    meta.src = msg
                        .address
                        .and_then(|a| a.as_sockaddr_in6().map(|a| a.ip()));
                    let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
                    (msg.bytes, meta, truncated)
                };
                let (len, meta, truncated) = got;
                n += 1;
                self.received = self.received.wrapping_add(1);
                if truncated {
                    continue;
                }
                let ts = meta.ts.unwrap_or_else(SystemTime::now);
                if !s.v6 {
                    f(ts, &self.buf[..len]);
                    continue;
                }
                let (Some(src), Some(dst), Ok(plen)) = (meta.src, meta.dst, u16::try_from(len))
                else {
                    continue;
                };
                self.packet.clear();
                self.packet.extend_from_slice(&ipv6_header(
                    meta.tclass,
                    plen,
                    s.protocol,
                    meta.hops,
                    src,
                    dst,
                ));
                self.packet.extend_from_slice(&self.buf[..len]);
                f(ts, &self.packet);
            }
        }
        Ok(n)
    }

    /// Packets the sockets' buffers had no room for.
    pub(crate) fn drops(&self) -> u32 {
        self.socks
            .iter()
            .fold(0u32, |a, s| a.saturating_add(s.dropped))
    }

    /// Packets read so far (that the kernel filters passed).
    pub(crate) fn received(&self) -> u32 {
        self.received
    }
}

/// The fixed IPv6 header (RFC 8200 section 3) of a packet an IPv6 raw socket passed without
/// it; flow label 0 (not told).
fn ipv6_header(
    tclass: u8,
    payload_len: u16,
    next: u8,
    hops: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
) -> [u8; 40] {
    let mut h = [0u8; 40];
    h[0] = 0x60 | (tclass >> 4);
    h[1] = tclass << 4;
    h[4..6].copy_from_slice(&payload_len.to_be_bytes());
    h[6] = next;
    h[7] = hops;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h
}

#[derive(Default)]
struct Meta {
    ts: Option<SystemTime>,
    src: Option<Ipv6Addr>,
    dst: Option<Ipv6Addr>,
    hops: u8,
    tclass: u8,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;
    use svctr_core::{MdaConfig, Strategy, TracerouteConfig};
    use svctr_wire::probe::{emit_tcp_v6, emit_udp_v6, Ipv6Fields, TcpFields, UdpFields};

    const ME6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x1801, 0, 0, 0, 2);
    const THEM6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x1901, 0, 0, 0, 2);
    const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x1802, 0, 0, 0, 2);

    /// A classic BPF interpreter with the kernel's view of an IPv6 raw socket: the data is
    /// the packet past its 40-byte header, `SKF_NET_OFF + k` reads the header's byte k.
    /// Only what libpcap emits for these filters; anything else fails the test.
    fn run_on_raw_v6(prog: &[(u16, u8, u8, u32)], packet: &[u8]) -> bool {
        let (net, data) = packet.split_at(40);
        let load = |k: u32, size: usize| -> Option<u32> {
            let (buf, at) = if k >= SKF_NET_OFF {
                (net, (k - SKF_NET_OFF) as usize)
            } else {
                (data, k as usize)
            };
            let b = buf.get(at..at + size)?;
            Some(b.iter().fold(0u32, |a, &x| (a << 8) | u32::from(x)))
        };
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let (code, jt, jf, k) = prog[pc];
            pc += 1;
            let jump = |cond: bool| usize::from(if cond { jt } else { jf });
            match code {
                0x20 | 0x28 | 0x30 => {
                    let size = match code {
                        0x20 => 4,
                        0x28 => 2,
                        _ => 1,
                    };
                    // A load past the end ends the program: the packet is refused.
                    match load(k, size) {
                        Some(v) => a = v,
                        None => return false,
                    }
                }
                0x54 => a &= k,
                0x15 => pc += jump(a == k),
                0x25 => pc += jump(a > k),
                0x35 => pc += jump(a >= k),
                0x45 => pc += jump(a & k != 0),
                0x06 => return k != 0,
                other => panic!("opcode {other:#x} not in this interpreter"),
            }
        }
    }

    fn error6(kind: u8, quoted: &[u8]) -> Vec<u8> {
        let mut icmp = vec![kind, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(quoted);
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        p.extend_from_slice(&[58, 64]);
        p.extend_from_slice(&ROUTER6.octets());
        p.extend_from_slice(&ME6.octets());
        p.extend_from_slice(&icmp);
        p
    }

    fn ip6() -> Ipv6Fields {
        Ipv6Fields {
            src: ME6,
            dst: THEM6,
            hop_limit: 1,
            traffic_class: 0,
            flow_label: 0,
        }
    }

    fn tcp_probe(sport: u16, seq: u32) -> Vec<u8> {
        let mut b = Vec::new();
        let tcp = TcpFields {
            src_port: sport,
            dst_port: 80,
            seq,
            ack: 0,
            flags: 0x02,
            window: 1024,
        };
        emit_tcp_v6(&ip6(), &tcp, &[], &mut b);
        b
    }

    fn udp_probe(sport: u16) -> Vec<u8> {
        let mut b = Vec::new();
        let udp = UdpFields {
            src_port: sport,
            dst_port: 33434,
        };
        emit_udp_v6(&ip6(), &udp, &[0; 4], &mut b);
        b
    }

    /// Both verdicts: libpcap's on the whole packet with the program as compiled, and the
    /// raw socket's with the program rebased.
    fn verdicts(expr: &str, packet: &[u8]) -> (bool, bool) {
        let dead = pcap::Capture::dead(pcap::Linktype(12)).unwrap();
        let whole = dead.compile(expr, true).unwrap().filter(packet);
        let rebased = rebase_v6(&compile(expr).unwrap()).expect("rebased");
        (whole, run_on_raw_v6(&rebased, packet))
    }

    #[test]
    fn the_rebuilt_ipv6_header() {
        let h = ipv6_header(0xb8, 0x0104, 58, 61, ROUTER6, ME6);
        let want: [u8; 40] = [
            0x6b, 0x80, 0, 0, 0x01, 0x04, 58, 61, //
            0x20, 0x01, 0, 2, 0, 0, 0x18, 0x02, 0, 0, 0, 0, 0, 0, 0, 2, //
            0x20, 0x01, 0, 2, 0, 0, 0x18, 0x01, 0, 0, 0, 0, 0, 0, 0, 2,
        ];
        assert_eq!(h, want);
        // What the engines read of it, with an ICMPv6 time exceeded about our UDP probe.
        let mut packet = h.to_vec();
        let body = error6(3, &udp_probe(40000));
        packet[4..6].copy_from_slice(&((body.len() - 40) as u16).to_be_bytes());
        packet.extend_from_slice(&body[40..]);
        let pkt = svctr_wire::packet::parse_ip(&packet).expect("parses");
        assert_eq!(pkt.ip.src, std::net::IpAddr::V6(ROUTER6));
        assert_eq!(pkt.ip.dst, std::net::IpAddr::V6(ME6));
        assert_eq!(pkt.ip.ttl, 61);
    }

    #[test]
    fn ipv6_loads_are_rebased_on_the_network_and_transport_headers() {
        let prog = [
            (0x30, 0, 0, 6),   // ldb [6]: next header
            (0x28, 0, 0, 40),  // ldh [40]: the transport's first bytes
            (0x20, 0, 0, 88),  // ld [88]: inside an ICMPv6 error's quote
            (0x54, 0, 0, 0xf), // and #0xf: not a load
            (0x06, 0, 0, 0),
        ];
        assert_eq!(
            rebase_v6(&prog).unwrap(),
            vec![
                (0x30, 0, 0, SKF_NET_OFF + 6),
                (0x28, 0, 0, 0),
                (0x20, 0, 0, 48),
                (0x54, 0, 0, 0xf),
                (0x06, 0, 0, 0),
            ]
        );
        // Indirect loads, the header-length load and the packet length cannot be rebased.
        for code in [0x50, 0x48, 0x40, 0xb1, 0x80] {
            assert_eq!(
                rebase_v6(&[(code, 0, 0, 0), (0x06, 0, 0, 0)]),
                None,
                "{code:#x}"
            );
        }
    }

    #[test]
    fn every_reply_filter_runs_on_raw_sockets() {
        for protocol in [Protocol::Udp, Protocol::Tcp, Protocol::Icmp] {
            for strategy in [Strategy::Classic, Strategy::Paris, Strategy::Dublin] {
                let cfg = TracerouteConfig {
                    protocol,
                    strategy,
                    sport: 40000,
                    marker: 40000,
                    ..TracerouteConfig::default()
                };
                let f = |v4, v6| crate::filter::traceroute_filter_with(&cfg, v4, v6, false);
                let p = Programs::new(Some(&f(true, false)), Some(&f(false, true))).unwrap();
                assert!(p.is_some(), "{protocol:?} {strategy:?}: {}", f(false, true));
            }
            let cfg = MdaConfig {
                protocol,
                sport: 40000,
                marker: 40000,
                ..MdaConfig::default()
            };
            let f = |v4, v6| crate::filter::multipath_filter_with(&cfg, v4, v6, false);
            let p = Programs::new(Some(&f(true, false)), Some(&f(false, true))).unwrap();
            assert!(p.is_some(), "multipath {protocol:?}: {}", f(false, true));
        }
        // With our probes leaving (a capture's filter), UDP's clause needs the IPv6 header's
        // length: not for a raw socket.
        let cfg = TracerouteConfig {
            protocol: Protocol::Udp,
            sport: 40000,
            ..TracerouteConfig::default()
        };
        let leaving = crate::filter::traceroute_filter_with(&cfg, false, true, true);
        assert!(Programs::new(None, Some(&leaving)).unwrap().is_none());
    }

    #[test]
    fn a_rebased_program_decides_as_libpcap_does_on_the_whole_packet() {
        for protocol in [Protocol::Udp, Protocol::Tcp] {
            let cfg = TracerouteConfig {
                protocol,
                strategy: Strategy::Paris,
                sport: 40000,
                marker: 40000,
                ..TracerouteConfig::default()
            };
            let expr = crate::filter::traceroute_filter_with(&cfg, false, true, false);
            let ours = match protocol {
                Protocol::Tcp => tcp_probe(40000, 40000 << 16 | 7),
                _ => udp_probe(40000),
            };
            let theirs = match protocol {
                Protocol::Tcp => tcp_probe(40001, 40001 << 16 | 7),
                _ => udp_probe(40001),
            };
            for (case, packet, want) in [
                ("time exceeded about ours", error6(3, &ours), true),
                ("unreachable about ours", error6(1, &ours), true),
                ("time exceeded about another's", error6(3, &theirs), false),
                ("an echo request", error6(128, &ours), false),
                ("cut short before the ports", error6(3, &ours[..40]), false),
            ] {
                let (whole, raw) = verdicts(&expr, &packet);
                assert_eq!(whole, want, "{protocol:?} {case}: libpcap");
                assert_eq!(raw, want, "{protocol:?} {case}: rebased");
            }
        }
    }
}
