//! The libpcap capture: one handle on the interface, a kernel-side BPF filter for the selected
//! flows and the ICMP errors that quote them, immediate mode (a packet is delivered when it
//! arrives, not when a ring block fills, so timers and RTTs are not delayed) and nanosecond
//! kernel timestamps (the RTT is the difference of the kernel timestamps of the probe's own
//! capture and of its reply).

use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, SystemTime};

use svctr_core::FlowSelector;
#[cfg(test)]
use svctr_core::Protocol;

use crate::Error;

/// Bytes captured per packet: enough for IP and TCP headers with options (120), and for an
/// ICMPv6 error with an RFC 4884 extension (40 + 8 + the 128-byte original datagram field +
/// a 4-byte extension header + an MPLS object of a few labels, about 200). Kept small on
/// purpose: in immediate mode libpcap uses a ring of fixed-size frames sized from the snap
/// length, so a smaller snap length means more packets fit before the kernel drops any.
pub const SNAPLEN: i32 = 384;

/// The BPF filter for a selection: the flow's packets in both directions, and ICMP errors
/// (Destination Unreachable 3, Time Exceeded 11, Parameter Problem 12) whose quoted protocol
/// (ICMP byte 8 + 9) and quoted destination (ICMP bytes 8 + 16..20) are the flow's.
pub fn bpf_filter(sel: &FlowSelector) -> String {
    let mut flow = vec![sel.protocol.as_str().to_string()];
    let mut quote = vec![format!("icmp[17] == {}", sel.protocol.number())];
    if let Some(ip) = sel.remote_ip {
        flow.push(format!("host {ip}"));
        if let IpAddr::V4(v4) = ip {
            quote.push(format!("icmp[24:4] == 0x{:08x}", u32::from(v4)));
        }
    }
    if let Some(p) = sel.remote_port {
        flow.push(format!("port {p}"));
        quote.push(format!("icmp[30:2] == {p}"));
    }
    if let Some(p) = sel.local_port {
        flow.push(format!("port {p}"));
    }
    format!(
        "({}) or (icmp and (icmp[0] == 3 or icmp[0] == 11 or icmp[0] == 12) and {})",
        flow.join(" and "),
        quote.join(" and ")
    )
}

pub(crate) struct Capture {
    cap: pcap::Capture<pcap::Active>,
    linktype: i32,
}

fn privilege_or(e: pcap::Error, iface: &str) -> Error {
    let text = e.to_string();
    if text.contains("ermission") || text.contains("not permitted") {
        Error::Privilege { what: format!("capturing on {iface}") }
    } else if text.contains("No such device") || text.contains("doesn't exist") {
        Error::UnknownInterface(iface.to_string())
    } else {
        Error::Capture { iface: iface.to_string(), source: e }
    }
}

impl Capture {
    pub(crate) fn open(iface: &str, filter: &str) -> Result<Self, Error> {
        Self::open_with_buffer(iface, filter, 4 << 20)
    }

    /// Opens with a kernel ring of `buffer` bytes (bursts of replies from many targets need
    /// more room than one flow's).
    pub(crate) fn open_with_buffer(iface: &str, filter: &str, buffer: i32) -> Result<Self, Error> {
        let inactive = pcap::Capture::from_device(iface).map_err(|e| privilege_or(e, iface))?;
        let cap = inactive
            .promisc(false)
            .snaplen(SNAPLEN)
            .immediate_mode(true)
            .timeout(100)
            .buffer_size(buffer)
            .precision(pcap::Precision::Nano)
            .open()
            .map_err(|e| privilege_or(e, iface))?;
        let mut cap = cap.setnonblock().map_err(|e| Error::Capture { iface: iface.to_string(), source: e })?;
        cap.filter(filter, true).map_err(|e| Error::Filter { filter: filter.to_string(), source: e })?;
        let linktype = cap.get_datalink().0;
        Ok(Self { cap, linktype })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.cap.as_fd()
    }

    /// Reads every packet available now; calls `f(timestamp, ip_packet)` for each IP packet.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(SystemTime, &[u8])) -> Result<usize, pcap::Error> {
        let mut n = 0;
        loop {
            match self.cap.next_packet() {
                Ok(p) => {
                    n += 1;
                    // Nanosecond precision: tv_usec holds nanoseconds.
                    let ts = SystemTime::UNIX_EPOCH
                        + Duration::new(p.header.ts.tv_sec.max(0) as u64, p.header.ts.tv_usec.clamp(0, 999_999_999) as u32);
                    if let Some(ip) = svctr_wire::link::ip_payload(self.linktype, p.data) {
                        f(ts, ip);
                    }
                }
                Err(pcap::Error::TimeoutExpired) => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    }

    /// Packets the kernel dropped (buffer full) or the interface dropped.
    pub(crate) fn drops(&mut self) -> u32 {
        self.cap.stats().map(|s| s.dropped + s.if_dropped).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_text() {
        let sel = FlowSelector {
            protocol: Protocol::Tcp,
            remote_ip: Some("198.18.9.2".parse().unwrap()),
            remote_port: Some(8080),
            local_port: None,
        };
        assert_eq!(
            bpf_filter(&sel),
            "(tcp and host 198.18.9.2 and port 8080) or (icmp and (icmp[0] == 3 or icmp[0] == 11 or icmp[0] == 12) and icmp[17] == 6 and icmp[24:4] == 0xc6120902 and icmp[30:2] == 8080)"
        );
    }
}
