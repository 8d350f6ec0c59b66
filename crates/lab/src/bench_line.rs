//! Benchmark of the delay line itself: requested against measured one-way delay, at the
//! packet rates the other benchmarks use, so that every figure measured through a line says
//! how far to trust it.
//!
//! For each requested delay (0: no line, the lab's own one-way time, subtracted from the
//! others) and each rate, a sender in the client namespace sends 64-byte UDP datagrams to
//! the server for a few seconds, paced evenly, each stamped with the wall clock just before
//! it is sent; the receiver in the server namespace reads the kernel's receive timestamp
//! (`SO_TIMESTAMPNS`). The line (on r1-r2) also reports how late it let frames go.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context, Result};
use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use svctr_lab::{spawn_in_netns, Lab, LabConfig, LineConfig, LineStats};

/// What to measure.
pub(crate) struct LineArgs {
    /// One-way delays to request (0 is measured anyway, as the baseline).
    pub delays_ms: Vec<u64>,
    /// Datagrams per second.
    pub rates: Vec<u64>,
    /// Seconds per setting.
    pub secs: u64,
}

/// One setting's result: one-way delays in µs (median, p99, max), datagrams sent and
/// received, the line's own report.
struct Row {
    delay_ms: u64,
    rate: u64,
    median: u64,
    p99: u64,
    max: u64,
    sent: u64,
    got: u64,
    line: Option<LineStats>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Sends `rate` datagrams a second for `secs` from the client to `dst`; receives them in the
/// server namespace; returns the sorted one-way delays (µs) and the count sent.
fn measure(lab: &Lab, dst: SocketAddr, rate: u64, secs: u64) -> Result<(Vec<u64>, u64)> {
    let ready = std::sync::Arc::new(AtomicBool::new(false));
    let r2 = std::sync::Arc::clone(&ready);
    let rx = spawn_in_netns(lab.server_ns(), "bench-line-rx", move || {
        let s = UdpSocket::bind(dst).context("bind")?;
        setsockopt(&s, sockopt::ReceiveTimestampns, &true).context("SO_TIMESTAMPNS")?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        r2.store(true, Ordering::SeqCst);
        let mut delays = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let msg =
                match recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()) {
                    Ok(m) => m,
                    Err(nix::errno::Errno::EAGAIN) => break,
                    Err(e) => return Err(anyhow!("recvmsg: {e}")),
                };
            let mut at = None;
            for c in msg.cmsgs().context("cmsgs")? {
                if let ControlMessageOwned::ScmTimestampns(ts) = c {
                    at = Some(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64);
                }
            }
            let sent = u64::from_be_bytes(buf[..8].try_into()?);
            if let Some(at) = at {
                delays.push(at.saturating_sub(sent) / 1000);
            }
        }
        Ok(delays)
    })?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ready.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let total = rate * secs;
    let tx = spawn_in_netns(lab.client_ns(), "bench-line-tx", move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        let start = Instant::now();
        let period = Duration::from_secs(1).as_nanos() as u64 / rate.max(1);
        let mut sent = 0u64;
        for i in 0..total {
            let due = Duration::from_nanos(i * period);
            if let Some(w) = due.checked_sub(start.elapsed()) {
                if w > Duration::from_micros(50) {
                    std::thread::sleep(w);
                }
            }
            let mut m = [0u8; 64];
            m[..8].copy_from_slice(&now_ns().to_be_bytes());
            if s.send_to(&m, dst).is_ok() {
                sent += 1;
            }
        }
        Ok(sent)
    })?;
    let sent = tx.join().map_err(|_| anyhow!("sender panicked"))??;
    let mut delays = rx.join().map_err(|_| anyhow!("receiver panicked"))??;
    delays.sort_unstable();
    Ok((delays, sent))
}

fn quantile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

pub(crate) fn run(args: &LineArgs, command_line: &str, stop: &AtomicBool) -> Result<String> {
    let mut delays = vec![0];
    delays.extend(args.delays_ms.iter().copied().filter(|&d| d > 0));
    let mut rows = Vec::new();
    for &d in &delays {
        let lines = if d == 0 {
            Vec::new()
        } else {
            vec![LineConfig::new("r1", "r2", Duration::from_millis(d))]
        };
        let lab = Lab::build(LabConfig {
            lines,
            ..LabConfig::default()
        })?;
        let dst = SocketAddr::new(lab.server_addr().into(), 9200);
        // Neighbours resolved first.
        let _ = lab.ping(lab.client_ns(), dst.ip(), Duration::from_secs(2));
        for &rate in &args.rates {
            if stop.load(Ordering::SeqCst) {
                anyhow::bail!("interrupted");
            }
            let before = lab.lines().first().map(|l| l.stats().0);
            let (v, sent) = measure(&lab, dst, rate, args.secs)?;
            let line = lab.lines().first().map(|l| {
                let mut s = l.stats().0;
                if let Some(b) = &before {
                    s.forwarded -= b.forwarded;
                }
                s
            });
            eprintln!(
                "bench-line: {d} ms at {rate}/s: median {} µs, p99 {}, max {}; {} of {sent}",
                quantile(&v, 0.5),
                quantile(&v, 0.99),
                v.last().copied().unwrap_or(0),
                v.len()
            );
            rows.push(Row {
                delay_ms: d,
                rate,
                median: quantile(&v, 0.5),
                p99: quantile(&v, 0.99),
                max: v.last().copied().unwrap_or(0),
                sent,
                got: v.len() as u64,
                line,
            });
        }
    }
    Ok(report(&rows, args, command_line))
}

fn report(rows: &[Row], args: &LineArgs, command_line: &str) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Command: `{command_line}` ({} s per setting, 64-byte UDP datagrams client -> server, \
         a line on r1-r2; one-way delay = kernel receive timestamp - wall clock just before \
         the send)\n\n",
        args.secs
    ));
    out.push_str(
        "| requested one-way | rate (/s) | measured median | minus the lab's own | p99 | max | \
         received | line: late median / p99 / max (µs) |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let base = rows
            .iter()
            .find(|b| b.delay_ms == 0 && b.rate == r.rate)
            .map_or(0, |b| b.median);
        let line = r.line.as_ref().map_or("no line".to_string(), |s| {
            format!("{} / {} / {}", s.late_us.0, s.late_us.1, s.late_us.2)
        });
        out.push_str(&format!(
            "| {} ms | {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {} of {} | {} |\n",
            r.delay_ms,
            r.rate,
            r.median as f64 / 1000.0,
            r.median.saturating_sub(base) as f64 / 1000.0,
            r.p99 as f64 / 1000.0,
            r.max as f64 / 1000.0,
            r.got,
            r.sent,
            line
        ));
    }
    out
}
