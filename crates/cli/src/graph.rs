//! `--format dot` and `--format svg`: the Graphviz picture of results, rendered to SVG by
//! Graphviz's own `dot` program (no SVG layout code of ours).

use std::io::Write;
use std::process::{Command, Stdio};

use crate::error::CliError;

const INSTALL_HINT: &str = "--format svg needs Graphviz's dot program: install it \
     (Debian/Ubuntu: apt-get install graphviz; Fedora: dnf install graphviz; macOS: brew \
     install graphviz), or write --format dot and render it elsewhere";

/// Fails early, before any probe, when `dot` cannot be run.
pub(crate) fn check_dot() -> Result<(), CliError> {
    match Command::new("dot")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        _ => Err(CliError::input(INSTALL_HINT)),
    }
}

/// Renders DOT text as SVG with `dot -Tsvg`.
pub(crate) fn svg(dot: &str) -> Result<String, CliError> {
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|_| CliError::input(INSTALL_HINT))?;
    // dot reads all its input before it writes: write from here, then read.
    let write = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(dot.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| CliError::input(format!("running dot: {e}")))?;
    if let Some(Err(e)) = write {
        return Err(CliError::input(format!("writing to dot: {e}")));
    }
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(CliError::input(format!(
            "dot failed ({}): {}",
            out.status,
            err.lines().next().unwrap_or("no message")
        )));
    }
    String::from_utf8(out.stdout)
        .map_err(|_| CliError::input("dot wrote something that is not UTF-8"))
}
