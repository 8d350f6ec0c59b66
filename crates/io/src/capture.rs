//! The libpcap capture: a handle on the interface with a kernel-side BPF filter (see the
//! filter module for what the driver's two captures take) and nanosecond kernel timestamps
//! (the RTT is the difference of the kernel timestamps of the probe's own capture and of its
//! reply, so it does not depend on when the packets reach user space).
//!
//! Two delivery modes ([`Delivery`]): *immediate* (every packet wakes the reader; the
//! interactive traceroute uses it) and *batched* (libpcap's TPACKET_V3 ring hands over a
//! block of packets when it is full or a short timeout has passed: one wake-up for many
//! packets, which is what keeps the flow tracer cheap under a bulk transfer; the price is at
//! most that timeout of delay before a reply is seen, not in the measured RTT).

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, SystemTime};

use crate::Error;

/// Bytes captured per packet: enough for IP and TCP headers with options (120), and for an
/// ICMPv6 error with an RFC 4884 extension (40 + 8 + the 128-byte original datagram field +
/// a 4-byte extension header + an MPLS object of a few labels, about 200). Kept small on
/// purpose: in immediate mode libpcap uses a ring of fixed-size frames sized from the snap
/// length, so a smaller snap length means more packets fit before the kernel drops any.
pub const SNAPLEN: i32 = 384;

/// Bytes captured per packet by the detection capture: a whole DNS response (EDNS answers go
/// up to 4096 bytes), a ClientHello sent as one GSO packet (up to a 16 KB TLS record), a QUIC
/// Initial. Its filter passes few packets, so the large frames cost little.
pub const DETECTION_SNAPLEN: i32 = 18 * 1024;

/// When captured packets reach the reader (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Each packet as it arrives.
    Immediate,
    /// In blocks, each handed over when full or `timeout_ms` after its first packet.
    Batched { timeout_ms: i32 },
}

pub(crate) struct Capture {
    cap: pcap::Capture<pcap::Active>,
    linktype: i32,
}

fn privilege_or(e: pcap::Error, iface: &str) -> Error {
    let text = e.to_string();
    if text.contains("ermission") || text.contains("not permitted") {
        Error::Privilege {
            what: format!("capturing on {iface}"),
        }
    } else if text.contains("No such device") || text.contains("doesn't exist") {
        Error::UnknownInterface(iface.to_string())
    } else {
        Error::Capture {
            iface: iface.to_string(),
            source: e,
        }
    }
}

impl Capture {
    /// Opens with a kernel ring of `buffer` bytes (bursts of replies from many targets need
    /// more room than one flow's), the standard snap length, immediate delivery.
    pub(crate) fn open_with_buffer(iface: &str, filter: &str, buffer: i32) -> Result<Self, Error> {
        Self::open_with(iface, filter, SNAPLEN, buffer, Delivery::Immediate)
    }

    /// Opens with snap length `snaplen`, a kernel ring of `buffer` bytes, and `delivery`.
    pub(crate) fn open_with(
        iface: &str,
        filter: &str,
        snaplen: i32,
        buffer: i32,
        delivery: Delivery,
    ) -> Result<Self, Error> {
        let inactive = pcap::Capture::from_device(iface).map_err(|e| privilege_or(e, iface))?;
        let (immediate, timeout_ms) = match delivery {
            Delivery::Immediate => (true, 100),
            Delivery::Batched { timeout_ms } => (false, timeout_ms),
        };
        let cap = inactive
            .promisc(false)
            .snaplen(snaplen)
            .immediate_mode(immediate)
            .timeout(timeout_ms)
            .buffer_size(buffer)
            .precision(pcap::Precision::Nano)
            .open()
            .map_err(|e| privilege_or(e, iface))?;
        let mut cap = cap.setnonblock().map_err(|e| Error::Capture {
            iface: iface.to_string(),
            source: e,
        })?;
        cap.filter(filter, true).map_err(|e| Error::Filter {
            filter: filter.to_string(),
            source: e,
        })?;
        let linktype = cap.get_datalink().0;
        Ok(Self { cap, linktype })
    }

    /// Replaces the kernel filter.
    pub(crate) fn set_filter(&mut self, filter: &str) -> Result<(), Error> {
        self.cap.filter(filter, true).map_err(|e| Error::Filter {
            filter: filter.to_string(),
            source: e,
        })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.cap.as_fd()
    }

    /// Reads the packets available now, at most `max` (so that a flood cannot keep the caller
    /// from its timers); calls `f(timestamp, ip_packet)` for each IP packet.
    pub(crate) fn drain(
        &mut self,
        max: usize,
        mut f: impl FnMut(SystemTime, &[u8]),
    ) -> Result<usize, pcap::Error> {
        let mut n = 0;
        while n < max {
            match self.cap.next_packet() {
                Ok(p) => {
                    n += 1;
                    // Nanosecond precision: tv_usec holds nanoseconds.
                    let ts = SystemTime::UNIX_EPOCH
                        + Duration::new(
                            p.header.ts.tv_sec.max(0) as u64,
                            p.header.ts.tv_usec.clamp(0, 999_999_999) as u32,
                        );
                    if let Some(ip) = svctr_wire::link::ip_payload(self.linktype, p.data) {
                        f(ts, ip);
                    }
                }
                Err(pcap::Error::TimeoutExpired) => return Ok(n),
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Packets the kernel dropped (buffer full) or the interface dropped.
    pub(crate) fn drops(&mut self) -> u32 {
        self.cap
            .stats()
            .map(|s| s.dropped + s.if_dropped)
            .unwrap_or(0)
    }

    /// Packets the filter passed to this capture so far (libpcap's `ps_recv`).
    pub(crate) fn received(&mut self) -> u32 {
        self.cap.stats().map(|s| s.received).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    /// The build links libpcap statically with D-Bus stand-ins where it can (build.rs): the
    /// binaries then load no D-Bus, systemd or crypto library, and a D-Bus "device" fails
    /// with the stand-ins' message instead of crashing. Needs no privilege: libpcap asks
    /// D-Bus for the bus before anything else.
    #[test]
    fn static_libpcap_has_no_dbus() {
        if !svctr_pcap_link::STATIC {
            // Where build.rs fell back (its warning says why), but not on CI's Debian.
            assert!(
                std::env::var_os("CI").is_none()
                    || std::env::var_os("SVCTR_PCAP_DYNAMIC").is_some(),
                "libpcap is linked dynamically on CI (see build.rs's warning)"
            );
            return;
        }
        let e = pcap::Capture::from_device("dbus-system")
            .and_then(|c| c.open())
            .err()
            .expect("a D-Bus capture cannot open");
        assert!(
            e.to_string()
                .contains("D-Bus capture is not built into service-traceroute"),
            "{e}"
        );
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for lib in ["libpcap.so", "libdbus-1", "libsystemd"] {
            assert!(!maps.contains(lib), "{lib} is loaded");
        }
    }
}
