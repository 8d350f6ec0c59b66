//! QUIC apps on a maintained implementation: quinn (0.11, rustls on the ring
//! provider; aws-lc-rs would need cmake) with a self-signed certificate from rcgen.
//!
//! Like the TCP and UDP apps, the server and the client are threads that `setns`
//! into their namespace; each runs a small current-thread tokio runtime, so its
//! UDP socket is created in (and stays in) that namespace. The client sends a real
//! ClientHello, in QUIC version 1 Initial packets, with SNI = the server name it is
//! given; it does not verify the certificate (like `curl -k`). It then opens one
//! bidirectional stream and asks for `bytes` bytes at `bytes_per_sec`: a 16-byte
//! request (two u64 BE). The server answers with that many bytes of the lab's
//! pattern ([`crate::pattern_byte`]), paced, so the connection lives for seconds
//! for a tracer, and the client checks every byte.
//!
//! Both sides turn off UDP segmentation offload
//! (`TransportConfig::enable_segmentation_offload(false)`): with it, quinn hands the
//! kernel several QUIC packets in one GSO send, which veth passes on unsplit, and a
//! capture would see one oversized UDP datagram instead of the packets the wire of a
//! real network carries.
//!
//! **QUIC version 2 (RFC 9369, 0x6b3343cf) is not available**: quinn-proto 0.11.19
//! (the newest) only knows version 1 and the drafts. `DEFAULT_SUPPORTED_VERSIONS`
//! lists 0x00000001 and 0xff00001d..=0xff000022, its rustls glue
//! (`interpret_version`) maps nothing else to a rustls `quic::Version`, and its
//! long-header packet types are the version 1 code points (v2 renumbers them). Its
//! issue "Support QUIC v2 (RFC 9369)" (quinn-rs/quinn#2740) is open. So there is no
//! version option: every connection is version 1.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::apps::{pattern_byte, Started, Worker};
use crate::util::spawn_in_netns;
use crate::Lab;

/// Stop-flag poll interval of the QUIC tasks.
const TICK: Duration = Duration::from_millis(100);
/// How long the server may take to bind, and the client to finish its handshake.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// A download with no progress for this long gives up.
const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// The ALPN both sides use.
const ALPN: &[u8] = b"svctr-lab";

/// QUIC version 1 (RFC 9000), the only version quinn speaks.
pub const QUIC_V1: u32 = 0x0000_0001;

fn transport_config(client: bool) -> Result<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.enable_segmentation_offload(false);
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_LIMIT).context("idle timeout")?,
    ));
    if client {
        t.keep_alive_interval(Some(Duration::from_secs(2)));
    }
    Ok(t)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A UDP socket of `addr`'s family bound to `addr` (IPv6: IPv6-only).
fn bound_udp(addr: SocketAddr) -> Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .context("UDP socket")?;
    if addr.is_ipv6() {
        s.set_only_v6(true).context("IPV6_V6ONLY")?;
    }
    s.set_reuse_address(true).context("SO_REUSEADDR")?;
    s.bind(&SockAddr::from(addr))
        .with_context(|| format!("bind {addr}"))?;
    Ok(s.into())
}

/// A QUIC server in the server namespace (see the module documentation).
pub struct QuicServer {
    local: SocketAddr,
    connections: Arc<AtomicU64>,
    bytes_sent: Arc<AtomicU64>,
    cert_der: Vec<u8>,
    worker: Worker<()>,
}

impl QuicServer {
    /// The bound address (with the actual port if bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
    /// Connections accepted (handshake completed) so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
    /// Stream bytes written so far (all connections).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::SeqCst)
    }
    /// The self-signed certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }
    /// Stops the server and joins its thread (also done on drop).
    pub fn stop(mut self) -> Result<()> {
        self.worker.stop()
    }
}

/// Starts a QUIC server on `bind` in the server namespace (either family; a
/// wildcard serves every address of its family, fan-out targets included; port 0
/// picks one), with a self-signed certificate for `names` (at least one). Every
/// connection may open bidirectional streams, each answered as described in the
/// module documentation.
pub fn quic_server(lab: &Lab, bind: SocketAddr, names: &[&str]) -> Result<QuicServer> {
    if names.is_empty() {
        bail!("quic_server needs at least one certificate name");
    }
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let cert = rcgen::generate_simple_self_signed(names).context("self-signed certificate")?;
    let cert_der: CertificateDer<'static> = cert.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)
        .context("server certificate")?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| anyhow!("QUIC server TLS config: {e}"))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server_config.transport_config(Arc::new(transport_config(false)?));

    let stop = Arc::new(AtomicBool::new(false));
    lab.register_stop(&stop);
    let started = Arc::new(Started::default());
    let connections = Arc::new(AtomicU64::new(0));
    let bytes_sent = Arc::new(AtomicU64::new(0));
    let (st, stp, conns, sent) = (
        started.clone(),
        stop.clone(),
        connections.clone(),
        bytes_sent.clone(),
    );
    let thread = spawn_in_netns(
        lab.server_ns(),
        &format!("quicsrv{}", bind.port()),
        move || {
            let r = run_server(bind, server_config, &st, &stp, &conns, &sent);
            if let Err(e) = &r {
                st.set(Err(format!("{e:#}")));
            }
            r
        },
    )?;
    let mut srv = QuicServer {
        local: bind,
        connections,
        bytes_sent,
        cert_der: cert_der.to_vec(),
        worker: Worker::new("quic server", stop, thread),
    };
    match started.wait(START_TIMEOUT, "quic server") {
        Ok(port) => {
            srv.local.set_port(port);
            Ok(srv)
        }
        Err(e) => Err(srv.worker.start_failed(e)),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

fn run_server(
    bind: SocketAddr,
    config: quinn::ServerConfig,
    started: &Started,
    stop: &Arc<AtomicBool>,
    connections: &Arc<AtomicU64>,
    sent: &Arc<AtomicU64>,
) -> Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let sock = bound_udp(bind)?;
        let port = sock.local_addr()?.port();
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(config),
            sock,
            Arc::new(quinn::TokioRuntime),
        )
        .context("QUIC endpoint")?;
        started.set(Ok(port));
        while !stop.load(Ordering::SeqCst) {
            match tokio::time::timeout(TICK, endpoint.accept()).await {
                Err(_) => continue,
                Ok(None) => break,
                Ok(Some(incoming)) => {
                    let (stop, conns, sent) = (stop.clone(), connections.clone(), sent.clone());
                    tokio::spawn(async move {
                        if let Ok(conn) = incoming.await {
                            conns.fetch_add(1, Ordering::SeqCst);
                            serve_connection(conn, &stop, &sent).await;
                        }
                    });
                }
            }
        }
        endpoint.close(0u32.into(), b"server stopped");
        let _ = tokio::time::timeout(Duration::from_millis(200), endpoint.wait_idle()).await;
        Ok(())
    })
}

async fn serve_connection(conn: quinn::Connection, stop: &Arc<AtomicBool>, sent: &Arc<AtomicU64>) {
    while !stop.load(Ordering::SeqCst) {
        match tokio::time::timeout(TICK, conn.accept_bi()).await {
            Err(_) => continue,
            Ok(Err(_)) => return, // closed by the client, or idle timeout
            Ok(Ok((send, recv))) => {
                let (stop, sent) = (stop.clone(), sent.clone());
                tokio::spawn(async move {
                    let _ = serve_stream(send, recv, &stop, &sent).await;
                });
            }
        }
    }
    conn.close(0u32.into(), b"server stopped");
}

/// Reads the 16-byte request (bytes, rate) and sends the paced pattern.
async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> Result<()> {
    let mut req = [0u8; 16];
    recv.read_exact(&mut req).await?;
    let total = u64::from_be_bytes(req[..8].try_into().expect("8 bytes"));
    let rate = u64::from_be_bytes(req[8..].try_into().expect("8 bytes"));
    let chunk = if rate == 0 {
        16384
    } else {
        (rate / 100).clamp(1024, 16384)
    } as usize;
    let mut buf = vec![0u8; chunk];
    let t0 = Instant::now();
    let mut off = 0u64;
    while off < total {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        if rate > 0 {
            let due = Duration::from_secs_f64(off as f64 / rate as f64);
            let el = t0.elapsed();
            if due > el {
                tokio::time::sleep((due - el).min(Duration::from_millis(50))).await;
                continue;
            }
        }
        let n = (chunk as u64).min(total - off) as usize;
        for (j, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern_byte(off + j as u64);
        }
        send.write_all(&buf[..n]).await?;
        off += n as u64;
        sent.fetch_add(n as u64, Ordering::SeqCst);
    }
    send.finish()?;
    // Wait (bounded) until the client has everything, so that the stream is not
    // reset when this task ends.
    let _ = tokio::time::timeout(IDLE_LIMIT, send.stopped()).await;
    Ok(())
}

/// Result of a [`quic_download`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicReport {
    /// Stream bytes received.
    pub bytes: u64,
    /// All requested bytes arrived, each equal to the pattern, nothing extra.
    pub intact: bool,
    /// Errors seen (connection or stream errors, corruption, stalls).
    pub errors: Vec<String>,
    /// From the start of the handshake to the end of the transfer.
    pub duration: Duration,
    /// The client's local UDP port.
    pub local_port: u16,
    /// The QUIC version used (always [`QUIC_V1`]).
    pub version: u32,
}

/// A running QUIC download in the client namespace; dropping it stops it.
pub struct QuicDownload {
    started: Arc<Started>,
    received: Arc<AtomicU64>,
    worker: Worker<QuicReport>,
}

impl QuicDownload {
    /// Blocks until the handshake is complete; returns the local port.
    pub fn wait_established(&self, timeout: Duration) -> Result<u16> {
        self.started.wait(timeout, "quic download handshake")
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
    pub fn wait(mut self) -> Result<QuicReport> {
        self.worker.wait()
    }
}

/// Starts a QUIC download in the client namespace from `local_port` (0 =
/// ephemeral) to `dst` (a [`quic_server`]), SNI `server_name`: `bytes` bytes paced
/// at `bytes_per_sec` (0 = unpaced). See the module documentation.
pub fn quic_download(
    lab: &Lab,
    server_name: &str,
    dst: SocketAddr,
    local_port: u16,
    bytes: u64,
    bytes_per_sec: u64,
) -> Result<QuicDownload> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| anyhow!("QUIC client TLS config: {e}"))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
    client_config.transport_config(Arc::new(transport_config(true)?));

    let stop = Arc::new(AtomicBool::new(false));
    lab.register_stop(&stop);
    let started = Arc::new(Started::default());
    let received = Arc::new(AtomicU64::new(0));
    let local = SocketAddr::new(lab.client_addr_for(dst.ip()), local_port);
    let name = server_name.to_string();
    let (st, stp, rcv) = (started.clone(), stop.clone(), received.clone());
    let thread = spawn_in_netns(lab.client_ns(), "quicdl", move || {
        let r = run_download(
            local,
            dst,
            &name,
            client_config,
            bytes,
            bytes_per_sec,
            &st,
            &stp,
            &rcv,
        );
        if let Err(e) = &r {
            st.set(Err(format!("{e:#}")));
        }
        r
    })?;
    Ok(QuicDownload {
        started,
        received,
        worker: Worker::new("quic download", stop, thread),
    })
}

#[allow(clippy::too_many_arguments)]
fn run_download(
    local: SocketAddr,
    dst: SocketAddr,
    server_name: &str,
    config: quinn::ClientConfig,
    bytes: u64,
    rate: u64,
    started: &Started,
    stop: &AtomicBool,
    received: &AtomicU64,
) -> Result<QuicReport> {
    let rt = runtime()?;
    rt.block_on(async {
        let sock = bound_udp(local)?;
        let port = sock.local_addr()?.port();
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            sock,
            Arc::new(quinn::TokioRuntime),
        )
        .context("QUIC endpoint")?;
        let t0 = Instant::now();
        let connecting = endpoint
            .connect_with(config, dst, server_name)
            .with_context(|| format!("QUIC connect to {dst}"))?;
        let conn = tokio::time::timeout(START_TIMEOUT, connecting)
            .await
            .map_err(|_| anyhow!("QUIC handshake with {dst}: no answer after {START_TIMEOUT:?}"))?
            .with_context(|| format!("QUIC handshake with {dst}"))?;
        started.set(Ok(port));
        let mut errors = Vec::new();
        let mut got = 0u64;
        let mut intact = true;
        match transfer(
            &conn,
            bytes,
            rate,
            stop,
            received,
            &mut got,
            &mut intact,
            &mut errors,
        )
        .await
        {
            Ok(()) => {}
            Err(e) => errors.push(format!("{e:#}")),
        }
        if got < bytes {
            intact = false;
            errors.push(format!("transfer ended after {got} of {bytes} bytes"));
        }
        let duration = t0.elapsed();
        conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
        Ok(QuicReport {
            bytes: got,
            intact,
            errors,
            duration,
            local_port: port,
            version: QUIC_V1,
        })
    })
}

#[allow(clippy::too_many_arguments)]
async fn transfer(
    conn: &quinn::Connection,
    bytes: u64,
    rate: u64,
    stop: &AtomicBool,
    received: &AtomicU64,
    got: &mut u64,
    intact: &mut bool,
    errors: &mut Vec<String>,
) -> Result<()> {
    let (mut send, mut recv) = conn.open_bi().await.context("open stream")?;
    let mut req = [0u8; 16];
    req[..8].copy_from_slice(&bytes.to_be_bytes());
    req[8..].copy_from_slice(&rate.to_be_bytes());
    send.write_all(&req).await.context("send request")?;
    send.finish().context("finish request")?;
    let mut buf = vec![0u8; 65536];
    let mut last_progress = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            errors.push(format!("stopped after {got} of {bytes} bytes"));
            *intact = false;
            return Ok(());
        }
        match tokio::time::timeout(TICK, recv.read(&mut buf)).await {
            Err(_) => {
                if last_progress.elapsed() > IDLE_LIMIT {
                    bail!("stalled: no data for {IDLE_LIMIT:?} after {got} bytes");
                }
            }
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(n))) => {
                if *intact {
                    for (j, &b) in buf[..n].iter().enumerate() {
                        let off = *got + j as u64;
                        if off >= bytes || b != pattern_byte(off) {
                            errors.push(format!("unexpected byte at offset {off}"));
                            *intact = false;
                            break;
                        }
                    }
                }
                *got += n as u64;
                received.store(*got, Ordering::SeqCst);
                last_progress = Instant::now();
            }
            Ok(Err(e)) => bail!("read: {e}"),
        }
    }
}

/// Accepts any server certificate (the lab's are self-signed), but still checks the
/// handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
