//! Where results go, and what stops a run: SIGINT, SIGTERM and SIGHUP (the terminal closed)
//! set one stop flag, and so does a closed output.
//!
//! A closed output is noticed two ways: a write that fails with `EPIPE` (`monitor | head -1`
//! once `head` has its line), and, because a monitor may have nothing to write for minutes, a
//! thread that waits in poll(2) on stdout for `POLLERR`/`POLLHUP`, which a pipe reports as soon
//! as its reader is gone. Either way the run ends as if interrupted and the status is 0: the
//! reader took what it wanted. (Rust ignores SIGPIPE, so the write fails instead of killing
//! the process.)

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::CliError;

/// The stop flag and the state of stdout.
pub(crate) struct Run {
    /// Set by a signal or a closed output: the run ends, work in flight as `interrupted`.
    pub(crate) stop: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
    error: Option<io::Error>,
}

impl Run {
    /// Installs the signal handlers and the watcher of stdout.
    pub(crate) fn start() -> Result<Self, CliError> {
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| {
                CliError::Run(svctr_io::Error::Socket {
                    what: "installing the signal handlers".into(),
                    source: e,
                })
            })?;
        }
        let closed = Arc::new(AtomicBool::new(false));
        let (s, c) = (Arc::clone(&stop), Arc::clone(&closed));
        // Detached: it either sees stdout close or dies with the process.
        std::thread::spawn(move || watch_stdout(&s, &c));
        Ok(Self {
            stop,
            closed,
            error: None,
        })
    }

    /// Whether the run was asked to stop (a signal or a closed output).
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Whether stdout's reader is gone.
    pub(crate) fn output_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Writes `text` to stdout and flushes; a closed output stops the run, another failure
    /// too (reported by [`finish`](Self::finish)). Nothing is written once either happened.
    pub(crate) fn print(&mut self, text: &str) {
        if self.output_closed() || self.error.is_some() {
            return;
        }
        let mut out = io::stdout().lock();
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            if e.kind() == io::ErrorKind::BrokenPipe {
                self.closed.store(true, Ordering::Relaxed);
            } else {
                self.error = Some(e);
            }
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    /// The output's failure, if it had one other than being closed.
    pub(crate) fn finish(&mut self) -> Result<(), CliError> {
        match self.error.take() {
            Some(e) => Err(CliError::Output(e)),
            None => Ok(()),
        }
    }
}

/// Waits until stdout reports an error or a hang-up (its reader closed), then stops the run.
/// Regular files and terminals never report either (poll with no events asked for), so the
/// thread just waits.
fn watch_stdout(stop: &AtomicBool, closed: &AtomicBool) {
    svctr_io::privilege::drop_all_in_thread();
    let stdout = io::stdout();
    let fd = stdout.as_fd();
    loop {
        let mut fds = [PollFd::new(fd, PollFlags::empty())];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                let r = fds[0].revents().unwrap_or(PollFlags::empty());
                if r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP) {
                    closed.store(true, Ordering::Relaxed);
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
                if r.contains(PollFlags::POLLNVAL) {
                    return; // no stdout at all
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}
