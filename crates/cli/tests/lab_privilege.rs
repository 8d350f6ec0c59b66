//! Least privilege, end to end in the lab: a user with the tool's file capabilities (the
//! README's `setcap` mode) traces TCP and UDP flows of both families with the shield working,
//! and every process keeps, once set up, only the capabilities it still needs; started as root
//! it runs as `nobody` after start-up. Read from `/proc/PID/task/*/status`, every thread.
//! Root only (see `svctr_lab::lab_test_guard`).

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, TRACER};
use svctr_core::TraceResult;
use svctr_lab::{
    lab_test_guard, tcp_download_to, tcp_server_on, udp_server_on, udp_session_to, Lab, LabConfig,
};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const NET_ADMIN: u64 = 1 << 12;
const NET_RAW: u64 = 1 << 13;
const NOBODY: u32 = 65534;

/// A copy of the tracer that `nobody` can run, with `cap_net_raw,cap_net_admin+ep`; removed
/// when dropped.
struct CapsCopy {
    dir: std::path::PathBuf,
    bin: String,
}

impl CapsCopy {
    fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("svctr-setcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let bin = dir.join("service-traceroute");
        std::fs::copy(TRACER, &bin).expect("copy the binary");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let bin = bin.to_string_lossy().to_string();
        let out = std::process::Command::new("setcap")
            .args(["cap_net_raw,cap_net_admin+ep", &bin])
            .output()
            .expect("setcap runs");
        assert!(out.status.success(), "setcap: {}", stderr(&out));
        Self { dir, bin }
    }
}

impl Drop for CapsCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `args` as `nobody` (no capability of its own: the file's only) in the client namespace.
fn as_nobody(lab: &Lab, bin: &str, args: &[&str]) -> std::process::Command {
    let mut c = lab.command(lab.client_ns(), "setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--",
        bin,
    ])
    .args(args);
    c
}

/// A thread's status: (Uid fields, CapPrm, CapEff, CapAmb).
type ThreadStatus = (Vec<u32>, u64, u64, u64);

/// Every thread's status.
fn threads(pid: u32) -> Vec<ThreadStatus> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        let field: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k, v.trim()))
            .collect();
        let hex =
            |k: &str| u64::from_str_radix(field.get(k).copied().unwrap_or("0"), 16).unwrap_or(0);
        let uids = field
            .get("Uid")
            .map(|u| {
                u.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        out.push((uids, hex("CapPrm"), hex("CapEff"), hex("CapAmb")));
    }
    out
}

/// Starts `c` (stdout and stderr piped), waits `after`, reads every thread's status, then
/// waits for the end (at most 60 s): (threads, stdout, stderr, exit code).
fn status_mid_run(
    mut c: std::process::Command,
    after: Duration,
) -> (Vec<ThreadStatus>, String, String, Option<i32>) {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child: Child = c.spawn().expect("starts");
    std::thread::sleep(after);
    let seen = threads(child.id());
    let deadline = Instant::now() + SECS(60);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("ends");
    (
        seen,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

/// The first JSON result of a run's output.
fn first_result(stdout: &str, err: &str) -> TraceResult {
    let line = stdout
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no result: {err}"));
    common::record(line)
}

/// A user with only the file capabilities traces a live UDP session and a live TCP download,
/// IPv4 and IPv6: every router answers, and the shield works (the session's `IP_RECVERR`
/// socket sees no error, its answers intact: `nft` got `CAP_NET_ADMIN` as an ambient
/// capability). While a monitor runs, each of its threads has at most `CAP_NET_RAW` and
/// `CAP_NET_ADMIN` (the run loop both, the output watcher none); a `trace` keeps none.
#[test]
fn file_capabilities_trace_tcp_and_udp_flows_with_the_shield() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("lab");
    let _u4 = udp_server_on(&lab, "0.0.0.0:9000".parse().unwrap()).expect("udp");
    let _u6 = udp_server_on(&lab, "[::]:9000".parse().unwrap()).expect("udp6");
    let _t4 = tcp_server_on(&lab, "0.0.0.0:8080".parse().unwrap(), 1_000_000).expect("tcp");
    let _t6 = tcp_server_on(&lab, "[::]:8080".parse().unwrap(), 1_000_000).expect("tcp6");
    let copy = CapsCopy::new();
    for server in [
        IpAddr::V4(lab.server_addr()),
        IpAddr::V6(lab.server_addr6()),
    ] {
        // UDP, the shield on.
        let dst = SocketAddr::new(server, 9000);
        let session =
            udp_session_to(&lab, dst, 0, 150, Duration::from_millis(20), true).expect("session");
        session.wait_started(SECS(10)).expect("started");
        let remote = dst.to_string();
        let args = [
            "flow",
            "-i",
            "eth0",
            "--udp",
            "--remote",
            &remote,
            "--duration",
            "10",
            "--format",
            "jsonl",
        ];
        let (_, out, err, code) = status_mid_run(as_nobody(&lab, &copy.bin, &args), Duration::ZERO);
        assert_eq!(code, Some(0), "{server} udp as nobody: {err}");
        let r = first_result(&out, &err);
        assert_eq!(r.hops.len(), lab.hop_count(), "{server}: {r:?}");
        assert!(
            r.hops
                .iter()
                .all(|h| h.probes.iter().all(|p| p.addr.is_some())),
            "{r:?}"
        );
        let rep = session.wait().expect("report");
        assert!(
            rep.intact && rep.answered == rep.sent && rep.errors.is_empty(),
            "{server}: the shield kept the errors from the application: {rep:?}"
        );
        // TCP.
        let d = tcp_download_to(&lab, SocketAddr::new(server, 8080), 0, 2_000_000, true)
            .expect("download");
        d.wait_established(SECS(10)).expect("established");
        let remote = SocketAddr::new(server, 8080).to_string();
        let args = [
            "flow",
            "-i",
            "eth0",
            "--tcp",
            "--remote",
            &remote,
            "--duration",
            "10",
            "--format",
            "jsonl",
        ];
        let (_, out, err, code) = status_mid_run(as_nobody(&lab, &copy.bin, &args), Duration::ZERO);
        assert_eq!(code, Some(0), "{server} tcp as nobody: {err}");
        let r = first_result(&out, &err);
        assert!(r.hops.len() >= lab.hop_count(), "{r:?}");
        assert!(r.hops[..lab.hop_count()]
            .iter()
            .all(|h| h.probes.iter().all(|p| p.addr.is_some())));
        let rep = d.wait().expect("report");
        assert!(rep.intact && rep.errors.is_empty(), "{rep:?}");
    }
    // A monitor, mid-run: its threads keep at most the two, the run loop exactly those.
    let remote = lab.server_addr().to_string();
    let args = [
        "monitor",
        "-i",
        "eth0",
        "--udp",
        "--remote",
        &remote,
        "--duration",
        "3",
    ];
    let (seen, _, err, code) = status_mid_run(
        as_nobody(&lab, &copy.bin, &args),
        Duration::from_millis(1500),
    );
    assert!(matches!(code, Some(0 | 1)), "{err}");
    assert!(seen.len() >= 2, "{seen:?}");
    for (uids, prm, eff, _) in &seen {
        assert!(uids.iter().all(|u| *u == NOBODY), "{seen:?}");
        assert_eq!(prm & !(NET_RAW | NET_ADMIN), 0, "{seen:?}");
        assert_eq!(eff & !(NET_RAW | NET_ADMIN), 0, "{seen:?}");
    }
    assert!(
        seen.iter()
            .any(|t| t.2 == NET_RAW | NET_ADMIN && t.3 == NET_ADMIN),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|t| t.1 == 0),
        "the output watcher has none: {seen:?}"
    );
    // A trace keeps nothing once set up (to an address nobody answers, so that it lasts).
    let args = [
        "trace",
        "-n",
        "-f",
        "8",
        "-m",
        "8",
        "-q",
        "1",
        "-w",
        "3",
        "198.19.1.99",
    ];
    let (seen, _, err, _) = status_mid_run(
        as_nobody(&lab, &copy.bin, &args),
        Duration::from_millis(1000),
    );
    assert!(!seen.is_empty(), "{err}");
    assert!(
        seen.iter().all(|t| t.1 == 0 && t.2 == 0 && t.3 == 0),
        "{seen:?}"
    );
}

/// Started as root, a monitor, a trace and the reverse server run as `nobody` once set up,
/// with only what each still needs: the monitor `CAP_NET_RAW` and `CAP_NET_ADMIN` (its
/// results still come), the trace nothing, the server `CAP_NET_ADMIN` (its nftables table is
/// still removed at exit). An unknown `--user` is refused at start in one line.
#[test]
fn as_root_it_runs_as_nobody_after_start_up() {
    let Some(_g) = lab_test_guard() else { return };
    let lab = Lab::build(LabConfig::default()).expect("lab");
    let _t4 = tcp_server_on(&lab, "0.0.0.0:8080".parse().unwrap(), 1_000_000).expect("tcp");
    let d = tcp_download_to(
        &lab,
        SocketAddr::new(lab.server_addr().into(), 8080),
        0,
        4_000_000,
        true,
    )
    .expect("download");
    d.wait_established(SECS(10)).expect("established");
    let remote = format!("{}:8080", lab.server_addr());
    let mut c = lab.command(lab.client_ns(), TRACER);
    c.args([
        "monitor",
        "-i",
        "eth0",
        "--tcp",
        "--remote",
        &remote,
        "--duration",
        "3",
    ]);
    let (seen, out, err, code) = status_mid_run(c, Duration::from_millis(1500));
    assert_eq!(code, Some(0), "{err}");
    let r = first_result(&out, &err);
    assert!(r.hops[..lab.hop_count()]
        .iter()
        .all(|h| h.probes.iter().all(|p| p.addr.is_some())));
    for (uids, prm, _, _) in &seen {
        assert!(uids.iter().all(|u| *u == NOBODY), "{seen:?}");
        assert_eq!(prm & !(NET_RAW | NET_ADMIN), 0, "{seen:?}");
    }
    assert!(seen.iter().any(|t| t.2 == NET_RAW | NET_ADMIN), "{seen:?}");
    let _ = d.wait();
    // trace: nothing kept.
    let mut c = lab.command(lab.client_ns(), TRACER);
    c.args([
        "trace",
        "-n",
        "-f",
        "8",
        "-m",
        "8",
        "-q",
        "1",
        "-w",
        "3",
        "198.19.1.99",
    ]);
    let (seen, _, err, _) = status_mid_run(c, Duration::from_millis(1000));
    assert!(!seen.is_empty(), "{err}");
    for (uids, prm, eff, amb) in &seen {
        assert!(uids.iter().all(|u| *u == NOBODY), "{seen:?}");
        assert_eq!((prm, eff, amb), (&0, &0, &0), "{seen:?}");
    }
    // The reverse server: CAP_NET_ADMIN only, and its table removed at exit.
    let mut c = lab.command(lab.server_ns(), TRACER);
    c.args(["reverse-server", "--iface", lab.server_iface()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = c.spawn().expect("server");
    std::thread::sleep(Duration::from_millis(1500));
    let seen = threads(child.id());
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let out = child.wait_with_output().expect("server ends");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!seen.is_empty());
    for (uids, prm, _, _) in &seen {
        assert!(uids.iter().all(|u| *u == NOBODY), "{seen:?}");
        assert_eq!(prm & !NET_ADMIN, 0, "{seen:?}");
    }
    assert!(seen.iter().any(|t| t.2 == NET_ADMIN), "{seen:?}");
    let mut c = lab.command(lab.server_ns(), "nft");
    c.args(["list", "tables"]);
    let tables = svctr_lab::output_with_timeout(&mut c, None, SECS(10)).expect("nft");
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains("svctr_"),
        "the server's table is removed at exit, as nobody"
    );
    // An unknown user: refused at start.
    let mut c = lab.command(lab.client_ns(), TRACER);
    c.args(["--user", "no-such-user-here", "trace", "-n", "198.19.1.2"]);
    let out = svctr_lab::output_with_timeout(&mut c, None, SECS(20)).expect("runs");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no user \"no-such-user-here\""),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).trim_end().lines().count(), 1);
}
