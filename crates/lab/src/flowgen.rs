//! A lightweight generator of many concurrent flows, and its echo server.
//!
//! [`flow_generator`] opens `flows` sockets in the client namespace, from local ports
//! `first_local_port..first_local_port + flows` to one destination (distinct
//! 5-tuples), TCP (persistent connections, `TCP_NODELAY`) or UDP (connected
//! sockets). Each flow sends a 32-byte message every `interval`; the sends of all
//! flows are spread evenly over the interval (flow i's phase is `interval * i /
//! flows`), not sent in bursts. [`echo_server`] echoes every byte back. Both sides
//! are one thread each with nonblocking sockets and epoll (level-triggered), so
//! 10,000-20,000 flows cost little CPU: no thread per flow. TCP connections are
//! opened at most [`MAX_CONNECTING`] at a time, so the server's accept queue never
//! overflows.
//!
//! A message is `"SVFG"`, the flow index (u32 BE), the flow's sequence number (u64
//! BE) and 16 pattern bytes; an echo counts when the 32 bytes come back unchanged.
//!
//! File descriptors: both sides raise `RLIMIT_NOFILE` (soft, and the hard limit too
//! when they may) to what they need, for the whole process. The limit bounds the
//! flows: a TCP flow costs two descriptors when both ends are in one process. Where
//! the hard limit cannot be raised (this machine: 20,000, and root lacks
//! `CAP_SYS_RESOURCE`), 10,000 TCP flows need the server in its own process:
//! [`echo_server_process`] runs the same server as `svctr-lab echo` (found with
//! [`lab_binary`]) under `ip netns exec`, with its own descriptor table.
//!
//! A flow that fails (TCP reset or EOF, a failed connect) is closed and counted in
//! its `errors`; it is not reopened. UDP errors (e.g. `ECONNREFUSED` after a port
//! unreachable) are counted and the flow goes on. Stopping a TCP generator closes
//! its connections with a RST (`SO_LINGER` 0), so no TIME_WAIT holds the ports.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::apps::{is_timeout, join_thread, listen_socket, udp_bind, PktinfoUdp, Started, Worker};
use crate::util::spawn_in_netns;
use crate::{Lab, Proto};

/// Size of one message.
pub const FLOW_MESSAGE_LEN: usize = 32;
/// TCP connects in progress at most at once.
pub const MAX_CONNECTING: usize = 256;
/// Longest epoll wait (stop-flag checks).
const TICK: Duration = Duration::from_millis(100);
/// How long setting up the sockets may take.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Unsent TCP bytes a flow may queue before messages are dropped.
const MAX_PENDING: usize = 64 * 1024;
/// Epoll token of a listening socket.
const LISTENER: u64 = u64::MAX;
/// How often both sides also try every socket as if epoll had reported it.
///
/// Under load (10,000 TCP flows in one lab, debug build) a block of connections
/// stopped being reported readable on *both* ends while their receive queues held
/// data, with no loss or retransmission: both level-triggered epoll sets had
/// stopped getting the sockets' wakeups. The periodic sweep (a nonblocking read per
/// socket, about 10 ms per 10,000 sockets) makes such a flow recover; every read it
/// finds data for is counted as a missed wakeup.
const SWEEP: Duration = Duration::from_millis(500);
/// Marks a token the sweep made up (not reported by epoll).
const SWEPT: u64 = 1 << 62;

/// Descriptors that running generators and servers still expect to open.
static RESERVED_FDS: AtomicU64 = AtomicU64::new(0);

/// A share of [`RESERVED_FDS`], returned on drop.
struct FdReservation(u64);

impl FdReservation {
    fn new(n: usize) -> Result<FdReservation> {
        RESERVED_FDS.fetch_add(n as u64, Ordering::SeqCst);
        let r = FdReservation(n as u64);
        if !ensure_nofile(0)? {
            let (soft, _) =
                nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                    .context("getrlimit")?;
            bail!(
                "{n} more file descriptors do not fit in RLIMIT_NOFILE {soft} (with the other \
                 generators and servers of this process; see echo_server_process)"
            );
        }
        Ok(r)
    }
}

impl Drop for FdReservation {
    fn drop(&mut self) {
        RESERVED_FDS.fetch_sub(self.0, Ordering::SeqCst);
    }
}

/// Raises `RLIMIT_NOFILE` so that `extra` more descriptors, plus all reserved ones,
/// can be opened: the soft limit, and the hard limit too if needed and allowed.
/// Generators run concurrently with servers in one process, so the limit is
/// computed from what is open now plus every reservation (an over-estimate).
/// Returns false if the limit stays below that (it is raised as far as it goes).
pub(crate) fn ensure_nofile(extra: usize) -> Result<bool> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let open = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0) as u64;
    let want = open + extra as u64 + RESERVED_FDS.load(Ordering::SeqCst) + 64;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    if soft >= want {
        return Ok(true);
    }
    if hard >= want || setrlimit(Resource::RLIMIT_NOFILE, want, want).is_err() {
        setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard).context("setrlimit NOFILE")?;
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    Ok(soft >= want)
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

fn message(flow: u32, seq: u64) -> [u8; FLOW_MESSAGE_LEN] {
    let mut m = [0u8; FLOW_MESSAGE_LEN];
    m[..4].copy_from_slice(b"SVFG");
    m[4..8].copy_from_slice(&flow.to_be_bytes());
    m[8..16].copy_from_slice(&seq.to_be_bytes());
    for (j, b) in m[16..].iter_mut().enumerate() {
        *b = crate::pattern_byte(seq * 16 + j as u64);
    }
    m
}

/// Whether `m` is a message of flow `flow` (any sequence number already sent).
fn is_echo(m: &[u8], flow: u32, sent: u64) -> bool {
    if m.len() != FLOW_MESSAGE_LEN || &m[..4] != b"SVFG" || m[4..8] != flow.to_be_bytes() {
        return false;
    }
    let seq = u64::from_be_bytes(m[8..16].try_into().expect("8 bytes"));
    seq < sent && m == message(flow, seq)
}

// ------------------------------------------------------------------ echo server

/// Counters of an [`EchoServer`].
#[derive(Default)]
struct EchoCounters {
    missed_wakeups: AtomicU64,
    connections: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
    cpu_ns: AtomicU64,
}

/// An epoll echo server in the server namespace (see the module documentation).
pub struct EchoServer {
    local: SocketAddr,
    proto: Proto,
    counters: Arc<EchoCounters>,
    /// The server thread (None for [`echo_server_process`]).
    worker: Option<Worker<()>>,
    /// For [`echo_server_process`]: the child process (its stats lines feed
    /// `counters` when read).
    child: Option<crate::util::NsProcess>,
}

impl EchoServer {
    /// The bound address (with the actual port if bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
    /// [`Proto::Tcp`] or [`Proto::Udp`].
    pub fn proto(&self) -> Proto {
        self.proto
    }
    /// TCP connections accepted so far (0 for UDP).
    pub fn connections(&self) -> u64 {
        self.refresh();
        self.counters.connections.load(Ordering::Relaxed)
    }
    /// Datagrams echoed (UDP) or reads echoed (TCP) so far.
    pub fn echoed(&self) -> u64 {
        self.refresh();
        self.counters.messages.load(Ordering::Relaxed)
    }
    /// TCP reads by the periodic sweep that found data epoll had not reported.
    pub fn missed_wakeups(&self) -> u64 {
        self.refresh();
        self.counters.missed_wakeups.load(Ordering::Relaxed)
    }
    /// Bytes echoed so far.
    pub fn bytes(&self) -> u64 {
        self.refresh();
        self.counters.bytes.load(Ordering::Relaxed)
    }
    /// CPU time of the server thread so far (updated about every 100 ms; for
    /// [`echo_server_process`], every 200 ms).
    pub fn cpu_time(&self) -> Duration {
        self.refresh();
        Duration::from_nanos(self.counters.cpu_ns.load(Ordering::Relaxed))
    }
    /// Stops the server and joins its thread (also done on drop).
    pub fn stop(mut self) -> Result<()> {
        if let Some(c) = self.child.take() {
            let (st, _, err) = c.wait(Duration::from_secs(5))?;
            if !st.success() {
                bail!("svctr-lab echo exited ({st}): {}", err.trim());
            }
            return Ok(());
        }
        match &mut self.worker {
            Some(w) => w.stop(),
            None => Ok(()),
        }
    }

    /// For a child process: the counters of its last stats line.
    fn refresh(&self) {
        let Some(c) = &self.child else { return };
        let out = c.stdout();
        if let Some(v) = out.lines().rev().find_map(parse_stats_line) {
            let ctr = &self.counters;
            ctr.connections.store(v[0], Ordering::Relaxed);
            ctr.messages.store(v[1], Ordering::Relaxed);
            ctr.bytes.store(v[2], Ordering::Relaxed);
            ctr.cpu_ns.store(v[3], Ordering::Relaxed);
            ctr.missed_wakeups.store(v[4], Ordering::Relaxed);
        }
    }
}

/// `stats <connections> <messages> <bytes> <cpu_ns> <missed_wakeups>`.
fn parse_stats_line(line: &str) -> Option<[u64; 5]> {
    let mut it = line.strip_prefix("stats ")?.split_whitespace();
    let mut v = [0u64; 5];
    for x in &mut v {
        *x = it.next()?.parse().ok()?;
    }
    Some(v)
}

/// The `svctr-lab` binary for [`echo_server_process`]: `$SVCTR_LAB_BIN`, else next to
/// the running executable or one directory up (a test binary lives in
/// `target/<profile>/deps/`, the binary in `target/<profile>/`), else `svctr-lab` in
/// `$PATH`.
pub fn lab_binary() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("SVCTR_LAB_BIN") {
        return Some(p.into());
    }
    let exe = std::env::current_exe().ok()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let p = dir.join("svctr-lab");
        if p.is_file() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("svctr-lab"))
            .find(|p| p.is_file())
    })
}

/// [`echo_server`] in a child process: `ip netns exec <server> <exe> echo --proto P
/// --bind ADDR`, where `exe` is the `svctr-lab` binary ([`lab_binary`]). Use it when
/// the process's descriptor limit cannot hold both ends of many TCP flows (see the
/// module documentation). The counters come from the child's stats lines; dropping
/// the server kills the child.
pub fn echo_server_process(
    lab: &Lab,
    proto: Proto,
    bind: SocketAddr,
    exe: &std::path::Path,
) -> Result<EchoServer> {
    if !proto.has_ports() {
        bail!("echo_server: TCP or UDP only");
    }
    let mut c = lab.command(lab.server_ns(), &exe.to_string_lossy());
    c.args(["echo", "--proto", proto.name(), "--bind", &bind.to_string()]);
    let mut child = crate::util::NsProcess::spawn(&mut c, true)?;
    let deadline = Instant::now() + START_TIMEOUT;
    let port = loop {
        if let Some(p) = child.stdout().lines().find_map(|l| {
            l.strip_prefix("listening ")
                .and_then(|p| p.trim().parse::<u16>().ok())
        }) {
            break p;
        }
        if let Some(st) = child.try_status() {
            bail!(
                "`{}` exited ({st}): {}",
                child.what(),
                child.stderr().trim()
            );
        }
        if Instant::now() >= deadline {
            bail!("`{}` did not start listening", child.what());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut local = bind;
    local.set_port(port);
    Ok(EchoServer {
        local,
        proto,
        counters: Arc::new(EchoCounters::default()),
        // The child is killed by its NsProcess's drop.
        worker: None,
        child: Some(child),
    })
}

/// The body of `svctr-lab echo`: an [`echo_server`] in the current network namespace
/// that prints `listening <port>`, then every 200 ms `stats <connections> <messages>
/// <bytes> <cpu_ns>`, until `stop` is raised or stdin reaches EOF.
pub fn run_echo_process(proto: Proto, bind: SocketAddr, stop: &Arc<AtomicBool>) -> Result<()> {
    if !proto.has_ports() {
        bail!("echo: TCP or UDP only");
    }
    // Its own process: take every descriptor the hard limit allows.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .context("getrlimit")?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
        .context("setrlimit NOFILE")?;
    let started = Arc::new(Started::default());
    let counters = Arc::new(EchoCounters::default());
    let (st, stp, ctr) = (started.clone(), stop.clone(), counters.clone());
    let server = std::thread::spawn(move || match proto {
        Proto::Tcp => tcp_echo(bind, &st, &stp, &ctr),
        _ => udp_echo(bind, &st, &stp, &ctr),
    });
    let stp = stop.clone();
    // EOF on stdin (the parent closed the pipe or died) stops the server.
    std::thread::spawn(move || {
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        stp.store(true, Ordering::SeqCst);
    });
    let port = match started.wait(START_TIMEOUT, "echo server") {
        Ok(p) => p,
        Err(e) => {
            stop.store(true, Ordering::SeqCst);
            return Err(join_thread(Some(server), "echo server").err().unwrap_or(e));
        }
    };
    let mut out = std::io::stdout();
    writeln!(out, "listening {port}")?;
    out.flush()?;
    while !stop.load(Ordering::SeqCst) && !server.is_finished() {
        std::thread::sleep(Duration::from_millis(200));
        let c = &counters;
        writeln!(
            out,
            "stats {} {} {} {} {}",
            c.connections.load(Ordering::Relaxed),
            c.messages.load(Ordering::Relaxed),
            c.bytes.load(Ordering::Relaxed),
            c.cpu_ns.load(Ordering::Relaxed),
            c.missed_wakeups.load(Ordering::Relaxed)
        )?;
        out.flush()?;
    }
    stop.store(true, Ordering::SeqCst);
    join_thread(Some(server), "echo server")
}

/// Starts an echo server (TCP or UDP) on `bind` in the server namespace. Either
/// family; a wildcard address serves every address of its family (fan-out targets
/// included; UDP answers from the address each datagram was sent to). Port 0 picks
/// a free port.
pub fn echo_server(lab: &Lab, proto: Proto, bind: SocketAddr) -> Result<EchoServer> {
    if !proto.has_ports() {
        bail!("echo_server: TCP or UDP only");
    }
    ensure_nofile(1024)?;
    let stop = Arc::new(AtomicBool::new(false));
    lab.register_stop(&stop);
    let started = Arc::new(Started::default());
    let counters = Arc::new(EchoCounters::default());
    let (st, stp, ctr) = (started.clone(), stop.clone(), counters.clone());
    let name = format!("echo{}{}", proto.name(), bind.port());
    let thread = spawn_in_netns(lab.server_ns(), &name, move || {
        let r = match proto {
            Proto::Tcp => tcp_echo(bind, &st, &stp, &ctr),
            _ => udp_echo(bind, &st, &stp, &ctr),
        };
        if let Err(e) = &r {
            st.set(Err(format!("{e:#}")));
        }
        r
    })?;
    let mut srv = EchoServer {
        local: bind,
        proto,
        counters,
        worker: Some(Worker::new("echo server", stop, thread)),
        child: None,
    };
    match started.wait(START_TIMEOUT, "echo server") {
        Ok(port) => {
            srv.local.set_port(port);
            Ok(srv)
        }
        Err(e) => Err(match &mut srv.worker {
            Some(w) => w.start_failed(e),
            None => e,
        }),
    }
}

struct EchoConn {
    stream: TcpStream,
    pending: Vec<u8>,
}

fn tcp_echo(
    bind: SocketAddr,
    started: &Started,
    stop: &AtomicBool,
    ctr: &EchoCounters,
) -> Result<()> {
    let listener: TcpListener =
        listen_socket(bind, 4096).with_context(|| format!("listen on {bind}"))?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll")?;
    epoll
        .add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))
        .context("epoll add")?;
    started.set(Ok(listener.local_addr()?.port()));
    let mut conns: Vec<Option<EchoConn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut emfile_logged = false;
    let mut last_sweep = Instant::now();
    let mut events = vec![EpollEvent::empty(); 1024];
    let mut buf = vec![0u8; 65536];
    let mut last_cpu = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let n = match epoll.wait(&mut events, TICK.as_millis() as u16) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e).context("epoll_wait"),
        };
        // Every SWEEP, also try every connection as if epoll had reported it
        // readable (see SWEEP: wakeups were seen to go missing under load).
        let mut work: Vec<(u64, EpollFlags)> =
            events[..n].iter().map(|e| (e.data(), e.events())).collect();
        if last_sweep.elapsed() >= SWEEP {
            last_sweep = Instant::now();
            work.push((LISTENER, EpollFlags::EPOLLIN));
            for (i, c) in conns.iter().enumerate() {
                if c.is_some() {
                    work.push((i as u64 | SWEPT, EpollFlags::EPOLLIN));
                }
            }
        }
        for (token, flags) in work {
            let swept = token != LISTENER && token & SWEPT != 0;
            let token = if token == LISTENER {
                token
            } else {
                token & !SWEPT
            };
            if token == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((s, _)) => {
                            s.set_nonblocking(true)?;
                            let _ = s.set_nodelay(true);
                            let idx = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            epoll
                                .add(&s, EpollEvent::new(EpollFlags::EPOLLIN, idx as u64))
                                .context("epoll add")?;
                            conns[idx] = Some(EchoConn {
                                stream: s,
                                pending: Vec::new(),
                            });
                            ctr.connections.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                            // Raise the limit as far as it goes; if it is already at
                            // the hard limit, the connection waits in the queue.
                            if !ensure_nofile(16384)? && !emfile_logged {
                                eprintln!("svctr-lab echo server: out of file descriptors");
                                emfile_logged = true;
                            }
                            break;
                        }
                        Err(_) => break,
                    }
                }
                continue;
            }
            let idx = token as usize;
            let Some(c) = conns.get_mut(idx).and_then(|c| c.as_mut()) else {
                continue;
            };
            let mut close = flags.intersects(EpollFlags::EPOLLERR);
            if flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP) && !close {
                loop {
                    match c.stream.read(&mut buf) {
                        Ok(0) => {
                            close = true;
                            break;
                        }
                        Ok(k) => {
                            if swept {
                                ctr.missed_wakeups.fetch_add(1, Ordering::Relaxed);
                            }
                            ctr.messages.fetch_add(1, Ordering::Relaxed);
                            ctr.bytes.fetch_add(k as u64, Ordering::Relaxed);
                            if c.pending.is_empty() {
                                match c.stream.write(&buf[..k]) {
                                    Ok(w) => c.pending.extend_from_slice(&buf[w..k]),
                                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                        c.pending.extend_from_slice(&buf[..k])
                                    }
                                    Err(_) => {
                                        close = true;
                                        break;
                                    }
                                }
                            } else {
                                c.pending.extend_from_slice(&buf[..k]);
                            }
                            if k < buf.len() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => {
                            close = true;
                            break;
                        }
                    }
                }
            }
            if !close && (flags.intersects(EpollFlags::EPOLLOUT) || swept) && !c.pending.is_empty()
            {
                match c.stream.write(&c.pending) {
                    Ok(w) => {
                        c.pending.drain(..w);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => close = true,
                }
            }
            if close || c.pending.len() > MAX_PENDING {
                let _ = epoll.delete(&c.stream);
                conns[idx] = None;
                free.push(idx);
                continue;
            }
            // Ask for EPOLLOUT only while output is pending.
            let want = if c.pending.is_empty() {
                EpollFlags::EPOLLIN
            } else {
                EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT
            };
            if swept || flags.contains(EpollFlags::EPOLLOUT) != want.contains(EpollFlags::EPOLLOUT)
            {
                let mut e = EpollEvent::new(want, token);
                epoll
                    .modify(c.stream.as_fd(), &mut e)
                    .context("epoll mod")?;
            }
        }
        if last_cpu.elapsed() >= TICK {
            ctr.cpu_ns
                .store(thread_cpu().as_nanos() as u64, Ordering::Relaxed);
            last_cpu = Instant::now();
        }
    }
    ctr.cpu_ns
        .store(thread_cpu().as_nanos() as u64, Ordering::Relaxed);
    Ok(())
}

fn udp_echo(
    bind: SocketAddr,
    started: &Started,
    stop: &AtomicBool,
    ctr: &EchoCounters,
) -> Result<()> {
    let mut sock: PktinfoUdp = udp_bind(bind).with_context(|| format!("bind {bind}"))?;
    sock.sock.set_nonblocking(true)?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll")?;
    epoll
        .add(&sock.sock, EpollEvent::new(EpollFlags::EPOLLIN, 0))
        .context("epoll add")?;
    started.set(Ok(sock.sock.local_addr()?.port()));
    let mut events = vec![EpollEvent::empty(); 8];
    let mut buf = vec![0u8; 65536];
    let mut last_cpu = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match epoll.wait(&mut events, TICK.as_millis() as u16) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("epoll_wait"),
        }
        // Drain (bounded, so the stop flag is still seen under load).
        for _ in 0..4096 {
            match sock.recv(&mut buf) {
                Ok((n, peer, dst)) => {
                    ctr.messages.fetch_add(1, Ordering::Relaxed);
                    ctr.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    let _ = sock.send(&buf[..n], peer, dst);
                }
                Err(e) if is_timeout(&e) => break,
                Err(_) => {}
            }
        }
        if last_cpu.elapsed() >= TICK {
            ctr.cpu_ns
                .store(thread_cpu().as_nanos() as u64, Ordering::Relaxed);
            last_cpu = Instant::now();
        }
    }
    ctr.cpu_ns
        .store(thread_cpu().as_nanos() as u64, Ordering::Relaxed);
    Ok(())
}

// -------------------------------------------------------------- flow generator

/// Per-flow counters shared between the generator thread and its handle.
#[derive(Default)]
struct FlowCounters {
    sent: AtomicU64,
    echoed: AtomicU64,
    errors: AtomicU64,
    /// Milliseconds since the generator's start of the last echo, plus 1 (0 = none).
    last_echo_ms: AtomicU64,
    /// 0 = connecting, 1 = open, 2 = failed/closed.
    state: AtomicU64,
}

/// The counters of one flow ([`FlowGenerator::stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowStats {
    /// The flow's local port.
    pub local_port: u16,
    /// Messages sent.
    pub sent: u64,
    /// Messages echoed back intact.
    pub echoed: u64,
    /// Errors (failed connect, reset, send/receive errors, dropped messages).
    pub errors: u64,
    /// The flow is open (TCP connected, or a UDP socket that was set up).
    pub open: bool,
    /// Time since the last echo (`None` before the first).
    pub since_last_echo: Option<Duration>,
}

/// A running flow generator in the client namespace; see the module documentation.
pub struct FlowGenerator {
    proto: Proto,
    dst: SocketAddr,
    first_local_port: u16,
    interval: Duration,
    t0: Instant,
    flows: Arc<Vec<FlowCounters>>,
    cpu_ns: Arc<AtomicU64>,
    started: Arc<Started>,
    error: Arc<std::sync::Mutex<Option<String>>>,
    missed_wakeups: Arc<AtomicU64>,
    worker: Worker<()>,
}

impl FlowGenerator {
    /// Reads by the periodic sweep that found data epoll had not reported
    /// (see the module documentation).
    pub fn missed_wakeups(&self) -> u64 {
        self.missed_wakeups.load(Ordering::Relaxed)
    }
    /// The error the generator thread ended with, if it did.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// [`Proto::Tcp`] or [`Proto::Udp`].
    pub fn proto(&self) -> Proto {
        self.proto
    }
    /// The destination.
    pub fn dst(&self) -> SocketAddr {
        self.dst
    }
    /// The flows' local ports, in flow order.
    pub fn local_ports(&self) -> Vec<u16> {
        (0..self.flows.len())
            .map(|i| self.first_local_port + i as u16)
            .collect()
    }
    /// Per-flow counters, in flow order.
    pub fn stats(&self) -> Vec<FlowStats> {
        let now_ms = self.t0.elapsed().as_millis() as u64;
        self.flows
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let last = f.last_echo_ms.load(Ordering::Relaxed);
                FlowStats {
                    local_port: self.first_local_port + i as u16,
                    sent: f.sent.load(Ordering::Relaxed),
                    echoed: f.echoed.load(Ordering::Relaxed),
                    errors: f.errors.load(Ordering::Relaxed),
                    open: f.state.load(Ordering::Relaxed) == 1,
                    since_last_echo: (last > 0)
                        .then(|| Duration::from_millis(now_ms.saturating_sub(last - 1))),
                }
            })
            .collect()
    }
    /// Flows with an echo in the last three intervals (at least 1 s).
    pub fn alive(&self) -> usize {
        self.alive_within((self.interval * 3).max(Duration::from_secs(1)))
    }
    /// Flows with an echo within `window`.
    pub fn alive_within(&self, window: Duration) -> usize {
        self.stats()
            .iter()
            .filter(|s| s.since_last_echo.is_some_and(|d| d <= window))
            .count()
    }
    /// Flows that are open (TCP: connected and not failed).
    pub fn open(&self) -> usize {
        self.flows
            .iter()
            .filter(|f| f.state.load(Ordering::Relaxed) == 1)
            .count()
    }
    /// Waits until every flow has been set up (TCP: connected or failed); returns
    /// the number of open flows.
    pub fn wait_open(&self, timeout: Duration) -> Result<usize> {
        self.started.wait(timeout, "flow generator")?;
        let deadline = Instant::now() + timeout;
        while self
            .flows
            .iter()
            .any(|f| f.state.load(Ordering::Relaxed) == 0)
        {
            if Instant::now() >= deadline {
                bail!(
                    "flow generator: {} flows open after {timeout:?}",
                    self.open()
                );
            }
            if self.worker.is_finished() {
                bail!(
                    "flow generator thread ended: {}",
                    self.error().unwrap_or_else(|| "stopped".into())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(self.open())
    }
    /// CPU time of the generator thread so far (updated about every 100 ms).
    pub fn cpu_time(&self) -> Duration {
        Duration::from_nanos(self.cpu_ns.load(Ordering::Relaxed))
    }
    /// Stops the generator (closing every flow) and returns the final counters.
    pub fn stop(mut self) -> Result<Vec<FlowStats>> {
        self.worker.stop()?;
        Ok(self.stats())
    }
}

/// Starts `flows` flows from the client (its address of `dst`'s family) to `dst`,
/// from local ports `first_local_port..first_local_port + flows`, each sending a
/// 32-byte message every `interval` (spread evenly; see the module documentation).
/// `dst` needs an [`echo_server`] of the same protocol behind it.
pub fn flow_generator(
    lab: &Lab,
    proto: Proto,
    dst: SocketAddr,
    first_local_port: u16,
    flows: usize,
    interval: Duration,
) -> Result<FlowGenerator> {
    if !proto.has_ports() {
        bail!("flow_generator: TCP or UDP only");
    }
    if flows == 0 || first_local_port == 0 || first_local_port as usize + flows > 65536 {
        bail!("flows {flows} from port {first_local_port} do not fit in 1..=65535");
    }
    if interval < Duration::from_millis(1) {
        bail!("interval {interval:?} is too short");
    }
    let reservation = FdReservation::new(flows + 16)?;
    let stop = Arc::new(AtomicBool::new(false));
    lab.register_stop(&stop);
    let started = Arc::new(Started::default());
    let counters: Arc<Vec<FlowCounters>> =
        Arc::new((0..flows).map(|_| FlowCounters::default()).collect());
    let cpu_ns = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let local_ip = lab.client_addr_for(dst.ip());
    let error = Arc::new(std::sync::Mutex::new(None));
    let missed_wakeups = Arc::new(AtomicU64::new(0));
    let missed = missed_wakeups.clone();
    let (st, stp, ctr, cpu, err) = (
        started.clone(),
        stop.clone(),
        counters.clone(),
        cpu_ns.clone(),
        error.clone(),
    );
    let thread = spawn_in_netns(
        lab.client_ns(),
        &format!("flowgen{}", proto.name()),
        move || {
            let _reservation = reservation;
            let mut g = Generator {
                proto,
                dst,
                local_ip,
                first_port: first_local_port,
                interval,
                t0,
                flows: ctr,
                socks: Vec::new(),
                rx: HashMap::new(),
                tx: HashMap::new(),
                connecting: 0,
                next_connect: 0,
                missed_wakeups: 0,
                missed_out: missed,
            };
            let r = g.run(&st, &stp, &cpu);
            if let Err(e) = &r {
                st.set(Err(format!("{e:#}")));
                *err.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{e:#}"));
            }
            r
        },
    )?;
    Ok(FlowGenerator {
        proto,
        dst,
        first_local_port,
        interval,
        t0,
        flows: counters,
        cpu_ns,
        started,
        error,
        missed_wakeups,
        worker: Worker::new("flow generator", stop, thread),
    })
}

/// A flow's socket.
enum FlowSock {
    None,
    Tcp(TcpStream),
    Udp(UdpSocket),
}

/// The generator thread's state.
struct Generator {
    proto: Proto,
    dst: SocketAddr,
    local_ip: std::net::IpAddr,
    first_port: u16,
    interval: Duration,
    t0: Instant,
    flows: Arc<Vec<FlowCounters>>,
    socks: Vec<FlowSock>,
    /// TCP: partial echoes per flow (only flows with a partial message).
    rx: HashMap<usize, Vec<u8>>,
    /// TCP: unsent bytes per flow (only flows with a backlog).
    tx: HashMap<usize, Vec<u8>>,
    connecting: usize,
    next_connect: usize,
    /// Reads that found data epoll had not reported (see [`SWEEP`]).
    missed_wakeups: u64,
    missed_out: Arc<AtomicU64>,
}

impl Generator {
    fn run(&mut self, started: &Started, stop: &AtomicBool, cpu: &AtomicU64) -> Result<()> {
        let n = self.flows.len();
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll")?;
        self.socks = (0..n).map(|_| FlowSock::None).collect();
        if self.proto == Proto::Udp {
            for i in 0..n {
                let s = self.flow_socket(i, Type::DGRAM, Protocol::UDP)?;
                s.connect(&SockAddr::from(self.dst))
                    .with_context(|| format!("connect UDP flow {i} to {}", self.dst))?;
                let u: UdpSocket = s.into();
                epoll
                    .add(&u, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
                    .context("epoll add")?;
                self.socks[i] = FlowSock::Udp(u);
                self.flows[i].state.store(1, Ordering::Relaxed);
            }
        }
        started.set(Ok(self.first_port));
        let mut events = vec![EpollEvent::empty(); 1024];
        let mut buf = vec![0u8; 65536];
        let mut next_msg: u64 = 0;
        let mut last_cpu = Instant::now();
        let mut last_sweep = Instant::now();
        let per_msg = self.interval.as_secs_f64() / n as f64;
        while !stop.load(Ordering::Relaxed) {
            if self.proto == Proto::Tcp {
                self.start_connects(&epoll)?;
            }
            // Send what is due: message m is flow m % n's, due at t0 + m * interval / n.
            let now = self.t0.elapsed().as_secs_f64();
            let behind = (now / per_msg) as u64;
            if behind > next_msg + n as u64 {
                // More than a whole interval behind (e.g. the machine stalled):
                // skip ahead instead of sending a burst.
                next_msg = behind - n as u64;
            }
            while (next_msg as f64) * per_msg <= now {
                self.send((next_msg % n as u64) as usize, &epoll);
                next_msg += 1;
            }
            let wait = ((next_msg as f64) * per_msg - self.t0.elapsed().as_secs_f64()).max(0.0);
            let ms = (wait * 1000.0).ceil().min(TICK.as_millis() as f64) as u16;
            let k = match epoll.wait(&mut events, ms) {
                Ok(k) => k,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => return Err(e).context("epoll_wait"),
            };
            for ev in &events[..k] {
                self.handle(ev.data() as usize, ev.events(), &epoll, &mut buf, false)?;
            }
            if last_sweep.elapsed() >= SWEEP {
                last_sweep = Instant::now();
                for i in 0..n {
                    let state = self.flows[i].state.load(Ordering::Relaxed);
                    if state == 0 && matches!(self.socks[i], FlowSock::Tcp(_)) {
                        self.handle(i, EpollFlags::EPOLLOUT, &epoll, &mut buf, true)?;
                    } else if state == 1 {
                        let mut flags = EpollFlags::EPOLLIN;
                        if self.tx.contains_key(&i) {
                            flags |= EpollFlags::EPOLLOUT;
                        }
                        self.handle(i, flags, &epoll, &mut buf, true)?;
                    }
                }
            }
            if last_cpu.elapsed() >= TICK {
                cpu.store(thread_cpu().as_nanos() as u64, Ordering::Relaxed);
                self.missed_out
                    .store(self.missed_wakeups, Ordering::Relaxed);
                last_cpu = Instant::now();
            }
        }
        cpu.store(thread_cpu().as_nanos() as u64, Ordering::Relaxed);
        for (i, s) in self.socks.iter_mut().enumerate() {
            if let FlowSock::Tcp(t) = s {
                // RST instead of FIN: no TIME_WAIT keeps the port.
                let _ = socket2::SockRef::from(&*t).set_linger(Some(Duration::ZERO));
            }
            *s = FlowSock::None;
            if self.flows[i].state.load(Ordering::Relaxed) == 1 {
                self.flows[i].state.store(2, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn flow_socket(&self, i: usize, ty: Type, proto: Protocol) -> Result<Socket> {
        let local = SocketAddr::new(self.local_ip, self.first_port + i as u16);
        let domain = Domain::for_address(local);
        let s = match Socket::new(domain, ty, Some(proto)) {
            // A server in this process took descriptors meanwhile: raise the limit.
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                ensure_nofile(self.flows.len() - i + 64)?;
                Socket::new(domain, ty, Some(proto))
            }
            r => r,
        }
        .with_context(|| format!("socket for flow {i}"))?;
        s.set_reuse_address(true)?;
        s.set_nonblocking(true)?;
        s.bind(&SockAddr::from(local))
            .with_context(|| format!("bind {local}"))?;
        Ok(s)
    }

    /// Starts TCP connects while fewer than [`MAX_CONNECTING`] are in progress.
    fn start_connects(&mut self, epoll: &Epoll) -> Result<()> {
        while self.connecting < MAX_CONNECTING && self.next_connect < self.flows.len() {
            let i = self.next_connect;
            self.next_connect += 1;
            let s = self.flow_socket(i, Type::STREAM, Protocol::TCP)?;
            let _ = s.set_tcp_nodelay(true);
            match s.connect(&SockAddr::from(self.dst)) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(_) => {
                    self.fail(i);
                    continue;
                }
            }
            let t: TcpStream = s.into();
            epoll
                .add(&t, EpollEvent::new(EpollFlags::EPOLLOUT, i as u64))
                .context("epoll add")?;
            self.socks[i] = FlowSock::Tcp(t);
            self.connecting += 1;
        }
        Ok(())
    }

    fn fail(&mut self, i: usize) {
        let f = &self.flows[i];
        f.errors.fetch_add(1, Ordering::Relaxed);
        f.state.store(2, Ordering::Relaxed);
        self.socks[i] = FlowSock::None;
        self.rx.remove(&i);
        self.tx.remove(&i);
    }

    fn send(&mut self, i: usize, epoll: &Epoll) {
        let f = &self.flows[i];
        if f.state.load(Ordering::Relaxed) != 1 {
            return;
        }
        let seq = f.sent.load(Ordering::Relaxed);
        let m = message(i as u32, seq);
        match &mut self.socks[i] {
            FlowSock::Udp(u) => match u.send(&m) {
                Ok(_) => {
                    f.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    f.errors.fetch_add(1, Ordering::Relaxed);
                }
            },
            FlowSock::Tcp(t) => {
                f.sent.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = self.tx.get_mut(&i) {
                    if p.len() + m.len() > MAX_PENDING {
                        f.errors.fetch_add(1, Ordering::Relaxed);
                    } else {
                        p.extend_from_slice(&m);
                    }
                    return;
                }
                let rest = match t.write(&m) {
                    Ok(w) => &m[w..],
                    Err(e) if e.kind() == ErrorKind::WouldBlock => &m[..],
                    Err(_) => {
                        self.fail(i);
                        return;
                    }
                };
                if !rest.is_empty() {
                    self.tx.insert(i, rest.to_vec());
                    let mut e =
                        EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT, i as u64);
                    let _ = epoll.modify(t.as_fd(), &mut e);
                }
            }
            FlowSock::None => {}
        }
    }

    fn handle(
        &mut self,
        i: usize,
        ev: EpollFlags,
        epoll: &Epoll,
        buf: &mut [u8],
        swept: bool,
    ) -> Result<()> {
        let now_ms = self.t0.elapsed().as_millis() as u64 + 1;
        match &mut self.socks[i] {
            FlowSock::None => {}
            FlowSock::Udp(u) => {
                // One datagram per event: epoll is level-triggered and reports the
                // socket again if more are queued, which saves an EAGAIN per echo.
                let f = &self.flows[i];
                match u.recv(buf) {
                    Ok(k) => {
                        if swept {
                            self.missed_wakeups += 1;
                        }
                        if is_echo(&buf[..k], i as u32, f.sent.load(Ordering::Relaxed)) {
                            f.echoed.fetch_add(1, Ordering::Relaxed);
                            f.last_echo_ms.store(now_ms, Ordering::Relaxed);
                        } else {
                            f.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => {
                        f.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            FlowSock::Tcp(t) => {
                let state = self.flows[i].state.load(Ordering::Relaxed);
                if state == 0 {
                    // Connect finished (EPOLLOUT) or failed (EPOLLERR/EPOLLHUP). A
                    // sweep only acts on connects that have finished.
                    let err = !matches!(t.take_error(), Ok(None));
                    if swept && !err && t.peer_addr().is_err() {
                        return Ok(());
                    }
                    if swept {
                        self.missed_wakeups += 1;
                    }
                    self.connecting = self.connecting.saturating_sub(1);
                    let failed = ev.intersects(EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP)
                        || err
                        || t.peer_addr().is_err();
                    if failed {
                        let _ = epoll.delete(t.as_fd());
                        self.fail(i);
                        return Ok(());
                    }
                    let mut e = EpollEvent::new(EpollFlags::EPOLLIN, i as u64);
                    epoll.modify(t.as_fd(), &mut e).context("epoll mod")?;
                    self.flows[i].state.store(1, Ordering::Relaxed);
                    return Ok(());
                }
                let mut failed = ev.intersects(EpollFlags::EPOLLERR);
                if ev.intersects(EpollFlags::EPOLLOUT) && !failed {
                    if let Some(p) = self.tx.get_mut(&i) {
                        match t.write(p) {
                            Ok(w) => {
                                p.drain(..w);
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                            Err(_) => failed = true,
                        }
                        if p.is_empty() {
                            self.tx.remove(&i);
                            let mut e = EpollEvent::new(EpollFlags::EPOLLIN, i as u64);
                            let _ = epoll.modify(t.as_fd(), &mut e);
                        }
                    }
                }
                if ev.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP) && !failed {
                    loop {
                        match t.read(buf) {
                            Ok(0) => {
                                failed = true;
                                break;
                            }
                            Ok(k) => {
                                if swept {
                                    self.missed_wakeups += 1;
                                }
                                let f = &self.flows[i];
                                let sent = f.sent.load(Ordering::Relaxed);
                                let acc = self.rx.entry(i).or_default();
                                acc.extend_from_slice(&buf[..k]);
                                let whole = acc.len() / FLOW_MESSAGE_LEN * FLOW_MESSAGE_LEN;
                                for m in acc[..whole].chunks(FLOW_MESSAGE_LEN) {
                                    if is_echo(m, i as u32, sent) {
                                        f.echoed.fetch_add(1, Ordering::Relaxed);
                                        f.last_echo_ms.store(now_ms, Ordering::Relaxed);
                                    } else {
                                        f.errors.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                acc.drain(..whole);
                                if acc.is_empty() {
                                    self.rx.remove(&i);
                                }
                                if k < buf.len() {
                                    break;
                                }
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(_) => {
                                failed = true;
                                break;
                            }
                        }
                    }
                }
                if failed {
                    if let FlowSock::Tcp(t) = &self.socks[i] {
                        let _ = epoll.delete(t.as_fd());
                    }
                    self.fail(i);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn messages() {
        let m = message(7, 3);
        assert_eq!(m.len(), FLOW_MESSAGE_LEN);
        assert!(is_echo(&m, 7, 4));
        assert!(!is_echo(&m, 7, 3), "not sent yet");
        assert!(!is_echo(&m, 8, 4), "other flow");
        let mut bad = m;
        bad[20] ^= 1;
        assert!(!is_echo(&bad, 7, 4));
    }

    #[test]
    fn stats_lines() {
        assert_eq!(parse_stats_line("stats 1 2 3 4 5"), Some([1, 2, 3, 4, 5]));
        assert_eq!(parse_stats_line("stats 1 2 3 4"), None);
        assert_eq!(parse_stats_line("listening 7000"), None);
    }

    #[test]
    fn nofile() {
        ensure_nofile(100).unwrap();
    }
}
