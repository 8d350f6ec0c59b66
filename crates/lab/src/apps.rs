//! Test applications run as threads inside the lab's namespaces (each thread
//! `setns`es into the namespace first; no extra binaries needed).
//!
//! * TCP: the client sends an 8-byte big-endian length; the server answers with that
//!   many bytes of the deterministic pattern [`pattern_byte`], paced at the server's
//!   rate, then closes.
//! * UDP: requests are `"SVTR" + seq (u32 BE) + 24 pattern bytes`; the server
//!   answers each non-empty datagram with the datagram followed by its FNV-1a-32
//!   checksum (BE). Empty datagrams are only counted, never answered.
//!
//! Every app exists for any address of either family (`*_on` servers bind a
//! `SocketAddr`, `*_to` clients connect to one); the older port-only functions are
//! thin wrappers for the IPv4 client-to-server case. An IPv6 server socket is
//! IPv6-only (`IPV6_V6ONLY`), so an IPv4 and an IPv6 server can share a port and each
//! serves exactly the family of its bind address. A wildcard UDP server replies
//! from the address each request was sent to (`IP_PKTINFO` / `IPV6_RECVPKTINFO`),
//! so one `0.0.0.0:port` or `[::]:port` server answers the server's address and
//! every fan-out address, and the clients' connected sockets accept the answers.

use std::collections::BTreeSet;
use std::io::{ErrorKind, IoSlice, IoSliceMut, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrStorage,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::util::spawn_in_netns;
use crate::Lab;

/// Poll granularity of every application thread (stop flag checks).
const TICK: Duration = Duration::from_millis(100);
/// How long `tcp_server`/`udp_server` wait for their socket to be bound.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// A download with no progress for this long gives up.
const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// How long a UDP request waits for its response.
const UDP_REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// Errors recorded at most (then the app gives up).
const MAX_ERRORS: usize = 1000;

/// Byte `i` of the TCP stream pattern (cheap, non-periodic over small spans).
pub fn pattern_byte(i: u64) -> u8 {
    let mut x = (i >> 3).wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    (x >> ((i & 7) * 8)) as u8
}

fn fill_pattern(buf: &mut [u8], offset: u64) {
    for (j, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(offset + j as u64);
    }
}

fn fnv1a32(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in data {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Shared "has it started" state between an app thread and its handle.
#[derive(Default)]
pub(crate) struct Started {
    state: Mutex<Option<Result<u16, String>>>,
    cv: Condvar,
}

impl Started {
    pub(crate) fn set(&self, v: Result<u16, String>) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(v);
        }
        self.cv.notify_all();
    }
    pub(crate) fn get(&self) -> Option<Result<u16, String>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub(crate) fn wait(&self, timeout: Duration, what: &str) -> Result<u16> {
        let deadline = Instant::now() + timeout;
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match &*g {
                Some(Ok(p)) => return Ok(*p),
                Some(Err(e)) => bail!("{what} failed: {e}"),
                None => {}
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("{what}: not ready after {timeout:?}");
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

pub(crate) fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

pub(crate) fn join_thread<T>(h: Option<JoinHandle<Result<T>>>, what: &str) -> Result<T> {
    match h {
        None => bail!("{what}: already joined"),
        Some(h) => match h.join() {
            Ok(r) => r,
            Err(_) => Err(anyhow!("{what}: thread panicked")),
        },
    }
}

/// A lab application's background thread and the flag that stops it. Dropping it
/// sets the flag and joins the thread, so no application outlives the test (and
/// the namespaces) that started it.
pub(crate) struct Worker<T> {
    what: &'static str,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<T>>>,
}

impl<T> Worker<T> {
    /// `stop` is the flag the thread polls; `what` names it in errors.
    pub(crate) fn new(
        what: &'static str,
        stop: Arc<AtomicBool>,
        thread: JoinHandle<Result<T>>,
    ) -> Self {
        Worker {
            what,
            stop,
            thread: Some(thread),
        }
    }
    /// Whether the thread has ended (or was joined).
    pub(crate) fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|h| h.is_finished())
    }
    /// Waits for the thread's end without asking it to stop.
    pub(crate) fn wait(&mut self) -> Result<T> {
        join_thread(self.thread.take(), self.what)
    }
    /// Asks the thread to stop and waits for it.
    pub(crate) fn stop(&mut self) -> Result<T> {
        self.stop.store(true, Ordering::SeqCst);
        self.wait()
    }
    /// For a start that failed with `e`: stops the thread and returns its own
    /// error if it has one (the cause), else `e`.
    pub(crate) fn start_failed(&mut self, e: anyhow::Error) -> anyhow::Error {
        self.stop().err().unwrap_or(e)
    }
}

impl<T> Drop for Worker<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------- TCP server

/// A paced pattern-streaming TCP server in the server namespace.
pub struct TcpServer {
    port: u16,
    local: SocketAddr,
    connections: Arc<AtomicU64>,
    bytes_sent: Arc<AtomicU64>,
    worker: Worker<()>,
}

impl TcpServer {
    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// The bound address (with the actual port if bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
    /// Payload bytes written so far (all connections).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::SeqCst)
    }
    /// Stops the server and joins its threads (also done on drop).
    pub fn stop(mut self) -> Result<()> {
        self.worker.stop()
    }
}

/// Starts a TCP server on `server_addr:port` that streams the pattern at
/// `rate_bytes_per_sec` (0 = unpaced) to every client, as many bytes as the client
/// asks for in its 8-byte big-endian request. IPv4 only: see [`tcp_server_on`].
pub fn tcp_server(lab: &Lab, port: u16, rate_bytes_per_sec: u64) -> Result<TcpServer> {
    tcp_server_on(
        lab,
        SocketAddr::new(lab.server_addr().into(), port),
        rate_bytes_per_sec,
    )
}

/// A listening socket of `bind`'s family; an IPv6 one is IPv6-only, so that an IPv4
/// server can share the port (see the module documentation).
pub(crate) fn listen_socket(bind: SocketAddr, backlog: i32) -> std::io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(bind), Type::STREAM, Some(Protocol::TCP))?;
    if bind.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.bind(&SockAddr::from(bind))?;
    sock.listen(backlog)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// [`tcp_server`] on any address of the server namespace, either family: the server's
/// address, a fan-out target, or a wildcard (`0.0.0.0:port` or `[::]:port`: every
/// address of that family, fan-out targets included). Port 0 picks a free port
/// ([`TcpServer::port`]).
pub fn tcp_server_on(lab: &Lab, bind: SocketAddr, rate_bytes_per_sec: u64) -> Result<TcpServer> {
    let stop = Arc::new(AtomicBool::new(false));
    lab.register_stop(&stop);
    let started = Arc::new(Started::default());
    let connections = Arc::new(AtomicU64::new(0));
    let bytes_sent = Arc::new(AtomicU64::new(0));
    let (st, stp, conns, bs) = (
        started.clone(),
        stop.clone(),
        connections.clone(),
        bytes_sent.clone(),
    );
    let thread = spawn_in_netns(
        lab.server_ns(),
        &format!("tcpsrv{}", bind.port()),
        move || {
            let listener = match listen_socket(bind, 1024) {
                Ok(l) => l,
                Err(e) => {
                    st.set(Err(format!("bind {bind}: {e}")));
                    return Err(anyhow!("bind {bind}: {e}"));
                }
            };
            let port = listener
                .local_addr()
                .map(|a| a.port())
                .unwrap_or(bind.port());
            st.set(Ok(port));
            let mut workers: Vec<JoinHandle<()>> = Vec::new();
            while !stp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _peer)) => {
                        conns.fetch_add(1, Ordering::SeqCst);
                        let (stp2, bs2) = (stp.clone(), bs.clone());
                        let h = std::thread::Builder::new()
                            .name(format!("tcpconn{port}"))
                            .spawn(move || serve_tcp(stream, rate_bytes_per_sec, &stp2, &bs2))?;
                        workers.push(h);
                        workers.retain(|w| !w.is_finished());
                    }
                    Err(e) if is_timeout(&e) => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => {
                        eprintln!("svctr-lab tcp server: accept: {e}");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
            for w in workers {
                let _ = w.join();
            }
            Ok(())
        },
    )?;
    let mut srv = TcpServer {
        port: bind.port(),
        local: bind,
        connections,
        bytes_sent,
        worker: Worker::new("tcp server", stop, thread),
    };
    match started.wait(START_TIMEOUT, "tcp server") {
        Ok(port) => {
            srv.port = port;
            srv.local.set_port(port);
            Ok(srv)
        }
        Err(e) => Err(srv.worker.start_failed(e)),
    }
}

fn serve_tcp(mut stream: TcpStream, rate: u64, stop: &AtomicBool, bytes_sent: &AtomicU64) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(TICK));
    let _ = stream.set_write_timeout(Some(TICK));
    // Request: 8-byte big-endian length.
    let mut req = [0u8; 8];
    let mut have = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while have < 8 {
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            return;
        }
        match stream.read(&mut req[have..]) {
            Ok(0) => return,
            Ok(n) => have += n,
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
    let total = u64::from_be_bytes(req);
    let chunk = if rate == 0 {
        16384
    } else {
        (rate / 100).clamp(1024, 16384)
    } as usize;
    let mut buf = vec![0u8; chunk];
    let start = Instant::now();
    let mut last_progress = Instant::now();
    let mut sent: u64 = 0;
    while sent < total {
        if stop.load(Ordering::SeqCst) || last_progress.elapsed() > IDLE_LIMIT {
            return;
        }
        if rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            let el = start.elapsed();
            if due > el {
                std::thread::sleep((due - el).min(Duration::from_millis(50)));
                continue;
            }
        }
        let n = (chunk as u64).min(total - sent) as usize;
        fill_pattern(&mut buf[..n], sent);
        match stream.write(&buf[..n]) {
            Ok(0) => return,
            Ok(w) => {
                sent += w as u64;
                bytes_sent.fetch_add(w as u64, Ordering::SeqCst);
                last_progress = Instant::now();
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    // Let the client close first (bounded), so the client sees a clean EOF.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut sink = [0u8; 512];
    while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        match stream.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => break,
        }
    }
}

// -------------------------------------------------------------- TCP download

/// Result of a [`tcp_download`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadReport {
    /// Payload bytes received.
    pub bytes: u64,
    /// All requested bytes arrived, each equal to the pattern, nothing extra.
    pub intact: bool,
    /// Socket errors seen (e.g. "recv: No route to host (os error 113)"), SO_ERROR at the end.
    pub errors: Vec<String>,
    /// From the connect() call to the end of the transfer.
    pub duration: Duration,
    /// Local port the client used.
    pub local_port: u16,
}

/// A running download in the client namespace.
pub struct TcpDownload {
    started: Arc<Started>,
    received: Arc<AtomicU64>,
    worker: Worker<DownloadReport>,
}

impl TcpDownload {
    /// Blocks until the connection is established; returns the local port.
    pub fn wait_established(&self, timeout: Duration) -> Result<u16> {
        self.started.wait(timeout, "tcp download connect")
    }
    /// Whether the connection has been established (false also if it failed).
    pub fn started(&self) -> bool {
        matches!(self.started.get(), Some(Ok(_)))
    }
    /// The local port, once connected.
    pub fn local_port(&self) -> Option<u16> {
        self.started.get().and_then(|r| r.ok())
    }
    /// Bytes received so far.
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
    /// Whether the download thread has finished.
    pub fn is_finished(&self) -> bool {
        self.worker.is_finished()
    }
    /// Waits for the end of the download.
    pub fn wait(mut self) -> Result<DownloadReport> {
        self.worker.wait()
    }
}

/// IP_RECVERR (IPv4) or IPV6_RECVERR (IPv6): ICMP errors matching the socket are
/// queued on its error queue and reported as socket errors.
fn set_recverr(sock: &Socket, v6: bool) -> Result<()> {
    if v6 {
        setsockopt(sock, sockopt::Ipv6RecvErr, &true).context("setsockopt IPV6_RECVERR")
    } else {
        setsockopt(sock, sockopt::Ipv4RecvErr, &true).context("setsockopt IP_RECVERR")
    }
}

/// A socket bound to `local` (`SO_REUSEADDR`), of `local`'s family.
pub(crate) fn client_socket(
    local: SocketAddr,
    ty: Type,
    proto: Protocol,
    recverr: bool,
) -> Result<Socket> {
    let sock = Socket::new(Domain::for_address(local), ty, Some(proto)).context("socket")?;
    sock.set_reuse_address(true).context("SO_REUSEADDR")?;
    sock.bind(&SockAddr::from(local))
        .with_context(|| format!("bind {local}"))?;
    if recverr {
        set_recverr(&sock, local.is_ipv6())?;
    }
    Ok(sock)
}

fn local_port_of(sock: &Socket) -> Result<u16> {
    sock.local_addr()?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| anyhow!("local address is not an IP address"))
}

/// Starts downloading `bytes` bytes from `server_addr:server_port` in the client
/// namespace, from local port `local_port` (0 = ephemeral), optionally with
/// IP_RECVERR so ICMP errors matching the connection surface as socket errors.
/// IPv4 only: see [`tcp_download_to`].
pub fn tcp_download(
    lab: &Lab,
    server_port: u16,
    local_port: u16,
    bytes: u64,
    recverr: bool,
) -> Result<TcpDownload> {
    let dst = SocketAddr::new(lab.server_addr().into(), server_port);
    tcp_download_to(lab, dst, local_port, bytes, recverr)
}

/// [`tcp_download`] from any destination `dst` of either family (the server's
/// address or a fan-out target, with a [`tcp_server_on`] behind it). The client
/// binds its address of `dst`'s family and `local_port` (0 = ephemeral); `recverr`
/// sets IP_RECVERR or IPV6_RECVERR.
pub fn tcp_download_to(
    lab: &Lab,
    dst: SocketAddr,
    local_port: u16,
    bytes: u64,
    recverr: bool,
) -> Result<TcpDownload> {
    tcp_download_patient(lab, dst, local_port, bytes, recverr, Duration::from_secs(5))
}

/// [`tcp_download_to`] whose connect waits up to `connect_timeout` (a connection whose SYNs a
/// firewall drops for a while, then lets through).
pub fn tcp_download_patient(
    lab: &Lab,
    dst: SocketAddr,
    local_port: u16,
    bytes: u64,
    recverr: bool,
    connect_timeout: Duration,
) -> Result<TcpDownload> {
    let stop = Arc::new(AtomicBool::new(false));
    lab.register_stop(&stop);
    let started = Arc::new(Started::default());
    let received = Arc::new(AtomicU64::new(0));
    let local = SocketAddr::new(lab.client_addr_for(dst.ip()), local_port);
    let (st, stp, rcv) = (started.clone(), stop.clone(), received.clone());
    let thread = spawn_in_netns(lab.client_ns(), "tcpdl", move || {
        let r = download(local, dst, bytes, recverr, connect_timeout, &st, &stp, &rcv);
        if let Err(e) = &r {
            st.set(Err(format!("{e:#}")));
        }
        r
    })?;
    Ok(TcpDownload {
        started,
        received,
        worker: Worker::new("tcp download", stop, thread),
    })
}

#[allow(clippy::too_many_arguments)]
fn download(
    local: SocketAddr,
    server: SocketAddr,
    bytes: u64,
    recverr: bool,
    connect_timeout: Duration,
    started: &Started,
    stop: &AtomicBool,
    received: &AtomicU64,
) -> Result<DownloadReport> {
    let sock = client_socket(local, Type::STREAM, Protocol::TCP, recverr)?;
    let t0 = Instant::now();
    sock.connect_timeout(&SockAddr::from(server), connect_timeout)
        .with_context(|| format!("connect to {server}"))?;
    let port = local_port_of(&sock)?;
    started.set(Ok(port));
    let mut stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(TICK))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut errors = Vec::new();
    let mut req_sent = false;
    for _ in 0..3 {
        match stream.write_all(&bytes.to_be_bytes()) {
            Ok(()) => {
                req_sent = true;
                break;
            }
            Err(e) => errors.push(format!("send request: {e}")),
        }
    }
    if !req_sent {
        bail!("could not send the request: {errors:?}");
    }
    let mut buf = vec![0u8; 65536];
    let mut got: u64 = 0;
    let mut intact = true;
    let mut last_progress = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            errors.push(format!("stopped after {got} of {bytes} bytes"));
            intact = false;
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if intact {
                    for (j, &b) in buf[..n].iter().enumerate() {
                        let off = got + j as u64;
                        if off >= bytes {
                            errors.push(format!("received more than the {bytes} bytes requested"));
                            intact = false;
                            break;
                        }
                        if b != pattern_byte(off) {
                            errors.push(format!("corrupt byte at offset {off}"));
                            intact = false;
                            break;
                        }
                    }
                }
                got += n as u64;
                received.store(got, Ordering::SeqCst);
                last_progress = Instant::now();
            }
            Err(e) if is_timeout(&e) => {
                if last_progress.elapsed() > IDLE_LIMIT {
                    errors.push(format!(
                        "stalled: no data for {IDLE_LIMIT:?} after {got} bytes"
                    ));
                    break;
                }
            }
            Err(e) => {
                // With IP_RECVERR an ICMP error for this connection (e.g. time exceeded
                // -> EHOSTUNREACH) is reported once; the connection itself lives on.
                errors.push(format!("recv: {e}"));
                let fatal = matches!(
                    e.raw_os_error(),
                    Some(
                        libc::ECONNRESET
                            | libc::EPIPE
                            | libc::ENOTCONN
                            | libc::ETIMEDOUT
                            | libc::ECONNABORTED
                    )
                );
                if fatal || errors.len() >= MAX_ERRORS {
                    break;
                }
            }
        }
    }
    if got < bytes {
        intact = false;
        errors.push(format!("connection ended after {got} of {bytes} bytes"));
    }
    match stream.take_error() {
        Ok(Some(e)) => errors.push(format!("SO_ERROR: {e}")),
        Ok(None) => {}
        Err(e) => errors.push(format!("getsockopt SO_ERROR: {e}")),
    }
    let duration = t0.elapsed();
    let _ = stream.shutdown(Shutdown::Both);
    Ok(DownloadReport {
        bytes: got,
        intact,
        errors,
        duration,
        local_port: port,
    })
}

// ---------------------------------------------------------------- UDP server

/// Request/response UDP server in the server namespace.
pub struct UdpServer {
    port: u16,
    datagrams: Arc<AtomicU64>,
    empty: Arc<AtomicU64>,
    worker: Worker<()>,
}

impl UdpServer {
    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// Datagrams received, empty ones included.
    pub fn datagrams(&self) -> u64 {
        self.datagrams.load(Ordering::SeqCst)
    }
    /// Datagrams with an empty payload received (never answered).
    pub fn empty_datagrams(&self) -> u64 {
        self.empty.load(Ordering::SeqCst)
    }
    /// Stops the server (also done on drop).
    pub fn stop(mut self) -> Result<()> {
        self.worker.stop()
    }
}

fn udp_response(req: &[u8]) -> Vec<u8> {
    let mut v = req.to_vec();
    v.extend_from_slice(&fnv1a32(req).to_be_bytes());
    v
}

/// Starts a UDP server on `server_addr:port`: each non-empty datagram is answered
/// with itself followed by its FNV-1a-32 (BE); empty datagrams are counted only.
/// IPv4 only: see [`udp_server_on`].
pub fn udp_server(lab: &Lab, port: u16) -> Result<UdpServer> {
    udp_server_on(lab, SocketAddr::new(lab.server_addr().into(), port))
}

/// A UDP socket of `bind`'s family bound to `bind` (IPv6: IPv6-only). With a
/// wildcard address it asks for each datagram's destination address
/// (`IP_PKTINFO` / `IPV6_RECVPKTINFO`) so that answers can leave from it
/// ([`PktinfoUdp`]).
pub(crate) fn udp_bind(bind: SocketAddr) -> std::io::Result<PktinfoUdp> {
    let sock = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    if bind.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.bind(&SockAddr::from(bind))?;
    let wildcard = bind.ip().is_unspecified();
    if wildcard {
        let r = if bind.is_ipv6() {
            setsockopt(&sock, sockopt::Ipv6RecvPacketInfo, &true)
        } else {
            setsockopt(&sock, sockopt::Ipv4PacketInfo, &true)
        };
        r.map_err(std::io::Error::from)?;
    }
    Ok(PktinfoUdp {
        sock: sock.into(),
        wildcard,
        cmsg: vec![0u8; 128],
    })
}

/// A server-side UDP socket that answers from the address a request was sent to.
///
/// A socket bound to a wildcard address would otherwise answer from the address
/// routing picks (the server's eth0 address), and a client that sent to a fan-out
/// target with a connected socket would drop the answer.
pub(crate) struct PktinfoUdp {
    pub(crate) sock: UdpSocket,
    wildcard: bool,
    cmsg: Vec<u8>,
}

impl PktinfoUdp {
    /// Receives one datagram: (length, sender, the address it was sent to if known).
    pub(crate) fn recv(
        &mut self,
        buf: &mut [u8],
    ) -> std::io::Result<(usize, SocketAddr, Option<IpAddr>)> {
        if !self.wildcard {
            let (n, peer) = self.sock.recv_from(buf)?;
            return Ok((n, peer, None));
        }
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrStorage>(
            self.sock.as_raw_fd(),
            &mut iov,
            Some(&mut self.cmsg),
            MsgFlags::empty(),
        )
        .map_err(std::io::Error::from)?;
        let n = msg.bytes;
        let peer = msg
            .address
            .and_then(|a| storage_to_std(&a))
            .ok_or_else(|| std::io::Error::other("datagram without a sender address"))?;
        let mut dst = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::Ipv4PacketInfo(pi) => {
                        dst = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr))));
                    }
                    ControlMessageOwned::Ipv6PacketInfo(pi) => {
                        dst = Some(IpAddr::V6(Ipv6Addr::from(pi.ipi6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
        }
        Ok((n, peer, dst))
    }

    /// Sends `data` to `peer`, from `src` when given (the request's destination).
    pub(crate) fn send(
        &self,
        data: &[u8],
        peer: SocketAddr,
        src: Option<IpAddr>,
    ) -> std::io::Result<usize> {
        let Some(src) = src else {
            return self.sock.send_to(data, peer);
        };
        let iov = [IoSlice::new(data)];
        let to = SockaddrStorage::from(peer);
        let r = match src {
            IpAddr::V4(a) => {
                let pi = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(a).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                sendmsg(
                    self.sock.as_raw_fd(),
                    &iov,
                    &[ControlMessage::Ipv4PacketInfo(&pi)],
                    MsgFlags::empty(),
                    Some(&to),
                )
            }
            IpAddr::V6(a) => {
                let pi = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: a.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                sendmsg(
                    self.sock.as_raw_fd(),
                    &iov,
                    &[ControlMessage::Ipv6PacketInfo(&pi)],
                    MsgFlags::empty(),
                    Some(&to),
                )
            }
        };
        r.map_err(std::io::Error::from)
    }
}

/// A nix socket address as a std one (IPv4 or IPv6 only).
pub(crate) fn storage_to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// [`udp_server`] on any address of the server namespace, either family: the
/// server's address, a fan-out target, or a wildcard (`0.0.0.0:port` / `[::]:port`),
/// which answers every address of its family from the address each request was sent
/// to. Port 0 picks a free port ([`UdpServer::port`]).
pub fn udp_server_on(lab: &Lab, bind: SocketAddr) -> Result<UdpServer> {
    let stop = Arc::new(AtomicBool::new(false));
    lab.register_stop(&stop);
    let started = Arc::new(Started::default());
    let datagrams = Arc::new(AtomicU64::new(0));
    let empty = Arc::new(AtomicU64::new(0));
    let (st, stp, dg, em) = (
        started.clone(),
        stop.clone(),
        datagrams.clone(),
        empty.clone(),
    );
    let thread = spawn_in_netns(
        lab.server_ns(),
        &format!("udpsrv{}", bind.port()),
        move || {
            let mut sock =
                match udp_bind(bind).and_then(|s| s.sock.set_read_timeout(Some(TICK)).map(|_| s)) {
                    Ok(s) => s,
                    Err(e) => {
                        st.set(Err(format!("bind {bind}: {e}")));
                        return Err(anyhow!("bind {bind}: {e}"));
                    }
                };
            let port = sock
                .sock
                .local_addr()
                .map(|a| a.port())
                .unwrap_or(bind.port());
            st.set(Ok(port));
            let mut buf = vec![0u8; 65536];
            while !stp.load(Ordering::SeqCst) {
                match sock.recv(&mut buf) {
                    Ok((n, peer, dst)) => {
                        dg.fetch_add(1, Ordering::SeqCst);
                        if n == 0 {
                            em.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        let _ = sock.send(&udp_response(&buf[..n]), peer, dst);
                    }
                    Err(e) if is_timeout(&e) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            Ok(())
        },
    )?;
    let mut srv = UdpServer {
        port: bind.port(),
        datagrams,
        empty,
        worker: Worker::new("udp server", stop, thread),
    };
    match started.wait(START_TIMEOUT, "udp server") {
        Ok(port) => {
            srv.port = port;
            Ok(srv)
        }
        Err(e) => Err(srv.worker.start_failed(e)),
    }
}

// --------------------------------------------------------------- UDP session

/// Result of a [`udp_session`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpReport {
    /// Requests sent.
    pub sent: u32,
    /// Distinct requests that got their correct response.
    pub answered: u32,
    /// Every datagram received was the correct response to a request sent.
    pub intact: bool,
    /// Socket errors (send/recv errors, MSG_ERRQUEUE entries), unexpected datagrams.
    pub errors: Vec<String>,
    /// Local port the client used.
    pub local_port: u16,
}

/// A running UDP request/response session in the client namespace.
pub struct UdpSession {
    started: Arc<Started>,
    worker: Worker<UdpReport>,
}

impl UdpSession {
    /// Blocks until the socket is bound and connected; returns the local port.
    pub fn wait_started(&self, timeout: Duration) -> Result<u16> {
        self.started.wait(timeout, "udp session")
    }
    /// Whether the socket is set up.
    pub fn started(&self) -> bool {
        matches!(self.started.get(), Some(Ok(_)))
    }
    /// The local port, once bound.
    pub fn local_port(&self) -> Option<u16> {
        self.started.get().and_then(|r| r.ok())
    }
    /// Whether the session thread has finished.
    pub fn is_finished(&self) -> bool {
        self.worker.is_finished()
    }
    /// Waits for the end of the session.
    pub fn wait(mut self) -> Result<UdpReport> {
        self.worker.wait()
    }
}

fn udp_request(seq: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(32);
    v.extend_from_slice(b"SVTR");
    v.extend_from_slice(&seq.to_be_bytes());
    let mut pad = [0u8; 24];
    fill_pattern(&mut pad, seq as u64 * 24);
    v.extend_from_slice(&pad);
    v
}

/// Starts a UDP session in the client namespace: a socket bound to `local_port`
/// (0 = ephemeral) and connected to `server_addr:server_port` sends `requests`
/// numbered requests every `interval`, each waiting up to 1 s for its response.
/// With `recverr`, IP_RECVERR is set and the error queue is drained into the report.
/// IPv4 only: see [`udp_session_to`].
pub fn udp_session(
    lab: &Lab,
    server_port: u16,
    local_port: u16,
    requests: u32,
    interval: Duration,
    recverr: bool,
) -> Result<UdpSession> {
    let dst = SocketAddr::new(lab.server_addr().into(), server_port);
    udp_session_to(lab, dst, local_port, requests, interval, recverr)
}

/// [`udp_session`] to any destination `dst` of either family (with a
/// [`udp_server_on`] behind it). The client binds its address of `dst`'s family and
/// `local_port`; `recverr` sets IP_RECVERR or IPV6_RECVERR, and the error queue
/// entries (`sockaddr_in` or `sockaddr_in6` offenders) go into the report.
pub fn udp_session_to(
    lab: &Lab,
    dst: SocketAddr,
    local_port: u16,
    requests: u32,
    interval: Duration,
    recverr: bool,
) -> Result<UdpSession> {
    let stop = Arc::new(AtomicBool::new(false));
    lab.register_stop(&stop);
    let started = Arc::new(Started::default());
    let local = SocketAddr::new(lab.client_addr_for(dst.ip()), local_port);
    let (st, stp) = (started.clone(), stop.clone());
    let thread = spawn_in_netns(lab.client_ns(), "udpsess", move || {
        let r = session(local, dst, requests, interval, recverr, &st, &stp);
        if let Err(e) = &r {
            st.set(Err(format!("{e:#}")));
        }
        r
    })?;
    Ok(UdpSession {
        started,
        worker: Worker::new("udp session", stop, thread),
    })
}

/// Reads the socket error queue (MSG_ERRQUEUE) into `errors`. IPv4 entries carry the
/// offender as a `sockaddr_in` (IP_RECVERR), IPv6 ones as a `sockaddr_in6`
/// (IPV6_RECVERR); the cmsg buffer has room for the larger.
pub(crate) fn drain_errqueue(sock: &impl AsRawFd, errors: &mut Vec<String>) {
    for _ in 0..64 {
        let mut data = [0u8; 256];
        let mut iov = [IoSliceMut::new(&mut data)];
        let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6);
        let r = recvmsg::<SockaddrStorage>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
        );
        let msg = match r {
            Ok(m) => m,
            Err(_) => return, // EAGAIN: queue empty
        };
        let Ok(cmsgs) = msg.cmsgs() else { return };
        for c in cmsgs {
            let (ee, off) = match c {
                ControlMessageOwned::Ipv4RecvErr(ee, offender) => (
                    ee,
                    offender.map(|a| Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).to_string()),
                ),
                ControlMessageOwned::Ipv6RecvErr(ee, offender) => (
                    ee,
                    offender.map(|a| Ipv6Addr::from(a.sin6_addr.s6_addr).to_string()),
                ),
                _ => continue,
            };
            errors.push(format!(
                "errqueue: {} origin={} type={} code={} from {}",
                std::io::Error::from_raw_os_error(ee.ee_errno as i32),
                ee.ee_origin,
                ee.ee_type,
                ee.ee_code,
                off.as_deref().unwrap_or("?")
            ));
        }
    }
}

fn session(
    local: SocketAddr,
    server: SocketAddr,
    requests: u32,
    interval: Duration,
    recverr: bool,
    started: &Started,
    stop: &AtomicBool,
) -> Result<UdpReport> {
    let sock = client_socket(local, Type::DGRAM, Protocol::UDP, recverr)?;
    sock.connect(&SockAddr::from(server))
        .with_context(|| format!("connect to {server}"))?;
    let port = local_port_of(&sock)?;
    let sock: UdpSocket = sock.into();
    started.set(Ok(port));
    let mut errors: Vec<String> = Vec::new();
    let mut rx = UdpRx {
        buf: vec![0u8; 65536],
        answered: BTreeSet::new(),
        intact: true,
        recverr,
    };
    let mut sent: u32 = 0;
    let t0 = Instant::now();

    'outer: for i in 0..requests {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match sock.send(&udp_request(i)) {
            Ok(_) => {}
            Err(e) => {
                errors.push(format!("send: {e}"));
                if recverr {
                    drain_errqueue(&sock, &mut errors);
                }
            }
        }
        sent = i + 1;
        let reply_deadline = Instant::now() + UDP_REPLY_TIMEOUT;
        let next_send = t0 + interval * (i + 1);
        loop {
            if stop.load(Ordering::SeqCst) {
                break 'outer;
            }
            let now = Instant::now();
            let done_waiting = rx.answered.contains(&i) || now >= reply_deadline;
            if done_waiting && now >= next_send {
                break;
            }
            let until = if done_waiting {
                next_send
            } else {
                reply_deadline
            };
            rx.recv_some(
                &sock,
                sent,
                until.saturating_duration_since(now),
                &mut errors,
            );
            if errors.len() >= MAX_ERRORS {
                break 'outer;
            }
        }
    }
    // Late answers.
    let end = Instant::now() + UDP_REPLY_TIMEOUT;
    while (rx.answered.len() as u32) < sent && Instant::now() < end && !stop.load(Ordering::SeqCst)
    {
        rx.recv_some(
            &sock,
            sent,
            end.saturating_duration_since(Instant::now()),
            &mut errors,
        );
    }
    if recverr {
        drain_errqueue(&sock, &mut errors);
    }
    if let Ok(Some(e)) = sock.take_error() {
        errors.push(format!("SO_ERROR: {e}"));
    }
    Ok(UdpReport {
        sent,
        answered: rx.answered.len() as u32,
        intact: rx.intact,
        errors,
        local_port: port,
    })
}

struct UdpRx {
    buf: Vec<u8>,
    answered: BTreeSet<u32>,
    intact: bool,
    recverr: bool,
}

impl UdpRx {
    /// Receives for at most `max_wait` (capped at one tick); true if something arrived.
    fn recv_some(
        &mut self,
        sock: &UdpSocket,
        sent: u32,
        max_wait: Duration,
        errors: &mut Vec<String>,
    ) -> bool {
        let _ = sock.set_read_timeout(Some(max_wait.clamp(Duration::from_millis(1), TICK)));
        match sock.recv(&mut self.buf) {
            Ok(n) => {
                let d = &self.buf[..n];
                let seq = (n >= 8 && &d[..4] == b"SVTR")
                    .then(|| u32::from_be_bytes([d[4], d[5], d[6], d[7]]));
                match seq {
                    Some(s) if s < sent && d == udp_response(&udp_request(s)).as_slice() => {
                        self.answered.insert(s);
                    }
                    _ => {
                        self.intact = false;
                        if errors.len() < MAX_ERRORS {
                            errors.push(format!("unexpected datagram of {n} bytes"));
                        }
                    }
                }
                true
            }
            Err(e) if is_timeout(&e) => false,
            Err(e) => {
                if errors.len() < MAX_ERRORS {
                    errors.push(format!("recv: {e}"));
                }
                if self.recverr {
                    drain_errqueue(sock, errors);
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn pattern_is_not_trivially_periodic() {
        let a: Vec<u8> = (0..4096).map(pattern_byte).collect();
        let b: Vec<u8> = (4096..8192).map(pattern_byte).collect();
        assert_ne!(a, b);
        assert!(a.iter().collect::<BTreeSet<_>>().len() > 200);
    }

    #[test]
    fn udp_roundtrip_format() {
        let r = udp_request(7);
        assert_eq!(r.len(), 32);
        let resp = udp_response(&r);
        assert_eq!(&resp[..32], &r[..]);
        assert_eq!(resp.len(), 36);
    }
}
