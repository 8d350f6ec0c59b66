//! Process and namespace helpers shared by the lab, the applications and the binary.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Directory where `ip netns` keeps its named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Renders a command line for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` (optionally feeding `stdin`), killing it after `timeout`.
/// Returns its output whatever its exit status; errors only if it could not be
/// started or timed out.
pub fn output_with_timeout(
    cmd: &mut Command,
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<Output> {
    let line = describe(cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    // Inputs can exceed the pipe buffer (an `ip -batch` of 10,000 route queries is
    // about 1 MB) while the command writes as much output, so stdin is fed by its
    // own thread, concurrently with the readers.
    let in_t = stdin.map(|input| {
        let mut pipe = child.stdin.take().expect("piped stdin");
        let input = input.to_string();
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        })
    });
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = out_t.join();
            let _ = err_t.join();
            bail!("`{line}` timed out after {timeout:?} and was killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if let Some(t) = in_t {
        let _ = t.join();
    }
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Runs `cmd` and fails (with the command line and its stderr) unless it exits 0.
/// Returns stdout.
pub fn run_checked(cmd: &mut Command, stdin: Option<&str>, timeout: Duration) -> Result<String> {
    let line = describe(cmd);
    let out = output_with_timeout(cmd, stdin, timeout)?;
    if !out.status.success() {
        let mut msg = format!(
            "command failed ({}): `{line}`\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let so = String::from_utf8_lossy(&out.stdout);
        if !so.trim().is_empty() {
            msg.push_str(&format!("\nstdout: {}", so.trim()));
        }
        if let Some(input) = stdin {
            msg.push_str(&format!("\ninput was:\n{input}"));
        }
        return Err(anyhow!(msg));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Opens the handle of a named network namespace (`/run/netns/<ns>`).
pub fn open_netns(ns: &str) -> Result<File> {
    let path = format!("{NETNS_DIR}/{ns}");
    File::open(&path).with_context(|| format!("cannot open network namespace {path}"))
}

/// Moves the CALLING THREAD into the named network namespace (setns(CLONE_NEWNET)
/// only affects the calling thread). Sockets created afterwards by this thread
/// live in that namespace; threads it spawns inherit it.
pub fn enter_netns(ns: &str) -> Result<()> {
    let f = open_netns(ns)?;
    setns(&f, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {ns}"))
}

/// Spawns a named thread that first enters network namespace `ns`, then runs `f`.
/// The namespace is opened before spawning, so a missing namespace is reported here.
pub fn spawn_in_netns<T, F>(ns: &str, thread_name: &str, f: F) -> Result<JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let file = open_netns(ns)?;
    let ns_name = ns.to_string();
    std::thread::Builder::new()
        .name(thread_name.to_string())
        .spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into {ns_name}"))?;
            drop(file);
            f()
        })
        .context("cannot spawn thread")
}

/// Lab tests run one at a time within a test binary: they time ICMP replies on a small machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The guard every lab test takes first. `None` means "skip": not root and `CI` unset (the
/// reason is printed). With `CI` set and no root it panics, so lab tests can never be skipped
/// silently in CI.
pub fn lab_test_guard() -> Option<std::sync::MutexGuard<'static, ()>> {
    if !nix::unistd::geteuid().is_root() {
        if std::env::var_os("CI").is_some() {
            panic!("lab tests need root (network namespaces, raw sockets); CI is set, so they must not be skipped");
        }
        eprintln!("skipping: needs root");
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Sends one ICMP (IPv4) or ICMPv6 echo request from namespace `ns` to `dst` over a
/// ping socket (`SOCK_DGRAM`, needs `net.ipv4.ping_group_range` to include our gid,
/// which the lab sets) and waits up to `timeout` for the matching reply.
pub(crate) fn ping_in_netns(ns: &str, dst: IpAddr, timeout: Duration) -> Result<Duration> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    static SEQ: AtomicU16 = AtomicU16::new(1);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let h = spawn_in_netns(ns, "ping", move || {
        let (domain, proto, request, reply) = match dst {
            IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8),
            IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128u8, 129u8),
        };
        let s = Socket::new(domain, Type::DGRAM, Some(proto)).context("ping socket")?;
        s.connect(&SockAddr::from(std::net::SocketAddr::new(dst, 0)))
            .with_context(|| format!("connect ping socket to {dst}"))?;
        // The kernel fills in the identifier and the checksum.
        let [hi, lo] = seq.to_be_bytes();
        let pkt = [request, 0, 0, 0, 0, 0, hi, lo, b'S', b'V', b'T', b'R'];
        let t0 = Instant::now();
        s.send(&pkt)
            .with_context(|| format!("echo request to {dst}"))?;
        let deadline = t0 + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no echo reply from {dst} within {timeout:?}");
            }
            s.set_read_timeout(Some(left))?;
            let mut buf = [0u8; 1500];
            match (&s).read(&mut buf) {
                Ok(n) if n >= 8 && buf[0] == reply && buf[6..8] == [hi, lo] => {
                    return Ok(t0.elapsed())
                }
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e).with_context(|| format!("echo to {dst}")),
            }
        }
    })?;
    h.join().map_err(|_| anyhow!("ping thread panicked"))?
}

/// An IPv6 packet with the given header fields for the lab's routing oracle: traffic
/// class 0xff and hop limit 255 mark it; the ECMP hash does not look at either.
/// TCP gets a bare 20-byte header (ACK), UDP an 8-byte one, ICMPv6 an echo request;
/// checksums are left 0 (routers do not check them; the packet never reaches a host).
pub(crate) fn oracle_packet6(
    next_header: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    flow_label: u32,
) -> Vec<u8> {
    let l4: Vec<u8> = match next_header {
        6 => {
            let mut t = Vec::with_capacity(20);
            t.extend_from_slice(&sport.to_be_bytes());
            t.extend_from_slice(&dport.to_be_bytes());
            t.extend_from_slice(&[0; 8]);
            t.extend_from_slice(&[0x50, 0x10, 0x04, 0x00, 0, 0, 0, 0]);
            t
        }
        17 => {
            let mut u = Vec::with_capacity(8);
            u.extend_from_slice(&sport.to_be_bytes());
            u.extend_from_slice(&dport.to_be_bytes());
            u.extend_from_slice(&8u16.to_be_bytes());
            u.extend_from_slice(&[0, 0]);
            u
        }
        _ => vec![128, 0, 0, 0, 0, 0, 0, 1],
    };
    let first = (6u32 << 28) | (0xffu32 << 20) | (flow_label & 0xf_ffff);
    let mut p = Vec::with_capacity(40 + l4.len());
    p.extend_from_slice(&first.to_be_bytes());
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.push(next_header);
    p.push(255);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&l4);
    p
}

/// Sends a complete IPv6 packet (header included) from namespace `ns`
/// (`AF_INET6`/`SOCK_RAW`/`IPPROTO_RAW` implies IPV6_HDRINCL).
pub(crate) fn send_raw6(ns: &str, dst: Ipv6Addr, pkt: Vec<u8>) -> Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let h = spawn_in_netns(ns, "raw6", move || {
        let s = Socket::new(
            Domain::IPV6,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .context("raw IPv6 socket")?;
        s.send_to(
            &pkt,
            &SockAddr::from(std::net::SocketAddrV6::new(dst, 0, 0, 0)),
        )
        .with_context(|| format!("raw send to {dst}"))?;
        Ok(())
    })?;
    h.join().map_err(|_| anyhow!("raw send thread panicked"))?
}

/// The packet count of one rule's `counter` in `nft list` output (`... counter packets N
/// bytes M ...`), if the line has one.
pub fn nft_rule_packets(line: &str) -> Option<u64> {
    line.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)?
        .parse()
        .ok()
}

/// The resident memory of process `pid` (`VmRSS`), in KiB; 0 if it cannot be read.
pub fn process_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Sends `packets` (complete IP datagrams, each with its destination) from a raw socket in
/// namespace `ns`, in order, `rounds` times over, as fast as the socket takes them (a full
/// send buffer blocks), stopping early once `until` has passed. Returns how many were sent.
/// Load for tests of a server under flood; the datagrams may carry any source address.
pub fn send_raw_flood(
    ns: &str,
    packets: Vec<(IpAddr, Vec<u8>)>,
    rounds: usize,
    until: std::time::Instant,
) -> Result<u64> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let h = spawn_in_netns(ns, "flood", move || {
        let open = |d: Domain| {
            Socket::new(d, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW))).context("raw socket")
        };
        let (v4, v6) = (open(Domain::IPV4)?, open(Domain::IPV6)?);
        let addrs: Vec<SockAddr> = packets
            .iter()
            .map(|(d, _)| SockAddr::from(std::net::SocketAddr::new(*d, 0)))
            .collect();
        let mut sent = 0u64;
        for _ in 0..rounds {
            if std::time::Instant::now() >= until {
                break;
            }
            for ((dst, p), a) in packets.iter().zip(&addrs) {
                let s = if dst.is_ipv4() { &v4 } else { &v6 };
                if s.send_to(p, a).is_ok() {
                    sent += 1;
                }
            }
        }
        Ok(sent)
    })?;
    h.join().map_err(|_| anyhow!("flood thread panicked"))?
}

/// A flood of new flows: `total` UDP datagrams (8 bytes of payload) from `src` to `dst`, each
/// with a 5-tuple of its own (source port 1024 + i mod 64,000, destination port 1 + i div
/// 64,000: up to 4 million distinct), sent from a raw socket in namespace `ns` and paced evenly
/// over `over` (in bursts of 256). IPv4 only. Returns (sent, the time it took). Load for tests
/// of the tables that a flood of new 5-tuples must not grow.
pub fn udp_flood(
    ns: &str,
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    total: u64,
    over: std::time::Duration,
) -> Result<(u64, std::time::Duration)> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    anyhow::ensure!(
        total <= 64_000 * 65_535,
        "at most 64,000 x 65,535 distinct flows"
    );
    let h = spawn_in_netns(ns, "udp-flood", move || {
        let sock = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .context("raw socket")?;
        let to = SockAddr::from(std::net::SocketAddr::new(dst.into(), 0));
        // IPv4 header (the kernel fills the checksum and, left 0, the identification: raw(7)),
        // UDP header with checksum 0 (none, RFC 768), 8 bytes of payload.
        let mut p = [0u8; 36];
        p[..12].copy_from_slice(&[0x45, 0, 0, 36, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        p[24..26].copy_from_slice(&16u16.to_be_bytes());
        p[28..36].copy_from_slice(b"svflood!");
        let start = std::time::Instant::now();
        let mut sent = 0u64;
        let mut i = 0u64;
        while i < total {
            // Paced: the i-th datagram goes no earlier than i/total of `over`.
            let due = over.mul_f64(i as f64 / total as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            for _ in 0..256 {
                if i >= total {
                    break;
                }
                let sport = 1024 + (i % 64_000) as u16;
                let dport = 1 + (i / 64_000) as u16;
                p[20..22].copy_from_slice(&sport.to_be_bytes());
                p[22..24].copy_from_slice(&dport.to_be_bytes());
                if sock.send_to(&p, &to).is_ok() {
                    sent += 1;
                }
                i += 1;
            }
        }
        Ok((sent, start.elapsed()))
    })?;
    h.join().map_err(|_| anyhow!("flood thread panicked"))?
}

/// A temporary directory (`<tmp>/svctr-lab-<what>-<pid>-<n>`), removed on drop.
#[derive(Debug)]
pub(crate) struct TempDir {
    path: std::path::PathBuf,
}

impl TempDir {
    /// Creates a fresh directory, readable by root only.
    pub(crate) fn new(what: &str) -> Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt;
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("svctr-lab-{what}-{}-{n}", std::process::id()));
        if path.exists() {
            let _ = std::fs::remove_dir_all(&path);
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// SIGKILLs a child and reaps it.
pub(crate) fn kill_child(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A long-running command (usually `ip netns exec <ns> <program> ...`) whose stdout
/// and stderr are collected by two threads while it runs, killed (SIGKILL) and
/// reaped on drop. Used for the real clients and servers (dnsmasq, openssl, curl).
pub(crate) struct NsProcess {
    child: Option<std::process::Child>,
    what: String,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl NsProcess {
    /// Starts `cmd`; with `keep_stdin`, its stdin is a pipe kept open until
    /// [`NsProcess::close_stdin`] or drop, otherwise /dev/null.
    pub(crate) fn spawn(cmd: &mut Command, keep_stdin: bool) -> Result<NsProcess> {
        use std::io::BufRead;
        let what = describe(cmd);
        cmd.stdin(if keep_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{what}`"))?;
        let stdin = child.stdin.take();
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut readers = Vec::new();
        let out_pipe = child.stdout.take().expect("piped stdout");
        let err_pipe = child.stderr.take().expect("piped stderr");
        for (pipe, buf) in [
            (Box::new(out_pipe) as Box<dyn Read + Send>, stdout.clone()),
            (Box::new(err_pipe) as Box<dyn Read + Send>, stderr.clone()),
        ] {
            readers.push(std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(pipe);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match r.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let mut g = buf.lock().unwrap_or_else(|e| e.into_inner());
                            // Bounded: a chatty process must not fill the memory.
                            if g.len() < (1 << 20) {
                                g.push_str(&String::from_utf8_lossy(&line));
                            }
                        }
                    }
                }
            }));
        }
        Ok(NsProcess {
            child: Some(child),
            what,
            stdin,
            stdout,
            stderr,
            readers,
        })
    }

    /// The command line.
    pub(crate) fn what(&self) -> &str {
        &self.what
    }

    /// Stdout so far.
    pub(crate) fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Writes to the process's stdin (if it was kept).
    pub(crate) fn write_stdin(&mut self, data: &[u8]) -> Result<()> {
        let Some(s) = self.stdin.as_mut() else {
            bail!("`{}` has no stdin pipe", self.what);
        };
        s.write_all(data)
            .and_then(|_| s.flush())
            .with_context(|| format!("writing to `{}`", self.what))
    }

    /// Closes stdin (the process sees EOF).
    pub(crate) fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The exit status if the process has ended.
    pub(crate) fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for the process to end (killing it then); returns the
    /// exit status, stdout and stderr. Errors only if it had to be killed.
    pub(crate) fn wait(
        mut self,
        timeout: Duration,
    ) -> Result<(std::process::ExitStatus, String, String)> {
        self.close_stdin();
        let mut child = self.child.take().expect("not yet waited");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() >= deadline {
                kill_child(&mut child);
                bail!(
                    "`{}` did not end within {timeout:?} and was killed; stderr: {}",
                    self.what,
                    self.stderr().trim()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ok((status, self.stdout(), self.stderr()))
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        self.stdin = None;
        if let Some(mut c) = self.child.take() {
            kill_child(&mut c);
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

/// Waits until something listens on `port` in namespace `ns` (`ss -H -l`):
/// `tcp` selects TCP listeners (else UDP sockets), `v6` the family. Bounded by
/// `timeout`; `alive` is polled to fail early when the server died.
pub(crate) fn wait_listening(
    ns: &str,
    tcp: bool,
    v6: bool,
    port: u16,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, "ss", "-H", "-l", "-n"])
            .arg(if tcp { "-t" } else { "-u" })
            .arg(if v6 { "-6" } else { "-4" })
            .arg(format!("sport = :{port}"));
        let out = run_checked(&mut c, None, Duration::from_secs(10))?;
        if !out.trim().is_empty() {
            return Ok(());
        }
        alive()?;
        if Instant::now() >= deadline {
            bail!(
                "nothing listens on {} port {port} ({}) in {ns} after {timeout:?}",
                if tcp { "TCP" } else { "UDP" },
                if v6 { "IPv6" } else { "IPv4" }
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
