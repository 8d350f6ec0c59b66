//! End-to-end tests of the lab. They need root (network namespaces); without root
//! they are skipped, unless the CI environment variable is set (then they fail).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use svctr_lab::{
    list_netns, output_with_timeout, parse_traceroute, parse_traceroute_ip, spawn_in_netns,
    tcp_download, tcp_server, udp_server, udp_session, Lab, LabConfig, Proto,
};

fn root_guard() -> Option<std::sync::MutexGuard<'static, ()>> {
    svctr_lab::lab_test_guard()
}

/// Runs traceroute in the client namespace and parses its (IPv4) hops.
fn traceroute(lab: &Lab, args: &[String]) -> (Vec<Option<Ipv4Addr>>, String) {
    let (_, text) = traceroute_ip(lab, args);
    (parse_traceroute(&text), text)
}

/// Runs traceroute in the client namespace (either family): hops as `IpAddr`.
fn traceroute_ip(lab: &Lab, args: &[String]) -> (Vec<Option<IpAddr>>, String) {
    let mut c = lab.command(lab.client_ns(), "traceroute");
    c.args(args);
    let out = output_with_timeout(&mut c, None, Duration::from_secs(60)).expect("traceroute runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "traceroute {args:?} failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    (parse_traceroute_ip(&text), text)
}

/// Debian traceroute to `dst` (either family) with one probe per hop, TTL 1..=max_ttl:
/// `method` is "-T" (TCP SYN), "-U" (UDP to a fixed port) or "-I" (ICMP echo);
/// `sport` fixes the source port (not for -I), `label` sets the IPv6 flow label.
/// Retried once if a hop was lost.
fn trace_to(
    lab: &Lab,
    method: &str,
    dst: IpAddr,
    sport: Option<u16>,
    dport: u16,
    label: u32,
    max_ttl: usize,
) -> (Vec<Option<IpAddr>>, String) {
    let mut args: Vec<String> = vec![method.into()];
    if dst.is_ipv6() {
        args.push("-6".into());
        if label != 0 {
            args.push("-l".into());
            args.push(label.to_string());
        }
    }
    for a in ["-n", "-q", "1", "-N", "1", "-f", "1", "-w", "2"] {
        args.push(a.into());
    }
    args.push("-m".into());
    args.push(max_ttl.to_string());
    if let Some(p) = sport {
        args.push(format!("--sport={p}"));
    }
    if method != "-I" {
        args.push("-p".into());
        args.push(dport.to_string());
    }
    args.push(dst.to_string());
    let mut r = traceroute_ip(lab, &args);
    if r.0.len() != max_ttl || r.0.iter().any(|h| h.is_none()) {
        r = traceroute_ip(lab, &args);
    }
    r
}

/// Checks a `trace_to` result against the ground truth: hops 1..=hop_count are the
/// expected routers, the next hop is `dst` itself. Returns the branch.
fn assert_trace_matches(
    lab: &Lab,
    what: &str,
    hops: &[Option<IpAddr>],
    text: &str,
    expected: &[IpAddr],
    dst: IpAddr,
) -> usize {
    let n = lab.hop_count();
    assert_eq!(expected.len(), n, "{what}");
    assert_eq!(hops.len(), n + 1, "{what}:\n{text}");
    let routers: Vec<IpAddr> = hops[..n]
        .iter()
        .map(|h| h.unwrap_or_else(|| panic!("{what}: lost hop:\n{text}")))
        .collect();
    assert_eq!(
        &routers, expected,
        "{what}: traceroute vs ground truth\n{text}"
    );
    assert_eq!(
        hops[n],
        Some(dst),
        "{what}: last hop is the destination\n{text}"
    );
    lab.branch_of_path_ip(hops).expect("path has a branch hop")
}

/// Traceroute of a fixed 5-tuple: TCP SYN probes (`-T`) or UDP probes to a fixed
/// port (`-U`: unlike the default method, `-U` does not increment the destination
/// port per probe), from a fixed source port (`--sport`, implies one probe at a
/// time). Every probe then has the same 5-tuple, hence takes the same ECMP branch.
/// Probes TTL 1..=max_ttl; retried once if a hop was lost.
fn fixed_tuple_traceroute(
    lab: &Lab,
    proto: Proto,
    sport: u16,
    dport: u16,
    max_ttl: usize,
) -> (Vec<Option<Ipv4Addr>>, String) {
    let mut args: Vec<String> = vec![if proto == Proto::Tcp { "-T" } else { "-U" }.into()];
    for a in ["-n", "-q", "1", "-N", "1", "-f", "1", "-w", "2"] {
        args.push(a.into());
    }
    args.push("-m".into());
    args.push(max_ttl.to_string());
    args.push(format!("--sport={sport}"));
    args.push("-p".into());
    args.push(dport.to_string());
    args.push(lab.server_addr().to_string());
    let mut r = traceroute(lab, &args);
    if r.0.len() != max_ttl || r.0.iter().any(|h| h.is_none()) {
        r = traceroute(lab, &args);
    }
    r
}

fn branch_of(lab: &Lab, path: &[Ipv4Addr]) -> usize {
    lab.branch_of_path(&path.iter().map(|a| Some(*a)).collect::<Vec<_>>())
        .expect("path has a branch hop")
}

/// Up to `n` source ports from `range` spreading over as many branches as possible.
fn spread_ports(
    lab: &Lab,
    proto: Proto,
    dport: u16,
    range: std::ops::Range<u16>,
    n: usize,
) -> Vec<(u16, Vec<Ipv4Addr>)> {
    let mut by_branch: BTreeMap<usize, Vec<(u16, Vec<Ipv4Addr>)>> = BTreeMap::new();
    for p in range {
        let path = lab.expected_path(proto, p, dport).expect("expected_path");
        by_branch
            .entry(branch_of(lab, &path))
            .or_default()
            .push((p, path));
    }
    let mut picked = Vec::new();
    let mut round = 0;
    while picked.len() < n {
        let before = picked.len();
        for v in by_branch.values() {
            if let Some(x) = v.get(round) {
                if picked.len() < n {
                    picked.push(x.clone());
                }
            }
        }
        if picked.len() == before {
            break;
        }
        round += 1;
    }
    picked
}

#[test]
fn ground_truth_matches_fixed_tuple_traceroute() {
    let Some(_g) = root_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    assert_eq!(lab.hop_count(), 5);
    for (proto, dport, ports) in [
        (Proto::Tcp, 8080u16, 41000u16..41040),
        (Proto::Udp, 9000u16, 42000u16..42040),
    ] {
        let picked = spread_ports(&lab, proto, dport, ports, 6);
        let branches: BTreeSet<usize> = picked.iter().map(|(_, p)| branch_of(&lab, p)).collect();
        assert!(
            branches.len() >= 2,
            "{proto:?}: 40 source ports all hash to one branch: {branches:?}"
        );
        let mut seen = BTreeSet::new();
        for (sport, expected) in &picked {
            assert_eq!(expected.len(), lab.hop_count());
            let (hops, text) =
                fixed_tuple_traceroute(&lab, proto, *sport, dport, lab.hop_count() + 1);
            assert_eq!(
                hops.len(),
                lab.hop_count() + 1,
                "{proto:?} sport {sport}:\n{text}"
            );
            let routers: Vec<Ipv4Addr> = hops[..lab.hop_count()]
                .iter()
                .map(|h| h.unwrap_or_else(|| panic!("lost hop:\n{text}")))
                .collect();
            assert_eq!(
                &routers, expected,
                "{proto:?} sport {sport}: traceroute vs ground truth\n{text}"
            );
            assert_eq!(
                hops[lab.hop_count()],
                Some(lab.server_addr()),
                "last hop is the server\n{text}"
            );
            seen.insert(branch_of(&lab, &routers));
        }
        assert!(
            seen.len() >= 2,
            "{proto:?}: traceroute saw only branches {seen:?}"
        );
        eprintln!(
            "{proto:?}: {} ports verified over branches {seen:?}",
            picked.len()
        );
    }
}

#[test]
fn nat_ground_truth_uses_conntrack() {
    let Some(_g) = root_guard() else { return };
    let lab = Lab::build(LabConfig {
        nat: true,
        ..LabConfig::default()
    })
    .expect("build lab");
    let r1_uplink = Ipv4Addr::new(198, 18, 2, 1);
    // A flow that never started has no conntrack entry.
    assert!(lab.expected_path(Proto::Tcp, 40999, 8080).is_err());

    let srv = tcp_server(&lab, 8080, 2_000_000).expect("server");
    let dl = tcp_download(&lab, 8080, 0, 1_000_000, true).expect("download");
    let lport = dl
        .wait_established(Duration::from_secs(10))
        .expect("established");
    let (taddr, tport) = lab
        .nat_translation(Proto::Tcp, lport, 8080)
        .expect("conntrack entry");
    assert_eq!(taddr, r1_uplink);
    let path = lab
        .expected_path(Proto::Tcp, lport, 8080)
        .expect("expected_path");
    assert_eq!(path.len(), lab.hop_count());
    assert_eq!(
        path[0],
        Ipv4Addr::new(198, 18, 1, 1),
        "hop 1 is r1's client-facing address"
    );
    let k = lab
        .route_branch(Proto::Tcp, taddr, tport, lab.server_addr(), 8080)
        .expect("route get");
    assert_eq!(path, lab.branch_path(k));
    let rep = dl.wait().expect("download report");
    assert!(rep.intact && rep.errors.is_empty(), "{rep:?}");
    drop(srv);

    // Fresh fixed-tuple flows: traceroute's own probes create the NAT mapping; the
    // ground truth read back from conntrack must match what traceroute saw.
    // Probes stop at r4 (max TTL = hop_count): a probe reaching the server's closed
    // port is answered by a RST, and a RST answering an unreplied SYN makes r1's
    // conntrack delete the entry at once (nf_conntrack_proto_tcp), so there would
    // be nothing left to read.
    let mut translated_differs = false;
    for (proto, dport, sports) in [
        (Proto::Tcp, 8080u16, 43001u16..43005),
        (Proto::Udp, 9000u16, 43101u16..43103),
    ] {
        for sport in sports {
            let (hops, text) = fixed_tuple_traceroute(&lab, proto, sport, dport, lab.hop_count());
            let expected = lab.expected_path(proto, sport, dport).unwrap_or_else(|e| {
                let mut c = lab.command(lab.router_ns("r1").unwrap(), "conntrack");
                c.arg("-L");
                let o = output_with_timeout(&mut c, None, Duration::from_secs(10)).unwrap();
                panic!(
                    "{e:#}\ntraceroute:\n{text}\nconntrack -L:\n{}",
                    String::from_utf8_lossy(&o.stdout)
                )
            });
            let (_, tport) = lab.nat_translation(proto, sport, dport).unwrap();
            translated_differs |= tport != sport;
            let routers: Vec<Option<Ipv4Addr>> =
                hops.iter().take(lab.hop_count()).copied().collect();
            assert_eq!(
                routers,
                expected.iter().map(|a| Some(*a)).collect::<Vec<_>>(),
                "{proto:?} sport {sport} (translated to {tport}):\n{text}"
            );
        }
    }
    assert!(
        translated_differs,
        "masquerade random should have changed some source port"
    );
}

#[test]
fn firewall_blocks_classic_traceroute_but_not_services() {
    let Some(_g) = root_guard() else { return };
    let lab = Lab::build(LabConfig {
        firewall: true,
        ..LabConfig::default()
    })
    .expect("build lab");
    let server = lab.server_addr().to_string();
    // Classic UDP traceroute (ports 33434+, incremented per probe) and `-U` (port 53).
    for extra in [None, Some("-U")] {
        let mut args: Vec<String> = extra.into_iter().map(String::from).collect();
        for a in ["-n", "-q", "1", "-N", "1", "-w", "1", "-m", "8"] {
            args.push(a.into());
        }
        args.push(server.clone());
        let (hops, text) = traceroute(&lab, &args);
        assert_eq!(hops.len(), 8, "{text}");
        // The firewall is on r2 (hop 2): hops 1-2 answer, everything behind it is silent.
        for (i, h) in hops.iter().enumerate() {
            if i < 2 {
                assert!(
                    h.is_some(),
                    "hop {} before the firewall answers:\n{text}",
                    i + 1
                );
            } else {
                assert_eq!(
                    *h,
                    None,
                    "hop {} beyond the firewall is silent:\n{text}",
                    i + 1
                );
            }
        }
        assert_eq!(hops[1], Some(Ipv4Addr::new(198, 18, 2, 2)), "hop 2 is r2");
    }
    // Service ports work.
    let srv = tcp_server(&lab, 8081, 0).expect("server");
    let rep = tcp_download(&lab, 8081, 0, 500_000, true)
        .expect("download")
        .wait()
        .expect("report");
    assert!(
        rep.intact && rep.bytes == 500_000 && rep.errors.is_empty(),
        "{rep:?}"
    );
    assert_eq!(srv.connections(), 1);
    let usrv = udp_server(&lab, 9001).expect("udp server");
    let urep = udp_session(&lab, 9001, 0, 5, Duration::from_millis(10), true)
        .expect("session")
        .wait()
        .unwrap();
    assert_eq!(
        (urep.sent, urep.answered, urep.intact),
        (5, 5, true),
        "{urep:?}"
    );
    drop(usrv);
    // A non-service port is filtered: the connection attempt times out.
    let _closed = tcp_server(&lab, 7000, 0).expect("server on 7000");
    let blocked = tcp_download(&lab, 7000, 0, 1000, false)
        .expect("download")
        .wait();
    assert!(blocked.is_err(), "port 7000 must be filtered: {blocked:?}");
}

#[test]
fn apps_tcp_and_udp_roundtrip() {
    let Some(_g) = root_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let before = lab.nstat(lab.client_ns()).expect("nstat");
    assert!(before.contains_key("TcpRetransSegs"), "{before:?}");

    let srv = tcp_server(&lab, 8080, 4_000_000).expect("server");
    let dl = tcp_download(&lab, 8080, 45000, 2_000_000, true).expect("download");
    assert_eq!(dl.wait_established(Duration::from_secs(10)).unwrap(), 45000);
    assert!(dl.started());
    let rep = dl.wait().expect("report");
    assert_eq!(rep.bytes, 2_000_000, "{rep:?}");
    assert!(rep.intact, "{rep:?}");
    assert!(rep.errors.is_empty(), "{rep:?}");
    assert_eq!(rep.local_port, 45000);
    assert!(
        rep.duration >= Duration::from_millis(300),
        "paced at 4 MB/s: {rep:?}"
    );
    assert!(rep.duration < Duration::from_secs(10), "{rep:?}");
    assert_eq!(srv.bytes_sent(), 2_000_000);
    let after = lab.nstat(lab.client_ns()).expect("nstat");
    assert!(after["TcpActiveOpens"] > before["TcpActiveOpens"]);

    let usrv = udp_server(&lab, 9000).expect("udp server");
    let sess =
        udp_session(&lab, 9000, 46000, 20, Duration::from_millis(20), true).expect("session");
    assert_eq!(sess.wait_started(Duration::from_secs(5)).unwrap(), 46000);
    let urep = sess.wait().expect("udp report");
    assert_eq!((urep.sent, urep.answered), (20, 20), "{urep:?}");
    assert!(urep.intact && urep.errors.is_empty(), "{urep:?}");
    assert_eq!(usrv.datagrams(), 20);
    assert_eq!(usrv.empty_datagrams(), 0);

    // An empty datagram is counted, not answered.
    let server = std::net::SocketAddrV4::new(lab.server_addr(), 9000);
    spawn_in_netns(lab.client_ns(), "empty", move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.send_to(&[], server)?;
        Ok(())
    })
    .unwrap()
    .join()
    .unwrap()
    .unwrap();
    let t = Instant::now();
    while usrv.empty_datagrams() == 0 && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!((usrv.empty_datagrams(), usrv.datagrams()), (1, 21));

    // IP_RECVERR error reporting: port unreachable from a port with no server.
    let urep = udp_session(&lab, 9009, 0, 3, Duration::from_millis(20), true)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(urep.answered, 0);
    assert!(
        urep.errors.iter().any(|e| e.contains("errqueue")),
        "{urep:?}"
    );
    assert!(
        urep.errors.iter().any(|e| e.contains("refused")),
        "{urep:?}"
    );
}

#[test]
fn drop_cleans_up() {
    let Some(_g) = root_guard() else { return };
    let name = format!("stdrop{}", std::process::id());
    let lab = Lab::build_named(
        LabConfig {
            branches: 4,
            ..LabConfig::default()
        },
        &name,
    )
    .expect("build lab");
    let names = lab.namespaces();
    assert_eq!(names.len(), 2 + 2 + 4 + 2);
    assert_eq!(
        lab.router_names(),
        ["r1", "r2", "b1", "b2", "b3", "b4", "r3", "r4"]
    );
    assert!(lab.router_ns("b4").is_ok() && lab.router_ns("b5").is_err());
    let present = list_netns().unwrap();
    assert!(names.iter().all(|n| present.contains(n)));

    // A second lab with the same name fails and must not remove the first one's namespaces.
    let dup = Lab::build_named(LabConfig::default(), &name);
    assert!(dup.is_err());
    drop(dup);
    let present = list_netns().unwrap();
    assert!(
        names.iter().all(|n| present.contains(n)),
        "failed build removed someone else's namespaces"
    );
    assert!(Lab::build(LabConfig {
        branches: 2,
        ..LabConfig::default()
    })
    .is_err());

    // Threads still running when the lab is dropped are stopped.
    let srv = tcp_server(&lab, 8080, 1000).expect("server");
    let dl = tcp_download(&lab, 8080, 0, 1_000_000, false).expect("download");
    dl.wait_established(Duration::from_secs(5)).unwrap();
    let mut sleeper = lab.command(lab.client_ns(), "sleep");
    sleeper.arg("30");
    let mut child = sleeper.spawn().unwrap();
    let t = Instant::now();
    drop(lab);
    assert!(t.elapsed() < Duration::from_secs(10));
    let present = list_netns().unwrap();
    for n in &names {
        assert!(!present.contains(n), "{n} still exists after drop");
    }
    // The process left in the namespace was killed.
    let st = child.wait().unwrap();
    assert!(!st.success());
    let rep = dl.wait().expect("report");
    assert!(!rep.intact);
    drop(srv);
}

fn csum(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// IPv4 + bare TCP ACK segment.
fn tcp_ack_packet(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    seq: u32,
    ack: u32,
    ttl: u8,
) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&src.1.to_be_bytes());
    tcp.extend_from_slice(&dst.1.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.extend_from_slice(&[0x50, 0x10, 0x04, 0x00, 0, 0, 0, 0]);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.0.octets());
    pseudo.extend_from_slice(&dst.0.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&tcp);
    let c = csum(&pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 40, 0x12, 0x34, 0, 0, ttl, 6, 0, 0];
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&tcp);
    ip
}

/// Positive control for `DownloadReport::errors`: a TTL-1 segment carrying the live
/// flow's 5-tuple and an in-window sequence number makes r1 send an ICMP time
/// exceeded; with IP_RECVERR the client's recv() then fails once with EHOSTUNREACH
/// (tcp_v4_err), which the download must record. Without IP_RECVERR nothing shows.
#[test]
fn recverr_reports_icmp_errors_for_in_window_quotes() {
    let Some(_g) = root_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let _srv = tcp_server(&lab, 8080, 200_000).expect("server");
    for recverr in [true, false] {
        let dl = tcp_download(&lab, 8080, 0, 400_000, recverr).expect("download");
        let lport = dl.wait_established(Duration::from_secs(10)).unwrap();
        let (client, server) = (lab.client_addr(), lab.server_addr());
        spawn_in_netns(lab.client_ns(), "inject", move || {
            use socket2::{Domain, Protocol, SockAddr, Socket, Type};
            // A raw TCP socket sees incoming segments: the server's ACK number is
            // the client's snd_nxt (= snd_una: the client only sent its request).
            let sniff = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))?;
            sniff.set_read_timeout(Some(Duration::from_millis(200)))?;
            let deadline = Instant::now() + Duration::from_secs(5);
            let ack_of_server = loop {
                anyhow::ensure!(Instant::now() < deadline, "no segment from the server seen");
                let mut pkt = [0u8; 2048];
                let Ok(n) = std::io::Read::read(&mut &sniff, &mut pkt) else {
                    continue;
                };
                if n < 40 {
                    continue;
                }
                let ihl = usize::from(pkt[0] & 0x0f) * 4;
                let t = &pkt[ihl..];
                let (sp, dp) = (
                    u16::from_be_bytes([t[0], t[1]]),
                    u16::from_be_bytes([t[2], t[3]]),
                );
                if sp == 8080 && dp == lport {
                    break u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
                }
            };
            let probe = tcp_ack_packet((client, lport), (server, 8080), ack_of_server, 0, 1);
            let raw = Socket::new(
                Domain::IPV4,
                Type::RAW,
                Some(Protocol::from(libc::IPPROTO_RAW)),
            )?;
            raw.send_to(
                &probe,
                &SockAddr::from(std::net::SocketAddrV4::new(server, 0)),
            )?;
            Ok(())
        })
        .unwrap()
        .join()
        .unwrap()
        .expect("inject probe");
        let rep = dl.wait().expect("report");
        assert!(rep.intact, "the connection survives: {rep:?}");
        let ehostunreach = rep.errors.iter().any(|e| e.contains("No route to host"));
        assert_eq!(ehostunreach, recverr, "recverr={recverr}: {rep:?}");
    }
}

/// IPv6: every router answers from the address of the interface the probe came in
/// on, so `traceroute -6` shows the branch; the ground truth (routing oracle on r2)
/// matches fixed-tuple TCP and UDP traceroutes, and with a flow label too.
#[test]
fn ipv6_ground_truth_matches_fixed_tuple_traceroute() {
    let Some(_g) = root_guard() else { return };
    let t0 = Instant::now();
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    eprintln!("lab built in {:?}", t0.elapsed());
    let (src, dst) = (
        IpAddr::V6(lab.client_addr6()),
        IpAddr::V6(lab.server_addr6()),
    );
    for (proto, method, dport, ports) in [
        (Proto::Tcp, "-T", 8080u16, 41000u16..41030),
        (Proto::Udp, "-U", 9000u16, 42000u16..42030),
    ] {
        // Spread the source ports over the branches by ground truth.
        let mut by_branch: BTreeMap<usize, Vec<(u16, Vec<IpAddr>)>> = BTreeMap::new();
        for p in ports {
            let path = lab
                .expected_path_ip(proto, src, dst, p, dport, 0)
                .expect("expected_path_ip");
            let k = lab
                .branch_of_path_ip(&path.iter().map(|a| Some(*a)).collect::<Vec<_>>())
                .expect("branch");
            assert_eq!(path, lab.branch_path_ip(k, true));
            by_branch.entry(k).or_default().push((p, path));
        }
        assert!(
            by_branch.len() >= 2,
            "{proto:?}: one branch only: {by_branch:?}"
        );
        let picked: Vec<(u16, Vec<IpAddr>)> = (0..2)
            .flat_map(|round| {
                by_branch
                    .values()
                    .filter_map(move |v| v.get(round).cloned())
            })
            .take(6)
            .collect();
        let mut seen = BTreeSet::new();
        for (sport, expected) in &picked {
            let (hops, text) = trace_to(
                &lab,
                method,
                dst,
                Some(*sport),
                dport,
                0,
                lab.hop_count() + 1,
            );
            let what = format!("v6 {proto:?} sport {sport}");
            seen.insert(assert_trace_matches(
                &lab, &what, &hops, &text, expected, dst,
            ));
        }
        assert!(
            seen.len() >= 2,
            "{proto:?}: traceroute saw only branches {seen:?}"
        );
        eprintln!(
            "v6 {proto:?}: {} ports verified over branches {seen:?}",
            picked.len()
        );
    }

    // The flow label is part of the IPv6 ECMP hash (fib_multipath_hash_fields=0x3f):
    // one UDP 5-tuple, several labels (`traceroute -l`), at least two branches.
    let (sport, dport) = (43000u16, 9000u16);
    let mut by_branch: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for label in (1..=40u32).map(|i| i * 0x1111) {
        let path = lab
            .expected_path_ip(Proto::Udp, src, dst, sport, dport, label)
            .expect("expected_path_ip with a label");
        let k = lab
            .branch_of_path_ip(&path.iter().map(|a| Some(*a)).collect::<Vec<_>>())
            .unwrap();
        by_branch.entry(k).or_default().push(label);
    }
    assert!(
        by_branch.len() >= 2,
        "the flow label does not move the flow: {by_branch:?}"
    );
    let mut seen = BTreeSet::new();
    for labels in by_branch.values() {
        for &label in labels.iter().take(2) {
            let expected = lab
                .expected_path_ip(Proto::Udp, src, dst, sport, dport, label)
                .unwrap();
            let (hops, text) = trace_to(
                &lab,
                "-U",
                dst,
                Some(sport),
                dport,
                label,
                lab.hop_count() + 1,
            );
            let what = format!("v6 UDP sport {sport} label {label:#x}");
            seen.insert(assert_trace_matches(
                &lab, &what, &hops, &text, &expected, dst,
            ));
        }
    }
    assert!(
        seen.len() >= 2,
        "labels: traceroute saw only branches {seen:?}"
    );
}

/// ICMP echo probes (`traceroute -I`, both families) follow `Proto::Icmp` ground
/// truth. ICMP has no ports, so the path only depends on the addresses (and the
/// IPv6 flow label): fan-out destinations provide several flows.
#[test]
fn icmp_ground_truth_matches_traceroute_i() {
    let Some(_g) = root_guard() else { return };
    let lab = Lab::build(LabConfig {
        fanout: 12,
        ..LabConfig::default()
    })
    .expect("build lab");
    let mut seen: BTreeMap<bool, BTreeSet<usize>> = BTreeMap::new();
    let dsts: Vec<IpAddr> = [lab.server_addr().into(), lab.server_addr6().into()]
        .into_iter()
        .chain(lab.fanout_targets())
        .collect();
    for dst in dsts {
        let src = lab.client_addr_for(dst);
        let expected = lab
            .expected_path_ip(Proto::Icmp, src, dst, 0, 0, 0)
            .expect("expected_path_ip");
        let (hops, text) = trace_to(&lab, "-I", dst, None, 0, 0, lab.hop_count() + 1);
        let k = assert_trace_matches(
            &lab,
            &format!("ICMP to {dst}"),
            &hops,
            &text,
            &expected,
            dst,
        );
        seen.entry(dst.is_ipv6()).or_default().insert(k);
    }
    eprintln!("ICMP branches seen (v6?, branches): {seen:?}");
    for (v6, branches) in &seen {
        assert!(
            branches.len() >= 2,
            "ICMP v6={v6}: 13 destinations all on {branches:?}"
        );
    }
}

/// Fan-out: 200 (then 1000) extra destinations per family on the server, all behind
/// r4. UDP to a closed port is answered by port unreachable from the target itself,
/// TCP SYN by a RST, ICMP echo by a reply.
#[test]
fn fanout_targets_answer() {
    let Some(_g) = root_guard() else { return };
    for n in [200usize, 1000] {
        let t0 = Instant::now();
        let lab = Lab::build(LabConfig {
            fanout: n,
            ..LabConfig::default()
        })
        .expect("build lab");
        let built = t0.elapsed();
        eprintln!("lab with fanout {n} built in {built:?}");
        assert!(
            built < Duration::from_secs(30),
            "fanout {n}: build took {built:?}"
        );
        let (v4, v6) = (lab.fanout_targets_v4(), lab.fanout_targets_v6());
        assert_eq!((v4.len(), v6.len()), (n, n));
        assert_eq!(v4[0], Ipv4Addr::new(198, 19, 128, 1));
        assert_eq!(v6[0].to_string(), "2001:2:0:1980::1");
        assert_eq!(lab.fanout_targets().len(), 2 * n);
        assert!(lab.fanout_targets()[..n].iter().all(|a| a.is_ipv4()));
        assert!(!lab.is_destination(IpAddr::V4(svctr_lab::plan::fanout_v4(n + 1))));
        assert!(lab
            .expected_path_ip(
                Proto::Udp,
                lab.client_addr().into(),
                svctr_lab::plan::fanout_v4(n + 1).into(),
                1,
                2,
                0
            )
            .is_err());
        if n > 200 {
            // The bigger lab: spot checks only.
            for dst in [IpAddr::V4(v4[n - 1]), IpAddr::V6(v6[n - 1])] {
                lab.ping(lab.client_ns(), dst, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("ping {dst}: {e:#}"));
            }
            continue;
        }
        let picks = [0usize, n / 2, n - 1];
        for dst in picks
            .iter()
            .map(|&i| IpAddr::V4(v4[i]))
            .chain(picks.iter().map(|&i| IpAddr::V6(v6[i])))
        {
            let src = lab.client_addr_for(dst);
            for (proto, method, dport) in [(Proto::Udp, "-U", 33999u16), (Proto::Tcp, "-T", 7)] {
                let sport = 44000u16;
                let expected = lab
                    .expected_path_ip(proto, src, dst, sport, dport, 0)
                    .expect("expected_path_ip");
                let (hops, text) = trace_to(
                    &lab,
                    method,
                    dst,
                    Some(sport),
                    dport,
                    0,
                    lab.hop_count() + 1,
                );
                assert_trace_matches(
                    &lab,
                    &format!("{proto:?} to fan-out target {dst}"),
                    &hops,
                    &text,
                    &expected,
                    dst,
                );
            }
            lab.ping(lab.client_ns(), dst, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("ping {dst}: {e:#}"));
        }
        // Every target answers an echo request (no ICMP rate limit on the server).
        let t = Instant::now();
        for dst in lab.fanout_targets() {
            lab.ping(lab.client_ns(), dst, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("ping {dst}: {e:#}"));
        }
        eprintln!("pinged all {} fan-out targets in {:?}", 2 * n, t.elapsed());
    }
}
