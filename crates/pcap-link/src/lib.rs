//! How service-traceroute links libpcap. This crate has no code: its build script (see
//! `build.rs`) puts a static libpcap without D-Bus first on the linker's path of every crate
//! that depends on it, where the system has one. The crates that use the `pcap` crate
//! (`svctr-io`, `svctr-lab`) depend on this one for that.

/// Whether libpcap is linked statically (with the D-Bus stand-ins of `build/dbus_stub.c`),
/// rather than as the system's shared library.
pub const STATIC: bool = cfg!(svctr_static_pcap);
