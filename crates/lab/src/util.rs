//! Process and namespace helpers shared by the lab, the applications and the binary.

use std::fs::File;
use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Directory where `ip netns` keeps its named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Renders a command line for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` (optionally feeding `stdin`), killing it after `timeout`.
/// Returns its output whatever its exit status; errors only if it could not be
/// started or timed out.
pub fn output_with_timeout(
    cmd: &mut Command,
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<Output> {
    let line = describe(cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        // Small inputs (nft scripts, ip batches) fit in the pipe buffer.
        let _ = pipe.write_all(input.as_bytes());
    }
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = out_t.join();
            let _ = err_t.join();
            bail!("`{line}` timed out after {timeout:?} and was killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Runs `cmd` and fails (with the command line and its stderr) unless it exits 0.
/// Returns stdout.
pub fn run_checked(cmd: &mut Command, stdin: Option<&str>, timeout: Duration) -> Result<String> {
    let line = describe(cmd);
    let out = output_with_timeout(cmd, stdin, timeout)?;
    if !out.status.success() {
        let mut msg = format!(
            "command failed ({}): `{line}`\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let so = String::from_utf8_lossy(&out.stdout);
        if !so.trim().is_empty() {
            msg.push_str(&format!("\nstdout: {}", so.trim()));
        }
        if let Some(input) = stdin {
            msg.push_str(&format!("\ninput was:\n{input}"));
        }
        return Err(anyhow!(msg));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Opens the handle of a named network namespace (`/run/netns/<ns>`).
pub fn open_netns(ns: &str) -> Result<File> {
    let path = format!("{NETNS_DIR}/{ns}");
    File::open(&path).with_context(|| format!("cannot open network namespace {path}"))
}

/// Moves the CALLING THREAD into the named network namespace (setns(CLONE_NEWNET)
/// only affects the calling thread). Sockets created afterwards by this thread
/// live in that namespace; threads it spawns inherit it.
pub fn enter_netns(ns: &str) -> Result<()> {
    let f = open_netns(ns)?;
    setns(&f, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {ns}"))
}

/// Spawns a named thread that first enters network namespace `ns`, then runs `f`.
/// The namespace is opened before spawning, so a missing namespace is reported here.
pub fn spawn_in_netns<T, F>(ns: &str, thread_name: &str, f: F) -> Result<JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let file = open_netns(ns)?;
    let ns_name = ns.to_string();
    std::thread::Builder::new()
        .name(thread_name.to_string())
        .spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into {ns_name}"))?;
            drop(file);
            f()
        })
        .context("cannot spawn thread")
}

/// Lab tests run one at a time within a test binary: they time ICMP replies on a small machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The guard every lab test takes first. `None` means "skip": not root and `CI` unset (the
/// reason is printed). With `CI` set and no root it panics, so lab tests can never be skipped
/// silently in CI.
pub fn lab_test_guard() -> Option<std::sync::MutexGuard<'static, ()>> {
    if !nix::unistd::geteuid().is_root() {
        if std::env::var_os("CI").is_some() {
            panic!("lab tests need root (network namespaces, raw sockets); CI is set, so they must not be skipped");
        }
        eprintln!("skipping: needs root");
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}
