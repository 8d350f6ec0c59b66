//! Links libpcap statically where that sheds its D-Bus dependency (see build/dbus_stub.c),
//! for every crate that depends on this one.
//!
//! A dynamically linked Debian libpcap brings ten shared objects with it through libdbus-1
//! (libsystemd, libgcrypt, compression libraries), about 1 ms of every process start, most of
//! a one-destination `trace`'s fixed cost beyond traceroute(8)'s. So, when the system has a
//! static libpcap whose only dependency beyond libc is D-Bus (pkg-config's static view), the
//! build copies it into OUT_DIR with our D-Bus stand-ins added as one more member, and puts
//! that directory first on the linker's path: the `-lpcap` of the `pcap` crate then finds the
//! archive and no `.so`. Everything else falls back to the shared library, as does
//! `SVCTR_PCAP_DYNAMIC=1`.

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build/dbus_stub.c");
    println!("cargo:rerun-if-env-changed=SVCTR_PCAP_DYNAMIC");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rustc-check-cfg=cfg(svctr_static_pcap)");
    if env::var_os("SVCTR_PCAP_DYNAMIC").is_some_and(|v| v != "0") {
        return;
    }
    match static_archive() {
        Ok(archive) => {
            let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
            match build_archive(&archive, &out) {
                Ok(dir) => {
                    println!("cargo:rustc-link-search=native={}", dir.display());
                    println!("cargo:rustc-cfg=svctr_static_pcap");
                    println!("cargo:rerun-if-changed={}", archive.display());
                }
                Err(e) => dynamic(&e),
            }
        }
        Err(why) => dynamic(&why),
    }
}

/// The system's `libpcap.a`, if linking it needs nothing but D-Bus besides libc.
fn static_archive() -> Result<PathBuf, String> {
    let probe = |name: &str| {
        pkg_config::Config::new()
            .statik(true)
            .cargo_metadata(false)
            .env_metadata(false)
            .probe(name)
            .map_err(|e| format!("pkg-config {name}: {e}"))
    };
    let pcap = probe("libpcap")?;
    let mut extra: Vec<String> = pcap.libs.iter().filter(|l| *l != "pcap").cloned().collect();
    if extra.iter().any(|l| l == "dbus-1") {
        let dbus = probe("dbus-1")?;
        extra.retain(|l| !dbus.libs.contains(l));
    }
    if !extra.is_empty() {
        return Err(format!("the static libpcap also needs {extra:?}"));
    }
    let libdir = pkg_config::get_variable("libpcap", "libdir").map_err(|e| e.to_string())?;
    pcap.link_paths
        .iter()
        .map(PathBuf::clone)
        .chain(Some(PathBuf::from(libdir)))
        .map(|d| d.join("libpcap.a"))
        .find(|a| a.is_file())
        .ok_or_else(|| "no libpcap.a (Debian: libpcap0.8-dev)".to_string())
}

/// OUT_DIR/static-pcap/libpcap.a: the system's archive plus the D-Bus stand-ins. One archive,
/// because the linker rescans an archive for its own members' references but never goes
/// back to an earlier one.
fn build_archive(system: &Path, out: &Path) -> Result<PathBuf, String> {
    let mut build = cc::Build::new();
    build
        .file("build/dbus_stub.c")
        .warnings(true)
        .cargo_metadata(false);
    let objects = build
        .try_compile_intermediates()
        .map_err(|e| format!("compiling the D-Bus stand-ins: {e}"))?;
    let dir = out.join("static-pcap");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let archive = dir.join("libpcap.a");
    std::fs::copy(system, &archive).map_err(|e| format!("{}: {e}", system.display()))?;
    let mut ar = build.get_archiver();
    let status = ar
        .arg("qs")
        .arg(&archive)
        .args(&objects)
        .status()
        .map_err(|e| format!("ar: {e}"))?;
    if !status.success() {
        return Err(format!("ar failed: {status}"));
    }
    Ok(dir)
}

fn dynamic(why: &str) {
    println!("cargo:warning=libpcap linked dynamically: {why}");
}
