//! End-to-end tests of service recognition and the monitor in the namespace lab: flows picked
//! by sniffed DNS answers (a real resolver against dnsmasq), by the server name of real TLS
//! (curl) and QUIC (quinn) clients with no DNS at all, 10,000 flows at once under a probe-rate
//! limit, IPv6 flows over the IPv6 ECMP stage, and a clean exit on SIGTERM. Every hop is
//! checked against the ECMP router's ground truth.
//!
//! They need root. Without root they are skipped with a message, unless `CI` is set: then
//! they fail, so they can never be skipped silently in CI.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{json_lines, stderr, tracer_for, tracer_in_background, TRACER};
use svctr_core::{MatchSource, Protocol, StopReason, TraceResult};
use svctr_lab::{
    dns_server, echo_server, flow_generator, lab_test_guard, quic_download, quic_server,
    run_checked, tcp_download_to, tcp_server_on, tls_download, tls_server_paced, udp_server_on,
    udp_session_to, DnsRecord, Family, Lab, LabConfig, Proto,
};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn lab_proto(p: Protocol) -> Proto {
    match p {
        Protocol::Udp => Proto::Udp,
        _ => Proto::Tcp,
    }
}

/// (protocol, local port, remote) of a result.
fn flow_of(r: &TraceResult) -> (Protocol, u16, SocketAddr) {
    (
        r.flow.protocol,
        r.flow.local.port,
        SocketAddr::new(r.flow.remote.ip, r.flow.remote.port),
    )
}

/// Every probe of every hop answered by exactly the router of `truth` at its TTL, and the
/// trace stopped one short of the remote.
fn assert_hops(r: &TraceResult, truth: &[IpAddr]) {
    assert_eq!(r.stop_reason, StopReason::RemoteDistance, "{r:?}");
    assert_eq!(r.hops.len(), truth.len(), "{:?}: {r:?}", r.flow);
    for (hop, want) in r.hops.iter().zip(truth) {
        for p in &hop.probes {
            assert_eq!(p.addr, Some(*want), "ttl {} of {:?}", hop.ttl, r.flow);
        }
    }
}

/// A signature file with three services, in a directory of its own.
fn signature_file(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("svctr-sigs-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lab.toml");
    std::fs::write(
        &path,
        r#"# The lab's services.
format = 1

[[service]]
name = "video"
domains = ["video.example.test"]

[[service]]
name = "cdn"
domains = ["cdn.test"]

[[service]]
name = "audio"
domains = ["audio.example.test"]
"#,
    )
    .unwrap();
    path
}

/// A real resolver in the client namespace asks the lab's dnsmasq; two monitors that sniff the
/// answers pick exactly the flows of the services they were asked for, over both families and
/// through a CNAME chain, and none of the flows to names of other services, to names of no
/// service, or to addresses nobody resolved.
#[test]
fn dns_answers_select_exactly_the_flows_of_the_named_services() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig {
        fanout: 6,
        ..LabConfig::default()
    })
    .expect("build lab");
    let (f4, f6) = (lab.fanout_targets_v4(), lab.fanout_targets_v6());
    let a = |name: &str, i: usize| DnsRecord::A {
        name: name.into(),
        addr: f4[i],
        ttl: 300,
    };
    let aaaa = |name: &str, i: usize| DnsRecord::Aaaa {
        name: name.into(),
        addr: f6[i],
        ttl: 300,
    };
    let records = vec![
        a("video.example.test", 0),
        aaaa("video.example.test", 0),
        DnsRecord::Cname {
            name: "www.example.test".into(),
            target: "edge.cdn.test".into(),
            ttl: 300,
        },
        a("edge.cdn.test", 1),
        aaaa("edge.cdn.test", 1),
        a("audio.example.test", 2),
        a("news.other.test", 3),
    ];
    let _dns = dns_server(&lab, &records).expect("dns server");
    let _servers = (
        tcp_server_on(&lab, "0.0.0.0:8080".parse().unwrap(), 150_000).unwrap(),
        tcp_server_on(&lab, "[::]:8080".parse().unwrap(), 150_000).unwrap(),
        udp_server_on(&lab, "0.0.0.0:9000".parse().unwrap()).unwrap(),
        udp_server_on(&lab, "[::]:9000".parse().unwrap()).unwrap(),
    );
    let sigs = signature_file("dns");
    let sigs = sigs.to_str().unwrap();
    let common = [
        "-i",
        "eth0",
        "--signatures",
        sigs,
        "--duration",
        "12",
        "--retrace-after",
        "never",
        "--format",
        "jsonl",
    ];
    let mut video_cdn: Vec<&str> = vec!["monitor", "--service", "video", "--service", "cdn"];
    video_cdn.extend(common);
    let mut audio: Vec<&str> = vec!["monitor", "--service", "audio"];
    audio.extend(common);
    let t1 = tracer_in_background(&lab, &video_cdn, secs(90));
    let t2 = tracer_in_background(&lab, &audio, secs(90));
    std::thread::sleep(secs(2)); // both capturing before the first query

    // The applications resolve their names, then open one TCP and one UDP flow to each address.
    let mut flows = Vec::new();
    let mut lport = 30000;
    let mut apps = (Vec::new(), Vec::new());
    let mut connect =
        |dst: IpAddr, apps: &mut (Vec<_>, Vec<_>), flows: &mut Vec<(Protocol, u16, SocketAddr)>| {
            lport += 1;
            let d = tcp_download_to(&lab, sa(dst, 8080), lport, 1_500_000, true).expect("download");
            d.wait_established(secs(10)).expect("established");
            flows.push((Protocol::Tcp, lport, sa(dst, 8080)));
            apps.0.push(d);
            lport += 1;
            let s = udp_session_to(
                &lab,
                sa(dst, 9000),
                lport,
                200,
                Duration::from_millis(50),
                true,
            )
            .expect("session");
            s.wait_started(secs(10)).expect("started");
            flows.push((Protocol::Udp, lport, sa(dst, 9000)));
            apps.1.push(s);
        };
    for (name, family) in [
        ("video.example.test", Family::V4),
        ("video.example.test", Family::V6),
        ("www.example.test", Family::V4),
        ("www.example.test", Family::V6),
        ("audio.example.test", Family::V4),
        ("news.other.test", Family::V4),
    ] {
        let addrs = lab
            .resolve(name, Some(family))
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(addrs.len(), 1, "{name}: {addrs:?}");
        connect(addrs[0], &mut apps, &mut flows);
    }
    // Flows to an address no answer named.
    connect(IpAddr::V4(f4[4]), &mut apps, &mut flows);

    let by_addr = |r: &TraceResult| -> Option<&'static str> {
        match r.flow.remote.ip {
            ip if ip == IpAddr::V4(f4[0]) || ip == IpAddr::V6(f6[0]) => Some("video"),
            ip if ip == IpAddr::V4(f4[1]) || ip == IpAddr::V6(f6[1]) => Some("cdn"),
            ip if ip == IpAddr::V4(f4[2]) => Some("audio"),
            _ => None,
        }
    };
    for (out, want, n) in [
        (t1.join().unwrap(), ["video", "cdn"].as_slice(), 8),
        (t2.join().unwrap(), ["audio"].as_slice(), 2),
    ] {
        let results: Vec<TraceResult> = json_lines(&out);
        let traced: BTreeSet<_> = results.iter().map(flow_of).collect();
        let expected: BTreeSet<_> = flows
            .iter()
            .filter(|(_, _, dst)| {
                let ip = dst.ip();
                (want.contains(&"video") && (ip == IpAddr::V4(f4[0]) || ip == IpAddr::V6(f6[0])))
                    || (want.contains(&"cdn")
                        && (ip == IpAddr::V4(f4[1]) || ip == IpAddr::V6(f6[1])))
                    || (want.contains(&"audio") && ip == IpAddr::V4(f4[2]))
            })
            .copied()
            .collect();
        assert_eq!(expected.len(), n);
        assert_eq!(
            traced,
            expected,
            "exactly the flows of {want:?}; stderr: {}",
            stderr(&out)
        );
        for r in &results {
            let service = by_addr(r).expect("a service's address");
            assert_eq!(r.flow.service.as_deref(), Some(service));
            assert_eq!(r.flow.matched_by, Some(MatchSource::Dns));
            let name = match service {
                "video" => "video.example.test",
                "cdn" => "edge.cdn.test", // the CNAME target is the name that matched
                _ => "audio.example.test",
            };
            assert_eq!(r.flow.name.as_deref(), Some(name));
            let (proto, lp, dst) = flow_of(r);
            let client = lab.client_addr_for(dst.ip());
            let truth = lab
                .expected_path_ip(lab_proto(proto), client, dst.ip(), lp, dst.port(), 0)
                .expect("ground truth");
            assert_hops(r, &truth);
        }
    }
    for d in apps.0 {
        let rep = d.wait().expect("download report");
        assert!(rep.intact && rep.errors.is_empty(), "{rep:?}");
    }
    for s in apps.1 {
        let rep = s.wait().expect("udp report");
        assert!(rep.intact && rep.errors.is_empty(), "{rep:?}");
    }
}

/// With no DNS on the wire (curl is told the address with --resolve; the QUIC client is given
/// it), the server name in the TLS ClientHello and in the QUIC Initial identifies the service,
/// over both families, also when the ClientHello leaves as several TCP segments.
#[test]
fn tls_and_quic_server_names_identify_the_service_without_dns() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let (s4, s6) = (
        IpAddr::V4(lab.server_addr()),
        IpAddr::V6(lab.server_addr6()),
    );
    // A paced TLS server per connection (s_server serves one at a time), ~10 s each.
    let (size, rate) = (3_000_000, 300_000);
    let tls: Vec<_> = [sa(s4, 8441), sa(s6, 8442), sa(s4, 8443), sa(s4, 8444)]
        .into_iter()
        .map(|bind| {
            let any = if bind.is_ipv4() {
                sa(IpAddr::from([0u8; 4]), bind.port())
            } else {
                sa(IpAddr::from([0u16; 8]), bind.port())
            };
            tls_server_paced(&lab, any, size, rate).expect("tls server")
        })
        .collect();
    let names = ["video.example.test", "other.test"];
    let _q = (
        quic_server(&lab, "0.0.0.0:4433".parse().unwrap(), &names).expect("quic v4"),
        quic_server(&lab, "[::]:4433".parse().unwrap(), &names).expect("quic v6"),
    );
    let args = [
        "monitor",
        "-i",
        "eth0",
        "--domain",
        "video.example.test",
        "--duration",
        "8",
        "--retrace-after",
        "never",
    ];
    let tracer = tracer_in_background(&lab, &args, secs(90));
    std::thread::sleep(secs(2));
    let mut curls = Vec::new();
    for (host, dst, lp) in [
        ("video.example.test", sa(s4, 8441), 41001),
        ("video.example.test", sa(s6, 8442), 41002),
        ("other.test", sa(s4, 8443), 41003),
    ] {
        let mut d = tls_download(&lab, host, dst, lp, 0).expect("curl");
        d.wait_established(secs(10)).expect("established");
        curls.push(d);
    }
    let mut quics = Vec::new();
    for (host, dst, lp) in [
        ("video.example.test", sa(s4, 4433), 44301),
        ("video.example.test", sa(s6, 4433), 44302),
        ("other.test", sa(s4, 4433), 44303),
    ] {
        let d = quic_download(&lab, host, dst, lp, size, rate).expect("quic");
        d.wait_established(secs(10)).expect("established");
        quics.push(d);
    }
    let out = tracer.join().unwrap();
    let results: Vec<TraceResult> = json_lines(&out);
    let traced: BTreeMap<_, _> = results.iter().map(|r| (flow_of(r), r)).collect();
    let want = [
        ((Protocol::Tcp, 41001, sa(s4, 8441)), MatchSource::TlsSni),
        ((Protocol::Tcp, 41002, sa(s6, 8442)), MatchSource::TlsSni),
        ((Protocol::Udp, 44301, sa(s4, 4433)), MatchSource::QuicSni),
        ((Protocol::Udp, 44302, sa(s6, 4433)), MatchSource::QuicSni),
    ];
    assert_eq!(
        traced.keys().copied().collect::<BTreeSet<_>>(),
        want.iter().map(|w| w.0).collect(),
        "stderr: {}",
        stderr(&out)
    );
    for ((proto, lp, dst), source) in want {
        let r = traced[&(proto, lp, dst)];
        assert_eq!(
            (
                r.flow.service.as_deref(),
                r.flow.name.as_deref(),
                r.flow.matched_by
            ),
            (
                Some("video.example.test"),
                Some("video.example.test"),
                Some(source)
            )
        );
        let truth = lab
            .expected_path_ip(
                lab_proto(proto),
                lab.client_addr_for(dst.ip()),
                dst.ip(),
                lp,
                dst.port(),
                0,
            )
            .unwrap();
        assert_hops(r, &truth);
    }

    // The ClientHello split over several segments (GSO off, a small MSS): reassembled.
    lab.split_client_segments(200).expect("split");
    let args = [
        "monitor",
        "-i",
        "eth0",
        "--domain",
        "video.example.test",
        "--count",
        "1",
        "--duration",
        "8",
        "--format",
        "jsonl",
    ];
    let tracer = tracer_in_background(&lab, &args, secs(60));
    std::thread::sleep(secs(2));
    let mut d = tls_download(&lab, "video.example.test", sa(s4, 8444), 41010, 0).expect("curl");
    d.wait_established(secs(10)).expect("established");
    let out = tracer.join().unwrap();
    lab.restore_client_segments().expect("restore");
    let results: Vec<TraceResult> = json_lines(&out);
    assert_eq!(results.len(), 1, "{}", stderr(&out));
    assert_eq!(flow_of(&results[0]), (Protocol::Tcp, 41010, sa(s4, 8444)));
    assert_eq!(results[0].flow.matched_by, Some(MatchSource::TlsSni));
    curls.push(d);
    for d in curls {
        let rep = d.wait().expect("curl report");
        assert!(rep.success, "{rep:?}");
    }
    for q in quics {
        let rep = q.wait().expect("quic report");
        assert!(rep.intact && rep.errors.is_empty(), "{rep:?}");
    }
    drop(tls);
}

/// Probes the client sent so far: an nftables counter in the client's output hook for the
/// probes of the flows to `port` (TTL at most 32; the application's packets leave with 64).
fn probes_counter(lab: &Lab, port: u16) -> impl Fn() -> u64 + '_ {
    let script = format!(
        "table ip svctr_rate {{\n chain out {{ type filter hook output priority 0; policy accept; ip ttl <= 32 udp dport {port} counter; }}\n}}\n"
    );
    let mut c = lab.command(lab.client_ns(), "nft");
    c.args(["-f", "-"]);
    run_checked(&mut c, Some(&script), secs(20)).expect("nft counter");
    move || {
        let mut c = lab.command(lab.client_ns(), "nft");
        c.args(["-j", "list", "table", "ip", "svctr_rate"]);
        let out = run_checked(&mut c, None, secs(20)).expect("nft list");
        let v: serde_json::Value = serde_json::from_str(&out).expect("nft json");
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["rule"]["expr"].as_array())
            .flatten()
            .find_map(|e| e["counter"]["packets"].as_u64())
            .unwrap_or(0)
    }
}

/// 10,000 UDP flows (a flow generator: 10,000 local ports, one message a second each) traced
/// at once by one process under `--rate`: every flow traced, at least 99.9 % of hops equal to
/// the ECMP router's ground truth, and the probes never faster than the limit (measured
/// independently, by a counter in the client's output hook sampled every 100 ms).
#[test]
fn ten_thousand_flows_at_once_within_the_rate_limit() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let n = 10_000usize;
    let rate = 20_000u64;
    let dst = sa(lab.server_addr(), 7000);
    let _echo = echo_server(&lab, Proto::Udp, dst).expect("echo server");
    let gen = flow_generator(&lab, Proto::Udp, dst, 20_000, n, secs(1)).expect("flow generator");
    assert_eq!(gen.wait_open(secs(30)).expect("open"), n);
    std::thread::sleep(secs(2));
    let probes = probes_counter(&lab, 7000);
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let samples = std::thread::scope(|s| {
        let flag = sampling.clone();
        let sampler = s.spawn(move || {
            let t0 = Instant::now();
            let mut v = Vec::new();
            // (read began, read ended, count): the count is the counter at some instant between.
            let read = || {
                let a = t0.elapsed();
                let c = probes();
                (a, t0.elapsed(), c)
            };
            while flag.load(std::sync::atomic::Ordering::Relaxed) && t0.elapsed() < secs(120) {
                v.push(read());
                std::thread::sleep(Duration::from_millis(100));
            }
            v.push(read());
            v
        });
        let args = [
            "flow",
            "-i",
            "eth0",
            "--udp",
            "--remote",
            "198.19.1.2:7000",
            "--count",
            "10000",
            "--duration",
            "60",
            "--rate",
            "20000",
            "--format",
            "jsonl",
            "--stats",
        ];
        let out = tracer_for(&lab, &args, secs(180));
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        (out, sampler.join().unwrap())
    });
    let (out, samples) = samples;
    let results: Vec<TraceResult> = json_lines(&out);
    assert_eq!(
        results.len(),
        n,
        "every flow traced; stderr: {}",
        stderr(&out)
    );
    let ports: BTreeSet<u16> = results.iter().map(|r| r.flow.local.port).collect();
    assert_eq!(ports.len(), n);
    let specs: Vec<_> = results
        .iter()
        .map(|r| {
            (
                IpAddr::V4(lab.client_addr()),
                r.flow.local.port,
                dst.ip(),
                dst.port(),
                0,
            )
        })
        .collect();
    let truth = lab
        .expected_paths(Proto::Udp, &specs)
        .expect("ground truth");
    let (mut hops, mut right, mut silent, mut wrong) = (0usize, 0usize, 0usize, 0usize);
    for (r, want) in results.iter().zip(&truth) {
        for (i, w) in want.iter().enumerate() {
            hops += 1;
            let probes = r
                .hops
                .get(i)
                .map(|h| h.probes.as_slice())
                .unwrap_or_default();
            let ok = !probes.is_empty() && probes.iter().all(|p| p.addr == Some(*w));
            right += usize::from(ok);
            silent += probes.iter().filter(|p| p.addr.is_none()).count();
            wrong += probes
                .iter()
                .filter(|p| p.addr.is_some_and(|a| a != *w))
                .count();
        }
    }
    let share = right as f64 / hops as f64;
    eprintln!(
        "10,000 flows: {right} of {hops} hops equal to ground truth ({:.4} %); probes unanswered {silent}, answered by another router {wrong}; tracer: {}",
        100.0 * share,
        stderr(&out).trim()
    );
    assert!(share >= 0.999, "{right} of {hops}");
    // The rate: between any two readings of the counter at least 1 s apart, at most the rate
    // times the longest time they can span (the second read's end - the first read's start)
    // plus the burst (10 ms worth).
    let total = samples.last().unwrap().2 - samples[0].2;
    let sent: u64 = results.iter().map(|r| u64::from(r.probes_sent)).sum();
    assert!(
        total >= sent,
        "the counter saw {total} probes, the results say {sent}"
    );
    let (mut worst, mut busiest) = (0.0f64, 0.0f64);
    for (i, (_, end, c)) in samples.iter().enumerate() {
        for (start, _, c0) in samples[..i]
            .iter()
            .rev()
            .filter(|(_, e0, _)| *end - *e0 >= secs(1))
        {
            let span = (*end - *start).as_secs_f64();
            let allowed = rate as f64 * span + rate as f64 / 100.0;
            worst = worst.max((c - c0) as f64 / allowed);
            busiest = busiest.max((c - c0) as f64 / span);
        }
    }
    let first = samples
        .iter()
        .find(|s| s.2 > samples[0].2)
        .map_or(Duration::ZERO, |s| s.0);
    let last = samples
        .iter()
        .find(|s| s.2 == samples.last().unwrap().2)
        .map_or(Duration::ZERO, |s| s.1);
    eprintln!(
        "probes: {total} in {:?}; busiest interval of 1 s or more: {busiest:.0} probes/s; at most {:.1} % of what the limit allows",
        last.saturating_sub(first),
        100.0 * worst
    );
    assert!(
        worst <= 1.0,
        "more probes than --rate {rate} allows: {:.1} %",
        100.0 * worst
    );
    assert!(
        busiest >= rate as f64 * 0.5,
        "the limit was the bottleneck: {busiest:.0} probes/s"
    );
    assert_eq!(gen.alive(), n, "the flows lived on");
}

/// IPv6 flows over the IPv6 ECMP stage, with the kernel's per-connection flow labels (which
/// r2 hashes): every probe of every hop of every TCP and UDP flow answered by the router the
/// application's own packets went through (r2's record of them), so the probes kept each
/// flow's label.
#[test]
fn ipv6_flows_across_ecmp_match_the_path_of_their_own_packets() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig {
        client_flow_labels: true,
        fanout: 3,
        ..LabConfig::default()
    })
    .expect("build lab");
    let _servers = (
        tcp_server_on(&lab, "[::]:8080".parse().unwrap(), 200_000).unwrap(),
        udp_server_on(&lab, "[::]:9000".parse().unwrap()).unwrap(),
    );
    let mut dsts = vec![IpAddr::V6(lab.server_addr6())];
    dsts.extend(lab.fanout_targets_v6().into_iter().map(IpAddr::V6));
    let (mut downloads, mut sessions) = (Vec::new(), Vec::new());
    for i in 0..12u16 {
        let dst = dsts[usize::from(i) % dsts.len()];
        let d = tcp_download_to(&lab, sa(dst, 8080), 33000 + i, 2_000_000, true).expect("download");
        d.wait_established(secs(10)).expect("established");
        downloads.push(d);
        let s = udp_session_to(
            &lab,
            sa(dst, 9000),
            34000 + i,
            200,
            Duration::from_millis(50),
            true,
        )
        .expect("session");
        s.wait_started(secs(10)).expect("started");
        sessions.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let args = [
        "monitor",
        "-i",
        "eth0",
        "--cidr",
        "2001:2:0:1900::/56",
        "--count",
        "24",
        "--duration",
        "20",
        "--format",
        "jsonl",
    ];
    let out = tracer_for(&lab, &args, secs(90));
    let results: Vec<TraceResult> = json_lines(&out);
    assert_eq!(results.len(), 24, "{}", stderr(&out));
    let seen = lab.observed_branches().expect("observer");
    let mut labels = BTreeSet::new();
    let mut branches = BTreeSet::new();
    for r in &results {
        let (proto, lp, dst) = flow_of(r);
        let app = lab.app_flow(lab_proto(proto), lp, dst).unwrap();
        let b = seen
            .get(&app)
            .unwrap_or_else(|| panic!("r2 saw no packet of {app:?}"));
        assert_eq!(b.len(), 1, "{app:?} took one branch: {b:?}");
        let k = *b.iter().next().unwrap();
        branches.insert(k);
        assert_hops(r, &lab.branch_path_ip(k, true));
        let label = r.flow.flow_label.expect("an IPv6 flow reports its label");
        assert_ne!(label, 0, "the kernel labels each flow");
        labels.insert(label);
    }
    assert!(labels.len() >= 20, "distinct labels: {labels:?}");
    assert!(
        branches.len() >= 2,
        "the flows spread over branches {branches:?}"
    );
    for d in downloads {
        let rep = d.wait().expect("report");
        assert!(rep.intact && rep.errors.is_empty(), "{rep:?}");
    }
    for s in sessions {
        let rep = s.wait().expect("report");
        assert!(
            rep.intact && rep.errors.is_empty() && rep.answered == rep.sent,
            "{rep:?}"
        );
    }
}

/// SIGTERM (like Ctrl-C) ends the monitor at once with exit status 0: the trace in flight is
/// printed, marked `interrupted`, with the hops it had.
#[test]
fn sigterm_ends_the_monitor_with_traces_in_flight_marked() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("build lab");
    let _srv = tcp_server_on(&lab, "0.0.0.0:8080".parse().unwrap(), 200_000).unwrap();
    let d =
        tcp_download_to(&lab, sa(lab.server_addr(), 8080), 0, 3_000_000, true).expect("download");
    d.wait_established(secs(10)).expect("established");
    // One probe every 400 ms: the trace takes 6 s.
    let mut c = lab.command(lab.client_ns(), TRACER);
    c.args([
        "monitor",
        "-i",
        "eth0",
        "--tcp",
        "--algorithm",
        "packet-by-packet",
        "--inter-probe",
        "400ms",
        "--inter-hop",
        "400ms",
    ]);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().expect("tracer");
    std::thread::sleep(secs(3));
    let t = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert!(t.elapsed() < secs(2), "exits promptly: {:?}", t.elapsed());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results: Vec<TraceResult> = json_lines(&out);
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert_eq!(r.stop_reason, StopReason::Interrupted);
    assert!(
        !r.hops.is_empty() && r.hops.len() < lab.hop_count(),
        "{r:?}"
    );
    assert!(r.hops[0].probes.iter().all(|p| p.addr.is_some()), "{r:?}");
    let rep = d.wait().expect("report");
    assert!(rep.intact && rep.errors.is_empty(), "{rep:?}");
}

/// Bad service input: one line on stderr naming the problem (and the file and line), exit 2,
/// before anything is opened (no root needed).
#[test]
fn bad_service_input_gives_one_line_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("svctr-bad-sigs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let syntax = write("syntax.toml", "format = 1\n[[service]\nname = \"x\"\n");
    let regex = write(
        "regex.toml",
        "format = 1\n\n[[service]]\nname = \"x\"\nregexes = [\"(unclosed\"]\n",
    );
    let cidr = write(
        "cidr.toml",
        "format = 1\n[[service]]\nname = \"x\"\nprefixes = [\"10.0.0.0/40\"]\n",
    );
    let version = write("version.toml", "format = 9\n");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--signatures", &syntax], "syntax.toml:2:"),
        (vec!["--signatures", &regex], "regex.toml:5:"),
        (vec!["--signatures", &cidr], "cidr.toml:4:"),
        (vec!["--signatures", &version], "version.toml:1:"),
        (
            vec!["--signatures", "/nonexistent/x.toml"],
            "/nonexistent/x.toml",
        ),
        (vec!["--service", "nosuch"], "unknown service"),
        (vec!["--cidr", "198.19.0.0/99"], "198.19.0.0/99"),
        (vec!["--domain", "bad..name"], "bad..name"),
    ];
    for (extra, text) in cases {
        for cmd in ["flow", "monitor"] {
            let mut args = vec![cmd, "-i", "lo"];
            args.extend(&extra);
            let out = std::process::Command::new(TRACER)
                .args(&args)
                .output()
                .unwrap();
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "one line for {args:?}: {err:?}");
            assert!(err.contains(text), "{args:?}: {err}");
            assert!(out.stdout.is_empty());
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
