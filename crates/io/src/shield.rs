//! The UDP ICMP shield: an nftables rule in front of the local stack that drops the ICMP errors
//! quoting our empty UDP probes, after libpcap has seen them (AF_PACKET taps a packet in
//! `__netif_receive_skb` before the IP layer and its netfilter hooks).
//!
//! Why: Linux `__udp4_lib_err()` hands an ICMP error quoting a connected UDP socket's 5-tuple to
//! that socket; with `IP_RECVERR` the application's next `recv()` fails (`EHOSTUNREACH` for a
//! Time Exceeded), and a Destination Unreachable is a hard error even without it. A UDP probe
//! has no field the stack checks (unlike TCP's sequence number, see the engine's probe module),
//! so the errors must not reach the stack. The rule matches the quoted 5-tuple and the quoted
//! IPv4 total length of 28 (an empty datagram: our probe shape), so errors about the
//! application's own datagrams still get through.
//!
//! The table is named after the process (`svctr_<pid>`) and deleted on exit; tables left by a
//! process that no longer exists are removed at start.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use svctr_core::FlowKey;

use crate::Error;

pub(crate) struct Shield {
    table: String,
    installed: bool,
}

fn nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .arg("-f")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("waiting for nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or("nft failed").to_string())
    }
}

/// Removes `svctr_<pid>` tables whose process is gone.
fn remove_stale() {
    let Ok(out) = Command::new("nft").args(["list", "tables", "ip"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.strip_prefix("table ip ") else { continue };
        let Some(pid) = name.strip_prefix("svctr_") else { continue };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = nft(&format!("delete table ip {name}\n"));
        }
    }
}

impl Shield {
    pub(crate) fn new() -> Self {
        Self { table: format!("svctr_{}", std::process::id()), installed: false }
    }

    /// Drops ICMP errors quoting an empty datagram of this UDP flow, from now until exit.
    pub(crate) fn protect(&mut self, flow: &FlowKey) -> Result<(), Error> {
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (flow.local.ip(), flow.remote.ip()) else {
            return Err(Error::Unsupported("the UDP shield supports IPv4 flows only".into()));
        };
        let mut script = String::new();
        if !self.installed {
            remove_stale();
            // Priority -300: before conntrack (-200) and any filter, so nothing else sees them.
            script.push_str(&format!(
                "table ip {t} {{\n chain input {{ type filter hook input priority -300; policy accept; }}\n}}\n",
                t = self.table
            ));
        }
        // Offsets from the start of the ICMP header (@th): type 0; quoted IPv4 header at 8:
        // total length 8+2, protocol 8+9, source 8+12, destination 8+16; quoted ports at 28, 30
        // (our probes carry no IP options, and a quote carries the header as sent).
        script.push_str(&format!(
            "add rule ip {t} input ip protocol icmp icmp type {{ destination-unreachable, time-exceeded, parameter-problem }} \
             @th,80,16 28 @th,136,8 17 @th,160,32 0x{s:08x} @th,192,32 0x{d:08x} @th,224,16 {sp} @th,240,16 {dp} counter drop\n",
            t = self.table,
            s = u32::from(src),
            d = u32::from(dst),
            sp = flow.local.port(),
            dp = flow.remote.port(),
        ));
        nft(&script).map_err(Error::Shield)?;
        self.installed = true;
        Ok(())
    }
}

impl Drop for Shield {
    fn drop(&mut self) {
        if self.installed {
            let _ = nft(&format!("delete table ip {}\n", self.table));
        }
    }
}
