//! Self-tests of the lab's application infrastructure: apps on any address of
//! either family, IPv6 flow labels, r2's application-flow observer, bulk ground
//! truth, DNS, TLS with real clients, QUIC, and the 10k-flow generator. They need
//! root (network namespaces); without root they are skipped, unless the CI
//! environment variable is set (then they fail).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use svctr_lab::{
    dns_server, echo_server, flow_generator, openssl_client, output_with_timeout, quic_download,
    quic_server, spawn_in_netns, tcp_download_to, tcp_server_on, tls_download, tls_server,
    tls_server_paced, udp_server_on, udp_session_to, AppFlow, CapturedPacket, DnsRecord, Family,
    Lab, LabConfig, PacketInfo, Proto,
};

fn root_guard() -> Option<std::sync::MutexGuard<'static, ()>> {
    svctr_lab::lab_test_guard()
}

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn parsed(pkts: &[CapturedPacket]) -> Vec<PacketInfo> {
    pkts.iter().filter_map(|p| p.parse()).collect()
}

/// Tiny deterministic PRNG (xorshift64*) for reproducible "random" flows.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn apps_on_any_address_both_families() {
    let Some(_g) = root_guard() else { return };
    let lab = Lab::build(LabConfig {
        fanout: 2,
        ..LabConfig::default()
    })
    .expect("build lab");
    let (s4, s6) = (lab.server_addr(), lab.server_addr6());
    let (f4, f6) = (lab.fanout_targets_v4()[1], lab.fanout_targets_v6()[0]);

    // One wildcard server per family on the same port: each serves the server's
    // address and every fan-out address of its family.
    let t4 = tcp_server_on(&lab, "0.0.0.0:8081".parse().unwrap(), 0).expect("tcp v4");
    let t6 = tcp_server_on(&lab, "[::]:8081".parse().unwrap(), 0).expect("tcp v6");
    assert_eq!((t4.port(), t6.port()), (8081, 8081));
    let dsts = [sa(s4, 8081), sa(s6, 8081), sa(f4, 8081), sa(f6, 8081)];
    let dls: Vec<_> = dsts
        .iter()
        .enumerate()
        .map(|(i, d)| tcp_download_to(&lab, *d, 45100 + i as u16, 300_000, true).expect("download"))
        .collect();
    for (dl, d) in dls.into_iter().zip(dsts) {
        let rep = dl.wait().expect("report");
        assert!(rep.intact && rep.errors.is_empty(), "{d}: {rep:?}");
        assert_eq!(rep.bytes, 300_000);
    }
    assert_eq!((t4.connections(), t6.connections()), (2, 2));

    let u4 = udp_server_on(&lab, "0.0.0.0:9001".parse().unwrap()).expect("udp v4");
    let u6 = udp_server_on(&lab, "[::]:9001".parse().unwrap()).expect("udp v6");
    for (i, d) in [sa(s4, 9001), sa(s6, 9001), sa(f4, 9001), sa(f6, 9001)]
        .iter()
        .enumerate()
    {
        let sess = udp_session_to(
            &lab,
            *d,
            46100 + i as u16,
            5,
            Duration::from_millis(10),
            true,
        )
        .expect("session");
        assert_eq!(
            sess.wait_started(Duration::from_secs(5)).unwrap(),
            46100 + i as u16
        );
        let rep = sess.wait().expect("udp report");
        // A wildcard server answers from the address the request went to, so the
        // client's connected socket accepts the answers from fan-out targets too.
        assert_eq!((rep.sent, rep.answered), (5, 5), "{d}: {rep:?}");
        assert!(rep.intact && rep.errors.is_empty(), "{d}: {rep:?}");
    }
    assert_eq!((u4.datagrams(), u6.datagrams()), (10, 10));

    // An empty IPv6 datagram is counted, not answered.
    let dst6 = sa(s6, 9001);
    spawn_in_netns(lab.client_ns(), "empty6", move || {
        let s = std::net::UdpSocket::bind("[::]:0")?;
        s.send_to(&[], dst6)?;
        Ok(())
    })
    .unwrap()
    .join()
    .unwrap()
    .unwrap();
    let t = Instant::now();
    while u6.empty_datagrams() == 0 && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!((u6.empty_datagrams(), u6.datagrams()), (1, 11));

    // IPV6_RECVERR: the port unreachable comes back on the error queue, with the
    // offender as a sockaddr_in6.
    let rep = udp_session_to(&lab, sa(s6, 9009), 0, 3, Duration::from_millis(20), true)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(rep.answered, 0);
    let eq: Vec<&String> = rep
        .errors
        .iter()
        .filter(|e| e.contains("errqueue"))
        .collect();
    assert!(!eq.is_empty(), "{rep:?}");
    assert!(
        eq.iter().any(|e| e.contains(&format!("from {s6}"))),
        "{rep:?}"
    );
    assert!(rep.errors.iter().any(|e| e.contains("refused")), "{rep:?}");
}

/// Traceroute-like probes with a fixed 5-tuple and TTL <= 4 (Debian traceroute).
fn fixed_tuple_probes(lab: &Lab, dst: IpAddr, sport: u16, dport: u16) {
    let mut c = lab.command(lab.client_ns(), "traceroute");
    if dst.is_ipv6() {
        c.arg("-6");
    }
    c.args(["-U", "-n", "-q", "1", "-N", "1", "-w", "1", "-m", "4"])
        .arg(format!("--sport={sport}"))
        .args(["-p", &dport.to_string(), &dst.to_string()]);
    let out = output_with_timeout(&mut c, None, Duration::from_secs(30)).expect("traceroute");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn observer_matches_ground_truth_with_nat() {
    let Some(_g) = root_guard() else { return };
    let lab = Lab::build(LabConfig {
        nat: true,
        ..LabConfig::default()
    })
    .expect("build lab");
    let _t4 = tcp_server_on(&lab, "0.0.0.0:8082".parse().unwrap(), 0).unwrap();
    let _t6 = tcp_server_on(&lab, "[::]:8082".parse().unwrap(), 0).unwrap();
    let _u4 = udp_server_on(&lab, "0.0.0.0:9002".parse().unwrap()).unwrap();
    let _u6 = udp_server_on(&lab, "[::]:9002".parse().unwrap()).unwrap();
    let dsts = [
        IpAddr::V4(lab.server_addr()),
        IpAddr::V6(lab.server_addr6()),
    ];
    // 6 TCP and 6 UDP flows per family: 24 flows. The UDP sessions keep going
    // (the conntrack entries must still exist when NAT is read).
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for (fi, dst) in dsts.iter().enumerate() {
        for i in 0..6u16 {
            let port = 47000 + fi as u16 * 100 + i;
            tcp.push((
                port,
                sa(*dst, 8082),
                tcp_download_to(&lab, sa(*dst, 8082), port, 20_000, false).unwrap(),
            ));
            udp.push((
                port,
                sa(*dst, 9002),
                udp_session_to(
                    &lab,
                    sa(*dst, 9002),
                    port,
                    20,
                    Duration::from_millis(100),
                    false,
                )
                .unwrap(),
            ));
        }
    }
    for (_, _, d) in &tcp {
        d.wait_established(Duration::from_secs(5)).unwrap();
    }
    for (_, _, s) in &udp {
        s.wait_started(Duration::from_secs(5)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    // Probes (TTL / hop limit <= 4) of a 5-tuple no application uses are not
    // counted as flows.
    fixed_tuple_probes(&lab, dsts[0], 47998, 9002);
    fixed_tuple_probes(&lab, dsts[1], 47999, 9002);

    let flows: Vec<(Proto, u16, SocketAddr)> = tcp
        .iter()
        .map(|(p, d, _)| (Proto::Tcp, *p, *d))
        .chain(udp.iter().map(|(p, d, _)| (Proto::Udp, *p, *d)))
        .collect();
    let app: Vec<AppFlow> = flows
        .iter()
        .map(|&(proto, port, dst)| lab.app_flow(proto, port, dst).expect("app_flow"))
        .collect();
    let t = Instant::now();
    let seen = lab.observed_branches().expect("observed");
    let read = t.elapsed();
    for (f, a) in flows.iter().zip(&app) {
        if f.2.is_ipv4() {
            assert_ne!(a.sport, f.1, "NAT translated the port (random): {a:?}");
            assert_ne!(a.src, IpAddr::V4(lab.client_addr()));
        }
        let b = seen
            .get(a)
            .unwrap_or_else(|| panic!("{a:?} not observed: {seen:?}"));
        assert_eq!(b.len(), 1, "{a:?} on several branches: {b:?}");
        let k = *b.iter().next().unwrap();
        let truth = lab
            .expected_path_ip(
                f.0,
                lab.client_addr_for(f.2.ip()),
                f.2.ip(),
                f.1,
                f.2.port(),
                0,
            )
            .expect("truth");
        assert_eq!(truth, lab.branch_path_ip(k, f.2.is_ipv6()), "{f:?} {a:?}");
    }
    assert_eq!(
        seen.len(),
        app.len(),
        "only the applications' flows: {seen:?}"
    );
    // The same from the bulk ground truth (one conntrack read for NAT).
    for proto in [Proto::Tcp, Proto::Udp] {
        let specs: Vec<_> = flows
            .iter()
            .filter(|f| f.0 == proto)
            .map(|f| (lab.client_addr_for(f.2.ip()), f.1, f.2.ip(), f.2.port(), 0))
            .collect();
        let bulk = lab.expected_paths(proto, &specs).expect("bulk");
        for (s, path) in specs.iter().zip(bulk) {
            let one = lab.expected_path_ip(proto, s.0, s.2, s.1, s.3, 0).unwrap();
            assert_eq!(path, one, "{proto:?} {s:?}");
        }
    }
    eprintln!("observer: {} flows read in {read:?}", seen.len());
    lab.clear_observed().unwrap();
    drop(udp);
    assert!(lab.observed_branches().unwrap().len() <= app.len());
}

#[test]
fn client_flow_labels_move_flows() {
    let Some(_g) = root_guard() else { return };
    let lab = Lab::build(LabConfig {
        client_flow_labels: true,
        ..LabConfig::default()
    })
    .expect("build lab");
    let s6 = IpAddr::V6(lab.server_addr6());
    let _t6 = tcp_server_on(&lab, sa(s6, 8083), 0).unwrap();
    let _u6 = udp_server_on(&lab, sa(s6, 9003)).unwrap();
    let cap = lab
        .capture(lab.client_ns(), "eth0", "ip6 and src host 2001:2:0:1801::2")
        .unwrap();
    // 12 TCP connections and 12 UDP flows, distinct ports.
    for i in 0..12u16 {
        let r = tcp_download_to(&lab, sa(s6, 8083), 48000 + i, 5_000, false)
            .unwrap()
            .wait()
            .unwrap();
        assert!(r.intact, "{r:?}");
        let r = udp_session_to(
            &lab,
            sa(s6, 9003),
            48100 + i,
            2,
            Duration::from_millis(5),
            false,
        )
        .unwrap()
        .wait()
        .unwrap();
        assert_eq!(r.answered, 2, "{r:?}");
    }
    // The same UDP 5-tuple 12 times: each connected socket draws a new label.
    for _ in 0..12 {
        let r = udp_session_to(
            &lab,
            sa(s6, 9003),
            48200,
            1,
            Duration::from_millis(5),
            false,
        )
        .unwrap()
        .wait()
        .unwrap();
        assert_eq!(r.answered, 1, "{r:?}");
    }
    let pkts = parsed(&cap.stop().unwrap());
    // Labels per (proto, sport): every packet of a flow carries one non-zero label.
    let mut labels: BTreeMap<(u8, u16), BTreeSet<u32>> = BTreeMap::new();
    for p in &pkts {
        if p.proto == 6 || p.proto == 17 {
            labels
                .entry((p.proto, p.sport))
                .or_default()
                .insert(p.flow_label);
        }
    }
    let seen = lab.observed_branches().unwrap();
    let mut moved = 0;
    let mut distinct = BTreeSet::new();
    for (proto, base, dport) in [(Proto::Tcp, 48000u16, 8083u16), (Proto::Udp, 48100, 9003)] {
        for i in 0..12u16 {
            let port = base + i;
            let l = &labels[&(proto.number(true), port)];
            assert_eq!(l.len(), 1, "{proto:?} {port}: one label per flow: {l:?}");
            let label = *l.iter().next().unwrap();
            assert_ne!(label, 0, "{proto:?} {port}");
            distinct.insert(label);
            let a = lab.app_flow(proto, port, sa(s6, dport)).unwrap();
            let b = &seen[&a];
            assert_eq!(b.len(), 1, "{a:?}: {b:?}");
            let k = *b.iter().next().unwrap();
            let src = IpAddr::V6(lab.client_addr6());
            let truth = lab
                .expected_path_ip(proto, src, s6, port, dport, label)
                .unwrap();
            assert_eq!(truth, lab.branch_path_ip(k, true), "{a:?} label {label:#x}");
            let zero = lab
                .expected_path_ip(proto, src, s6, port, dport, 0)
                .unwrap();
            if zero != truth {
                moved += 1;
            }
        }
    }
    assert_eq!(distinct.len(), 24, "two connections get different labels");
    // With 3 branches about 2/3 of the flows take another branch than with label 0.
    assert!(moved >= 4, "only {moved} of 24 flows moved by their label");
    let same = &labels[&(17, 48200)];
    assert!(
        same.len() >= 10,
        "one 5-tuple, new label per socket: {same:?}"
    );
    let a = lab.app_flow(Proto::Udp, 48200, sa(s6, 9003)).unwrap();
    assert!(
        seen[&a].len() >= 2,
        "one 5-tuple spread over branches by its labels: {:?}",
        seen[&a]
    );
    eprintln!(
        "flow labels: {moved}/24 flows off their label-0 branch; one 5-tuple with {} labels on branches {:?}",
        same.len(),
        seen[&a]
    );
}

#[test]
fn bulk_ground_truth_matches_per_flow() {
    let Some(_g) = root_guard() else { return };
    let lab = Lab::build(LabConfig {
        fanout: 50,
        ..LabConfig::default()
    })
    .expect("build lab");
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let c4 = IpAddr::V4(lab.client_addr());
    let c6 = IpAddr::V6(lab.client_addr6());
    let d4: Vec<IpAddr> = std::iter::once(IpAddr::V4(lab.server_addr()))
        .chain(lab.fanout_targets_v4().into_iter().map(IpAddr::V4))
        .collect();
    let d6: Vec<IpAddr> = std::iter::once(IpAddr::V6(lab.server_addr6()))
        .chain(lab.fanout_targets_v6().into_iter().map(IpAddr::V6))
        .collect();
    for proto in [Proto::Tcp, Proto::Udp] {
        // 100 flows per protocol, 1 in 5 IPv6 (with a random flow label).
        let flows: Vec<_> = (0..100)
            .map(|i| {
                let (src, dst, label) = if i % 5 == 0 {
                    (
                        c6,
                        d6[rng.below(d6.len() as u64) as usize],
                        rng.below(1 << 20) as u32,
                    )
                } else {
                    (c4, d4[rng.below(d4.len() as u64) as usize], 0)
                };
                (
                    src,
                    1024 + rng.below(64000) as u16,
                    dst,
                    1 + rng.below(65000) as u16,
                    label,
                )
            })
            .collect();
        let bulk = lab.expected_paths(proto, &flows).expect("bulk");
        assert_eq!(bulk.len(), flows.len());
        for (f, path) in flows.iter().zip(&bulk) {
            let one = lab
                .expected_path_ip(proto, f.0, f.2, f.1, f.3, f.4)
                .unwrap();
            assert_eq!(path, &one, "{proto:?} {f:?}");
        }
    }
    // 10,000 IPv4 flows in one `ip -batch`.
    let flows: Vec<_> = (0..10_000u32)
        .map(|i| {
            (
                c4,
                10_000 + (i % 50_000) as u16,
                d4[(i % 51) as usize],
                443,
                0,
            )
        })
        .collect();
    let t = Instant::now();
    let bulk = lab.expected_paths(Proto::Udp, &flows).expect("bulk 10k");
    let took = t.elapsed();
    assert_eq!(bulk.len(), 10_000);
    let mut per_branch: BTreeMap<usize, usize> = BTreeMap::new();
    for p in &bulk {
        *per_branch
            .entry(lab.branch_of_ip(p[2]).unwrap())
            .or_default() += 1;
    }
    assert_eq!(per_branch.len(), 3, "{per_branch:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    eprintln!("expected_paths: 10000 IPv4 flows in {took:?}, per branch {per_branch:?}");
    // Errors are errors, not silent gaps.
    assert!(lab
        .expected_paths(
            Proto::Udp,
            &[(c4, 1, "198.19.200.1".parse().unwrap(), 2, 0)]
        )
        .is_err());
}

#[test]
fn dns_server_and_real_resolver() {
    let Some(_g) = root_guard() else { return };
    let lab = Lab::build(LabConfig {
        fanout: 1,
        ..LabConfig::default()
    })
    .expect("build lab");
    let (s4, s6) = (lab.server_addr(), lab.server_addr6());
    let f4 = lab.fanout_targets_v4()[0];
    let recs = vec![
        DnsRecord::A {
            name: "www.lab.example".into(),
            addr: s4,
            ttl: 300,
        },
        DnsRecord::A {
            name: "www.lab.example".into(),
            addr: f4,
            ttl: 300,
        },
        DnsRecord::Aaaa {
            name: "www.lab.example".into(),
            addr: s6,
            ttl: 60,
        },
        DnsRecord::Aaaa {
            name: "v6only.lab.example".into(),
            addr: s6,
            ttl: 60,
        },
        DnsRecord::Cname {
            name: "name.lab.example".into(),
            target: "alias.lab.example".into(),
            ttl: 30,
        },
        DnsRecord::Cname {
            name: "alias.lab.example".into(),
            target: "host.lab.example".into(),
            ttl: 30,
        },
        DnsRecord::A {
            name: "host.lab.example".into(),
            addr: s4,
            ttl: 10,
        },
    ];
    let cap = lab.capture(lab.client_ns(), "eth0", "port 53").unwrap();
    let dns = dns_server(&lab, &recs).expect("dns server");
    let set = |v: Vec<IpAddr>| v.into_iter().collect::<BTreeSet<_>>();
    assert_eq!(
        set(lab.resolve("www.lab.example", Some(Family::V4)).unwrap()),
        set(vec![s4.into(), f4.into()])
    );
    assert_eq!(
        lab.resolve("www.lab.example", Some(Family::V6)).unwrap(),
        vec![IpAddr::V6(s6)]
    );
    assert_eq!(
        set(lab.resolve("www.lab.example", None).unwrap()),
        set(vec![s4.into(), f4.into(), s6.into()])
    );
    assert_eq!(
        lab.resolve("v6only.lab.example", None).unwrap(),
        vec![IpAddr::V6(s6)]
    );
    assert!(lab.resolve("v6only.lab.example", Some(Family::V4)).is_err());
    // name -> alias -> host -> address.
    assert_eq!(
        lab.resolve("name.lab.example", Some(Family::V4)).unwrap(),
        vec![IpAddr::V4(s4)]
    );
    let t = Instant::now();
    let e = lab.resolve("nothere.lab.example", None).unwrap_err();
    assert!(e.to_string().contains("not found"), "{e:#}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "NXDOMAIN, not a timeout"
    );
    // The lab's own names still come from the hosts file.
    let r1 = lab.resolve("r1.lab.test", Some(Family::V4)).unwrap();
    assert!(r1.contains(&"198.18.1.1".parse().unwrap()), "{r1:?}");
    let log = dns.log();
    assert!(log.contains("query[A] name.lab.example"), "{log}");
    let pkts = parsed(&cap.stop().unwrap());
    let answers = pkts
        .iter()
        .filter(|p| {
            p.proto == 17 && p.sport == 53 && p.src == IpAddr::V4(s4) && p.payload.len() > 12
        })
        .count();
    assert!(answers >= 8, "DNS answers on the client's eth0: {answers}");
    let resolv =
        std::fs::read_to_string(format!("/etc/netns/{}/resolv.conf", lab.client_ns())).unwrap();
    assert!(
        resolv.starts_with(&format!("nameserver {s4}\nnameserver {s6}\n")),
        "{resolv}"
    );
    drop(dns);
    let resolv =
        std::fs::read_to_string(format!("/etc/netns/{}/resolv.conf", lab.client_ns())).unwrap();
    assert!(resolv.starts_with("nameserver 127.0.0.1\n"), "{resolv}");
    assert!(lab.resolve("www.lab.example", None).is_err());
}

/// Payload sizes of the client's first data on the connection from `sport`: the
/// segments it sent before any data came back.
fn first_client_flight(pkts: &[PacketInfo], client: IpAddr, sport: u16) -> Vec<usize> {
    let mut sizes = Vec::new();
    for p in pkts {
        if p.proto != 6 || p.payload.is_empty() {
            continue;
        }
        if p.src == client && p.sport == sport {
            sizes.push(p.payload.len());
        } else if p.dst == client && p.dport == sport {
            break;
        }
    }
    sizes
}

#[test]
fn tls_with_real_clients_and_split_client_hello() {
    let Some(_g) = root_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let (s4, s6) = (
        IpAddr::V4(lab.server_addr()),
        IpAddr::V6(lab.server_addr6()),
    );
    let size = 300_000;
    let srv4 = tls_server(&lab, "0.0.0.0:8443".parse().unwrap(), size).expect("tls server v4");
    let srv6 = tls_server(&lab, "[::]:8443".parse().unwrap(), size).expect("tls server v6");
    let paced = tls_server_paced(&lab, "[::]:8444".parse().unwrap(), size, 200_000).expect("paced");
    assert!(srv4.cert_pem().unwrap().contains("BEGIN CERTIFICATE"));
    let cap = lab
        .capture(lab.client_ns(), "eth0", "tcp port 8443")
        .unwrap();

    // Downloads over both families; one through the paced server lasts 1.5 s.
    let rep = tls_download(&lab, "www.lab.example", sa(s4, 8443), 41000, 0)
        .unwrap()
        .wait()
        .unwrap();
    assert!(rep.success, "{rep:?}\n{}", srv4.log());
    assert_eq!(rep.bytes, size);
    let rep6 = tls_download(&lab, "www6.lab.example", sa(s6, 8443), 41001, 0)
        .unwrap()
        .wait()
        .unwrap();
    assert!(rep6.success && rep6.bytes == size, "{rep6:?}");
    let mut dl = tls_download(&lab, "slow.lab.example", sa(s6, 8444), 41010, 0).unwrap();
    assert_eq!(dl.wait_established(Duration::from_secs(5)).unwrap(), 41010);
    let rep = dl.wait().unwrap();
    assert!(rep.success && rep.bytes == size, "{rep:?}\n{}", paced.log());
    assert!(
        rep.duration >= Duration::from_millis(1400),
        "paced at 200 kB/s: {rep:?}"
    );
    assert!(rep.duration < Duration::from_secs(5), "{rep:?}");

    // OpenSSL's client, kept open, then asked for the file.
    let mut oc = openssl_client(&lab, "other.lab.example", sa(s4, 8443), 41002).unwrap();
    oc.wait_handshake(Duration::from_secs(5)).unwrap();
    oc.request("/file").unwrap();
    oc.wait_for_output("HTTP/1.0 200 ok", Duration::from_secs(5))
        .unwrap();
    let (_, out) = oc.close().unwrap();
    assert!(
        out.contains("SSL handshake has read"),
        "{}",
        &out[..out.len().min(2000)]
    );

    // With GSO on, curl's ClientHello leaves eth0 as one packet; after
    // split_client_segments(200) as several of at most 188 bytes.
    let rep = tls_download(&lab, "www.lab.example", sa(s4, 8443), 41003, 0)
        .unwrap()
        .wait()
        .unwrap();
    assert!(rep.success, "{rep:?}");
    lab.split_client_segments(200).unwrap();
    let rep = tls_download(&lab, "www.lab.example", sa(s4, 8443), 41004, 0)
        .unwrap()
        .wait()
        .unwrap();
    assert!(rep.success, "{rep:?}");
    let rep = tls_download(&lab, "www6.lab.example", sa(s6, 8443), 41005, 0)
        .unwrap()
        .wait()
        .unwrap();
    assert!(rep.success, "{rep:?}");
    lab.restore_client_segments().unwrap();
    let rep = tls_download(&lab, "www.lab.example", sa(s4, 8443), 41006, 0)
        .unwrap()
        .wait()
        .unwrap();
    assert!(rep.success, "{rep:?}");
    let pkts = parsed(&cap.stop().unwrap());

    let (c4, c6) = (
        IpAddr::V4(lab.client_addr()),
        IpAddr::V6(lab.client_addr6()),
    );
    let whole = first_client_flight(&pkts, c4, 41003);
    assert_eq!(whole.len(), 1, "{whole:?}");
    assert!(whole[0] > 400, "a curl ClientHello: {whole:?}");
    // The ClientHello carries the SNI in clear.
    let hello = pkts
        .iter()
        .find(|p| p.sport == 41003 && !p.payload.is_empty())
        .unwrap();
    assert_eq!(hello.payload[0], 22, "TLS handshake record");
    assert!(hello.payload.windows(15).any(|w| w == b"www.lab.example"));
    for (client, port) in [(c4, 41004), (c6, 41005)] {
        let split = first_client_flight(&pkts, client, port);
        assert!(split.len() >= 2, "port {port}: {split:?}");
        assert!(split.iter().all(|&n| n <= 188), "port {port}: {split:?}");
        assert_eq!(
            split.iter().sum::<usize>(),
            whole[0],
            "the same ClientHello, split"
        );
        eprintln!(
            "split_client_segments(200): ClientHello of {} bytes as {split:?} (port {port})",
            whole[0]
        );
    }
    let again = first_client_flight(&pkts, c4, 41006);
    assert_eq!(again.len(), 1, "restored: {again:?}");
    drop((srv4, srv6, paced));
}

#[test]
fn quic_downloads_both_families() {
    let Some(_g) = root_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let (s4, s6) = (
        IpAddr::V4(lab.server_addr()),
        IpAddr::V6(lab.server_addr6()),
    );
    let names = ["quic.lab.example"];
    let q4 = quic_server(&lab, "0.0.0.0:4433".parse().unwrap(), &names).expect("quic v4");
    let q6 = quic_server(&lab, "[::]:4433".parse().unwrap(), &names).expect("quic v6");
    let cap = lab
        .capture(lab.client_ns(), "eth0", "udp port 4433")
        .unwrap();
    let bytes = 300_000;
    let d4 = quic_download(
        &lab,
        "quic.lab.example",
        sa(s4, 4433),
        44330,
        bytes,
        300_000,
    )
    .unwrap();
    let d6 = quic_download(
        &lab,
        "quic.lab.example",
        sa(s6, 4433),
        44331,
        bytes,
        300_000,
    )
    .unwrap();
    assert_eq!(d4.wait_established(Duration::from_secs(5)).unwrap(), 44330);
    assert_eq!(d6.wait_established(Duration::from_secs(5)).unwrap(), 44331);
    let (r4, r6) = (d4.wait().unwrap(), d6.wait().unwrap());
    for r in [&r4, &r6] {
        assert!(r.intact && r.errors.is_empty(), "{r:?}");
        assert_eq!(r.bytes, bytes);
        assert!(r.duration >= Duration::from_millis(700), "paced: {r:?}");
    }
    assert_eq!((q4.connections(), q6.connections()), (1, 1));
    let pkts = parsed(&cap.stop().unwrap());
    for (client, port) in [
        (IpAddr::V4(lab.client_addr()), 44330),
        (IpAddr::V6(lab.client_addr6()), 44331),
    ] {
        let sent: Vec<&PacketInfo> = pkts
            .iter()
            .filter(|p| p.src == client && p.sport == port)
            .collect();
        let long: Vec<&&PacketInfo> = sent
            .iter()
            .filter(|p| p.payload.first().is_some_and(|b| b & 0x80 != 0))
            .collect();
        assert!(!long.is_empty(), "long-header packets from {client}");
        for p in &long {
            assert_eq!(&p.payload[1..5], &[0, 0, 0, 1], "QUIC version 1");
        }
        // The first is an Initial (type 0) padded to >= 1200 bytes.
        let first = &sent[0].payload;
        assert_eq!(first[0] & 0xb0, 0x80, "Initial: {:#x}", first[0]);
        assert!(first.len() >= 1200, "{}", first.len());
        // No UDP GSO: every datagram is one MTU-sized packet at most.
        assert!(
            pkts.iter().all(|p| p.payload.len() <= 1472),
            "a GSO super-datagram"
        );
        eprintln!(
            "quic {client}: {} packets sent, {} long-header (v1)",
            sent.len(),
            long.len()
        );
    }
}

/// Process CPU time so far: (user, system).
fn process_cpu() -> (Duration, Duration) {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    (tv(u.user_time()), tv(u.system_time()))
}

/// Runs `n` flows of `proto` against `srv` for `secs` seconds after they are open;
/// checks they all stay alive and returns this process's CPU time and the wall time.
fn run_flows(
    lab: &Lab,
    proto: Proto,
    srv: &svctr_lab::EchoServer,
    first_port: u16,
    n: usize,
    secs: u64,
) -> (Duration, Duration) {
    let interval = Duration::from_secs(1);
    let ((u0, s0), wall0) = (process_cpu(), Instant::now());
    let g =
        flow_generator(lab, proto, srv.local_addr(), first_port, n, interval).expect("generator");
    let diag = |lab: &Lab| -> String {
        let mut out = String::new();
        for ns in [lab.client_ns(), lab.server_ns()] {
            let m = lab.nstat(ns).unwrap_or_default();
            let v: Vec<_> = m
                .iter()
                .filter(|(k, v)| {
                    **v > 0
                        && [
                            "Retrans", "Timeout", "Drop", "Overflow", "Cookies", "Fail", "Reset",
                            "Discard",
                        ]
                        .iter()
                        .any(|w| k.contains(w))
                })
                .collect();
            out.push_str(&format!("\n{ns}: {v:?}"));
        }
        out
    };
    let open = g.wait_open(Duration::from_secs(30));
    assert_eq!(
        open.as_ref().ok(),
        Some(&n),
        "{open:?} {:?}{}",
        g.error(),
        diag(lab)
    );
    let opened = wall0.elapsed();
    std::thread::sleep(Duration::from_secs(secs));
    let alive = g.alive();
    if alive != n {
        // Where the first silent flow's bytes are: client or server socket queues.
        let st = g.stats();
        let dead: Vec<u16> = st
            .iter()
            .filter(|s| s.since_last_echo.is_none_or(|d| d > Duration::from_secs(3)))
            .map(|s| s.local_port)
            .collect();
        eprintln!(
            "{} silent flows, e.g. {:?}",
            dead.len(),
            &dead[..dead.len().min(5)]
        );
        for (ns, filt) in [
            (lab.client_ns(), format!("sport = :{}", dead[0])),
            (lab.server_ns(), format!("dport = :{}", dead[0])),
        ] {
            let mut c = lab.command(ns, "ss");
            c.args(["-tnie", &filt]);
            let out = output_with_timeout(&mut c, None, Duration::from_secs(20)).unwrap();
            eprintln!("{ns}: {}", String::from_utf8_lossy(&out.stdout));
        }
    }
    let ((u1, s1), wall) = (process_cpu(), wall0.elapsed());
    let (user, sys) = (u1 - u0, s1 - s0);
    let gen_cpu = g.cpu_time();
    let missed = (g.missed_wakeups(), srv.missed_wakeups());
    let t = Instant::now();
    let seen = lab.observed_branches().unwrap();
    let obs = t.elapsed();
    let stats = g.stop().unwrap();
    let pct = |d: Duration| 100.0 * d.as_secs_f64() / wall.as_secs_f64();
    eprintln!(
        "flow generator: {n} {proto:?} flows every {interval:?}, all open after {opened:?}; over {wall:?}: \
         this process user {user:?} ({:.0}% of a core) + system {sys:?} ({:.0}%); generator thread \
         {gen_cpu:?}, echo server {:?} (thread CPU, system time included); observer read {} flows in {obs:?}; \
         sweep reads that found data (generator, server): {missed:?}",
        pct(user),
        pct(sys),
        srv.cpu_time(),
        seen.len()
    );
    assert_eq!(alive, n, "alive flows{}", diag(lab));
    for s in &stats {
        assert!(s.sent >= secs - 1 && s.echoed + 2 >= s.sent, "{s:?}");
        assert_eq!(s.errors, 0, "{s:?}");
    }
    // Evenly spread: at any moment every flow has sent the same count +- 1 (TCP
    // flows start as their connections open, up to `opened` apart).
    let sent: BTreeSet<u64> = stats.iter().map(|s| s.sent).collect();
    let slack = 1 + (opened.as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
    assert!(
        sent.last().unwrap() - sent.first().unwrap() <= slack,
        "{sent:?}"
    );
    let ours = seen
        .keys()
        .filter(|f| f.proto == proto && f.dport == srv.local_addr().port())
        .count();
    assert_eq!(ours, n, "the observer sees every flow");
    lab.clear_observed().unwrap();
    (user, wall)
}

#[test]
fn flow_generator_10k_udp_and_10k_tcp_flows() {
    let Some(_g) = root_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let s4 = IpAddr::V4(lab.server_addr());
    let n = 10_000;
    // The application's own work is small (user time); the system time is mostly
    // the kernel forwarding every message through the lab's 5 routers each way,
    // charged to the sending threads.
    let ue = echo_server(&lab, Proto::Udp, sa(s4, 7000)).expect("udp echo");
    let (cpu, wall) = run_flows(&lab, Proto::Udp, &ue, 20_000, n, 5);
    assert!(
        cpu.as_secs_f64() < 0.25 * wall.as_secs_f64(),
        "user {cpu:?} over {wall:?}"
    );
    // 10,000 TCP flows need 20,000 descriptors for both ends: more than this
    // machine's hard limit for one process, so the server runs as a child process.
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_svctr-lab"));
    let te =
        svctr_lab::echo_server_process(&lab, Proto::Tcp, sa(s4, 7001), &exe).expect("tcp echo");
    let (cpu, wall) = run_flows(&lab, Proto::Tcp, &te, 40_000, n, 5);
    assert_eq!(te.connections(), n as u64);
    assert!(
        cpu.as_secs_f64() < 0.25 * wall.as_secs_f64(),
        "user {cpu:?} over {wall:?}"
    );
    te.stop().unwrap();
}
