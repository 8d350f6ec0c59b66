//! Reverse traceroute (draft-heiwin-intarea-reverse-traceroute, as the deployed reference
//! implementation HSAnet/reverse-traceroute speaks it): a client asks a server, with an ICMP
//! echo request of code 1, to send one TTL-limited probe back toward the client and to report
//! who answered it. The path back, hop by hop.
//!
//! * [`ReverseClient`]: the client's engine, one path back from a server (Paris style: one
//!   flow value), with the presence check, many requests in flight and the reference's
//!   identifier management.
//! * [`ReverseServer`]: the server's engine (requests in; probes, responses and a log out),
//!   with what the reference lacks: rate limits per source and overall, a source allowlist,
//!   the indirect-target extension off unless allowlisted, and an option to answer only
//!   requests padded to at least what is sent back (no amplification).
//!
//! The wire format is `svctr_wire::revtr`.

mod client;
mod ident;
mod limit;
mod server;
mod two_way;

pub use client::{
    default_pad, state_text, ClientConfig, ReverseClient, ReverseEvent, ReverseFlow, ReverseResult,
    ReverseStop,
};
pub(crate) use ident::IdentPool;
pub use ipnet::IpNet;
pub use limit::{parse_allowlist, AllowlistError, Rate};
pub use server::{
    RefusedCounts, ReverseServer, ServerConfig, ServerEvent, ServerStats, SessionEvent,
};
pub use svctr_wire::revtr::default_flow;
pub use two_way::{ForwardPath, TwoWayMultipath, TwoWayResult};
