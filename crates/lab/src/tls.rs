//! TLS over TCP with real, unmodified clients and servers: OpenSSL's `s_server`
//! in the server namespace, curl and OpenSSL's `s_client` in the client namespace.
//! What a tracer sees on the wire is therefore what those programs really send
//! (curl's ClientHello with its SNI, OpenSSL's record sizes, TCP from the kernel).
//!
//! * [`tls_server`]: `openssl s_server -WWW` serves the files of a temporary
//!   directory holding a self-signed P-256 certificate (made with `openssl req
//!   -x509`, valid 2 days) and one file, `/file`, of the requested size. `-WWW`
//!   answers `GET /file` with an HTTP/1.0 200 and the file, then closes. It serves
//!   one connection at a time, and one family: `-4 -accept 0.0.0.0:P` or `-6 -accept
//!   [::]:P` (OpenSSL makes an IPv6 listener IPv6-only), so start one per family.
//! * [`tls_server_paced`]: the same s_server behind a relay that paces what it
//!   sends, so a download lasts `file_bytes / bytes_per_sec` seconds whatever the
//!   client does (see below).
//! * [`tls_download`]: `curl -k --resolve host:port:addr`, so no DNS query is made
//!   and the only name on the wire is the ClientHello's SNI; `--local-port` fixes the
//!   5-tuple and `--limit-rate` slows the transfer down.
//!
//! **curl's `--limit-rate` is approximate.** curl 7.88 limits its average over the
//! last seconds, so a transfer starts unlimited; the kernel's receive buffer
//! (megabytes) also lets the server run ahead. Measured here against s_server:
//! 300 kB at 100 kB/s took 0.04 s, 3 MB at 1 MB/s 1.7 s, 2 MB at 200 kB/s 7.1 s.
//! For a connection that reliably lasts, use [`tls_server_paced`]: s_server listens
//! on the server's loopback and a relay thread on `bind` forwards the client's bytes
//! at once and s_server's at the given rate. The TLS records on the wire are still
//! OpenSSL's, byte for byte; only the TCP connection ends at the relay.
//! * [`openssl_client`]: `openssl s_client -connect -servername -bind`, kept open
//!   through its stdin, as a second real client.
//! * [`Lab::split_client_segments`]: makes the client's first data (the ClientHello)
//!   leave as several TCP segments.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::apps::{is_timeout, listen_socket, pattern_byte};
use crate::util::{run_checked, spawn_in_netns, wait_listening, NsProcess, TempDir};
use crate::{Lab, CMD_TIMEOUT};

/// How long a server may take to listen.
const SERVER_START: Duration = Duration::from_secs(10);
/// The longest [`TlsDownload::wait`] waits.
const DOWNLOAD_WAIT: Duration = Duration::from_secs(300);
/// The path [`tls_server`] serves.
pub const TLS_FILE_PATH: &str = "/file";

/// A running `openssl s_server -WWW`; dropping it kills the server and removes its
/// directory (certificate, key, file).
pub struct TlsServer {
    proc: NsProcess,
    dir: TempDir,
    local: SocketAddr,
    file_bytes: u64,
    relay: Option<(Arc<AtomicBool>, JoinHandle<Result<()>>)>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some((stop, h)) = self.relay.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = h.join();
        }
    }
}

impl TlsServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
    /// Size of `/file`.
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }
    /// The server certificate (PEM), for clients that want to verify it.
    pub fn cert_pem(&self) -> Result<String> {
        let p = self.dir.path().join("cert.pem");
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    }
    /// s_server's output so far (mostly errors: it runs with `-quiet`).
    pub fn log(&self) -> String {
        format!("{}{}", self.proc.stdout(), self.proc.stderr())
    }
    /// Stops the server (also done on drop).
    pub fn stop(self) {}
}

/// Starts `openssl s_server -WWW` on `bind` in the server namespace, serving
/// [`TLS_FILE_PATH`] with `file_bytes` bytes of the lab's pattern ([`pattern_byte`]).
/// `bind` is `0.0.0.0:P`, `[::]:P` or one of the server's addresses; the port must
/// not be 0. See the module documentation.
pub fn tls_server(lab: &Lab, bind: SocketAddr, file_bytes: u64) -> Result<TlsServer> {
    start_tls_server(lab, bind, file_bytes, None)
}

/// [`tls_server`] whose answers leave at `bytes_per_sec` (> 0): s_server listens on
/// the server's loopback, a relay on `bind` paces what it sends (see the module
/// documentation), so a download of the file lasts `file_bytes / bytes_per_sec`.
pub fn tls_server_paced(
    lab: &Lab,
    bind: SocketAddr,
    file_bytes: u64,
    bytes_per_sec: u64,
) -> Result<TlsServer> {
    if bytes_per_sec == 0 {
        bail!("tls_server_paced needs a rate");
    }
    start_tls_server(lab, bind, file_bytes, Some(bytes_per_sec))
}

fn start_tls_server(
    lab: &Lab,
    bind: SocketAddr,
    file_bytes: u64,
    pace: Option<u64>,
) -> Result<TlsServer> {
    if bind.port() == 0 {
        bail!("tls_server needs a fixed port");
    }
    // Paced: s_server on a free loopback port, the relay on `bind`.
    let accept = match pace {
        None => bind,
        Some(_) => {
            let h = spawn_in_netns(lab.server_ns(), "freeport", || {
                let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                Ok(l.local_addr()?)
            })?;
            h.join()
                .map_err(|_| anyhow!("free port thread panicked"))??
        }
    };
    let dir = TempDir::new("tls")?;
    let mut c = Command::new("openssl");
    c.args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
    ])
    .args(["-nodes", "-subj", "/CN=svctr-lab.test", "-days", "2"])
    .args(["-keyout", "key.pem", "-out", "cert.pem"])
    .current_dir(dir.path());
    run_checked(&mut c, None, CMD_TIMEOUT).context("making the TLS server's certificate")?;
    write_pattern_file(&dir.path().join("file"), file_bytes)?;
    let mut c = lab.command(lab.server_ns(), "openssl");
    c.arg("s_server")
        .arg(if accept.is_ipv6() { "-6" } else { "-4" })
        .args(["-accept", &accept.to_string()])
        .args(["-WWW", "-cert", "cert.pem", "-key", "key.pem", "-quiet"])
        .current_dir(dir.path());
    let mut proc = NsProcess::spawn(&mut c, false)?;
    wait_listening(
        lab.server_ns(),
        true,
        accept.is_ipv6(),
        accept.port(),
        SERVER_START,
        || match proc.try_status() {
            Some(st) => bail!("openssl s_server exited ({st}): {}", proc.stderr().trim()),
            None => Ok(()),
        },
    )
    .with_context(|| format!("starting `{}`", proc.what()))?;
    let relay = match pace {
        None => None,
        Some(rate) => Some(start_relay(lab, bind, accept, rate)?),
    };
    Ok(TlsServer {
        proc,
        dir,
        local: bind,
        file_bytes,
        relay,
    })
}

/// Stop-flag poll interval of the relay.
const TICK: Duration = Duration::from_millis(100);

/// A TCP relay in the server namespace from `bind` to `backend` that forwards the
/// client's bytes at once and the backend's at `rate` bytes/s.
fn start_relay(
    lab: &Lab,
    bind: SocketAddr,
    backend: SocketAddr,
    rate: u64,
) -> Result<(Arc<AtomicBool>, JoinHandle<Result<()>>)> {
    let stop = Arc::new(AtomicBool::new(false));
    lab.register_stop(&stop);
    let listener = {
        let h = spawn_in_netns(lab.server_ns(), "relaybind", move || {
            listen_socket(bind, 128).with_context(|| format!("relay listen on {bind}"))
        })?;
        h.join()
            .map_err(|_| anyhow!("relay bind thread panicked"))??
    };
    let stp = stop.clone();
    let h = spawn_in_netns(
        lab.server_ns(),
        &format!("tlsrelay{}", bind.port()),
        move || {
            let mut workers: Vec<JoinHandle<()>> = Vec::new();
            while !stp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let stp2 = stp.clone();
                        workers.push(std::thread::spawn(move || {
                            let _ = relay_connection(client, backend, rate, &stp2);
                        }));
                        workers.retain(|w| !w.is_finished());
                    }
                    Err(e) if is_timeout(&e) => std::thread::sleep(Duration::from_millis(10)),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            for w in workers {
                let _ = w.join();
            }
            Ok(())
        },
    )?;
    Ok((stop, h))
}

/// Copies `from` to `to` until EOF (then shuts `to` down for writing) or stop;
/// with `rate`, no faster than `rate` bytes/s.
fn copy_paced(mut from: TcpStream, mut to: TcpStream, rate: Option<u64>, stop: &AtomicBool) {
    let chunk = rate.map_or(16384, |r| (r / 50).clamp(512, 16384)) as usize;
    let mut buf = vec![0u8; chunk];
    let t0 = Instant::now();
    let mut sent = 0u64;
    let _ = from.set_read_timeout(Some(TICK));
    while !stop.load(Ordering::SeqCst) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(r) = rate {
                    let due = Duration::from_secs_f64(sent as f64 / r as f64);
                    while t0.elapsed() < due && !stop.load(Ordering::SeqCst) {
                        std::thread::sleep((due - t0.elapsed()).min(TICK));
                    }
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                sent += n as u64;
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn relay_connection(
    client: TcpStream,
    backend: SocketAddr,
    rate: u64,
    stop: &Arc<AtomicBool>,
) -> Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect_timeout(&backend, Duration::from_secs(5))?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (c2, s2, stp) = (client.try_clone()?, server.try_clone()?, stop.clone());
    let up = std::thread::spawn(move || copy_paced(c2, s2, None, &stp));
    copy_paced(server, client, Some(rate), stop);
    let _ = up.join();
    Ok(())
}

fn write_pattern_file(path: &std::path::Path, bytes: u64) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    let mut buf = vec![0u8; 65536];
    let mut off = 0u64;
    while off < bytes {
        let n = (bytes - off).min(buf.len() as u64) as usize;
        for (j, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern_byte(off + j as u64);
        }
        w.write_all(&buf[..n])?;
        off += n as u64;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// Result of a [`tls_download`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsReport {
    /// curl exited 0.
    pub success: bool,
    /// curl's exit code (`None` if killed by a signal). 0 = success; e.g. 7 = could
    /// not connect, 35 = TLS handshake failed, 56 = receive failure, 28 = timeout.
    pub exit_code: Option<i32>,
    /// Bytes of the body received (`%{size_download}`).
    pub bytes: u64,
    /// curl's error output (`-sS`: only errors).
    pub stderr: String,
    /// From the start of curl to its end.
    pub duration: Duration,
    /// The client's local port.
    pub local_port: u16,
}

/// A running curl download in the client namespace; dropping it kills curl.
pub struct TlsDownload {
    proc: NsProcess,
    ns: String,
    local_port: u16,
    t0: Instant,
}

impl TlsDownload {
    /// The client's local port.
    pub fn local_port(&self) -> u16 {
        self.local_port
    }

    /// Whether curl has ended.
    pub fn is_finished(&mut self) -> bool {
        self.proc.try_status().is_some()
    }

    /// Waits until the TCP connection from the local port is established (`ss`),
    /// which comes before the ClientHello; returns the local port.
    pub fn wait_established(&mut self, timeout: Duration) -> Result<u16> {
        wait_established(&self.ns, self.local_port, timeout, || {
            match self.proc.try_status() {
                Some(st) => bail!("curl ended ({st}): {}", self.proc.stderr().trim()),
                None => Ok(()),
            }
        })?;
        Ok(self.local_port)
    }

    /// Waits (up to 300 s) for curl to end.
    pub fn wait(self) -> Result<TlsReport> {
        self.wait_timeout(DOWNLOAD_WAIT)
    }

    /// Waits up to `timeout` for curl to end (error, and curl killed, after that).
    pub fn wait_timeout(self, timeout: Duration) -> Result<TlsReport> {
        let (t0, local_port) = (self.t0, self.local_port);
        let (st, out, err) = self.proc.wait(timeout)?;
        Ok(TlsReport {
            success: st.success(),
            exit_code: st.code(),
            bytes: out.trim().parse().unwrap_or(0),
            stderr: err,
            duration: t0.elapsed(),
            local_port,
        })
    }
}

/// Starts `curl -sSk --resolve host:port:addr --local-port P --limit-rate R -o
/// /dev/null https://host:port/file` in the client namespace: an HTTPS download of
/// [`tls_server`]'s file from `dst` with SNI `host` (no DNS query), from local port
/// `local_port` (not 0), at `bytes_per_sec` (0 = unlimited). See [`TlsDownload`].
pub fn tls_download(
    lab: &Lab,
    host: &str,
    dst: SocketAddr,
    local_port: u16,
    bytes_per_sec: u64,
) -> Result<TlsDownload> {
    check_host(host)?;
    if local_port == 0 {
        bail!("tls_download needs a fixed local port");
    }
    let addr = match dst {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let mut c = lab.command(lab.client_ns(), "curl");
    c.args(["-sS", "-k", "--resolve"])
        .arg(format!("{host}:{}:{addr}", dst.port()))
        .args(["--local-port", &local_port.to_string()])
        .args(["--connect-timeout", "10"]);
    if bytes_per_sec > 0 {
        c.args(["--limit-rate", &bytes_per_sec.to_string()]);
    }
    c.args(["-o", "/dev/null", "-w", "%{size_download}"])
        .arg(format!("https://{host}:{}{TLS_FILE_PATH}", dst.port()));
    let proc = NsProcess::spawn(&mut c, false)?;
    Ok(TlsDownload {
        proc,
        ns: lab.client_ns().to_string(),
        local_port,
        t0: Instant::now(),
    })
}

/// SNI host names go on command lines: letters, digits, '-', '.'.
fn check_host(host: &str) -> Result<()> {
    if host.is_empty()
        || host.len() > 253
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        || host.parse::<std::net::IpAddr>().is_ok()
    {
        bail!("invalid TLS host name {host:?} (a DNS name, so that it is sent as SNI)");
    }
    Ok(())
}

/// Waits until a TCP connection from `local_port` is established in `ns`.
fn wait_established(
    ns: &str,
    local_port: u16,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            ns,
            "ss",
            "-H",
            "-t",
            "-n",
            "state",
            "established",
        ])
        .arg(format!("sport = :{local_port}"));
        if !run_checked(&mut c, None, CMD_TIMEOUT)?.trim().is_empty() {
            return Ok(());
        }
        alive()?;
        if Instant::now() >= deadline {
            bail!("no established TCP connection from port {local_port} in {ns} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running `openssl s_client` in the client namespace, kept open by its stdin
/// pipe; dropping it kills it.
pub struct OpensslClient {
    proc: NsProcess,
    local_port: u16,
}

impl OpensslClient {
    /// The client's local port.
    pub fn local_port(&self) -> u16 {
        self.local_port
    }

    /// Waits until the TLS handshake is done (s_client prints "SSL handshake has
    /// read"); fails early if s_client ended.
    pub fn wait_handshake(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.proc.stdout().contains("SSL handshake has read") {
                return Ok(());
            }
            if let Some(st) = self.proc.try_status() {
                bail!(
                    "openssl s_client ended ({st}) before the handshake: {}",
                    self.proc.stderr().trim()
                );
            }
            if Instant::now() >= deadline {
                bail!("openssl s_client: no handshake after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends application data through the TLS connection (written to s_client's
    /// stdin).
    pub fn send(&mut self, data: &[u8]) -> Result<()> {
        self.proc.write_stdin(data)
    }

    /// Sends `GET <path> HTTP/1.0` (s_server -WWW then sends the file and closes).
    pub fn request(&mut self, path: &str) -> Result<()> {
        self.send(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
    }

    /// Waits until s_client's output contains `needle` (e.g. "HTTP/1.0 200 ok"
    /// after [`OpensslClient::request`]); fails if it ends first or after `timeout`.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.proc.stdout().contains(needle) {
                return Ok(());
            }
            if let Some(st) = self.proc.try_status() {
                // Output may still be in the pipe when it ends.
                std::thread::sleep(Duration::from_millis(50));
                if self.proc.stdout().contains(needle) {
                    return Ok(());
                }
                bail!("openssl s_client ended ({st}) without printing {needle:?}");
            }
            if Instant::now() >= deadline {
                bail!("openssl s_client: no {needle:?} after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What s_client printed so far (handshake summary, then the received data).
    pub fn output(&self) -> String {
        self.proc.stdout()
    }

    /// Closes stdin (s_client then closes the connection) and waits up to 10 s for
    /// it to end; returns its exit status and output.
    pub fn close(self) -> Result<(std::process::ExitStatus, String)> {
        let (st, out, _) = self.proc.wait(Duration::from_secs(10))?;
        Ok((st, out))
    }
}

/// Starts `openssl s_client -connect dst -servername host -bind <client>:local_port`
/// in the client namespace (a second real TLS client, with OpenSSL's own
/// ClientHello). It stays connected while its stdin is open: see
/// [`OpensslClient`]. Note that `s_server` serves one connection at a time.
pub fn openssl_client(
    lab: &Lab,
    host: &str,
    dst: SocketAddr,
    local_port: u16,
) -> Result<OpensslClient> {
    check_host(host)?;
    if local_port == 0 {
        bail!("openssl_client needs a fixed local port");
    }
    let local = SocketAddr::new(lab.client_addr_for(dst.ip()), local_port);
    let mut c = lab.command(lab.client_ns(), "openssl");
    c.args([
        "s_client",
        "-connect",
        &dst.to_string(),
        "-servername",
        host,
    ])
    .args(["-bind", &local.to_string()]);
    let proc = NsProcess::spawn(&mut c, true)?;
    Ok(OpensslClient { proc, local_port })
}

impl Lab {
    /// Makes TCP data from the client leave its eth0 as segments of at most
    /// `mss - 12` payload bytes (`mss` minus the timestamp option), e.g. a curl
    /// ClientHello of 517 bytes as 3 segments with `mss` 200.
    ///
    /// Two things are needed, both checked on 6.18 with a capture on the client's
    /// eth0:
    /// * GSO/TSO off on the client's eth0 (`ethtool -K eth0 tso off gso off gro
    ///   off`). Otherwise TCP hands the device one large GSO packet, which veth passes
    ///   on as it is, and a capture on the client sees the whole ClientHello as one
    ///   packet even with a small MSS.
    /// * A small MSS *advertised to the client*: `advmss` on the server's routes
    ///   (IPv4 default and IPv6 `::/0`), which sets the MSS option of the server's
    ///   SYN-ACK. `advmss` on the client's own routes only changes what the client
    ///   advertises, i.e. the size of the server's segments: with it alone the
    ///   ClientHello still left as one segment.
    ///
    /// Only new connections are affected; UDP (QUIC) is not. `mss` must be in
    /// 88..=1460. [`Lab::restore_client_segments`] undoes it.
    pub fn split_client_segments(&self, mss: u16) -> Result<()> {
        if !(88..=1460).contains(&mss) {
            bail!("mss {mss} out of 88..=1460");
        }
        self.set_client_offloads(false)?;
        self.set_server_advmss(Some(mss))
    }

    /// Undoes [`Lab::split_client_segments`]: offloads back on (`tso on gso on`;
    /// veth's GRO is off by default), no `advmss` on the server's routes.
    pub fn restore_client_segments(&self) -> Result<()> {
        self.set_client_offloads(true)?;
        self.set_server_advmss(None)
    }

    fn set_client_offloads(&self, on: bool) -> Result<()> {
        let v = if on { "on" } else { "off" };
        let mut c = self.command(self.client_ns(), "ethtool");
        c.args(["-K", self.client_iface(), "tso", v, "gso", v]);
        if !on {
            c.args(["gro", "off"]);
        }
        run_checked(&mut c, None, CMD_TIMEOUT)
            .context("changing offloads of the client's eth0 (is ethtool installed?)")?;
        Ok(())
    }

    fn set_server_advmss(&self, mss: Option<u16>) -> Result<()> {
        let gw4 = crate::host(crate::plan::SERVER_NET, 1).to_string();
        let gw6 = crate::host6(crate::plan::v6_net(crate::plan::SERVER_NET), 1).to_string();
        for (family, dst, gw) in [("-4", "default", gw4), ("-6", "::/0", gw6)] {
            let mut c = Command::new("ip");
            c.args(["-n", self.server_ns(), family, "route", "change", dst])
                .args(["via", &gw, "dev", self.server_iface()]);
            if let Some(m) = mss {
                c.args(["advmss", &m.to_string()]);
            }
            run_checked(&mut c, None, CMD_TIMEOUT)?;
        }
        Ok(())
    }
}
