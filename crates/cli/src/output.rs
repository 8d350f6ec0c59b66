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
    /// The stdout watcher is still to be started (at the first output: see `start_lazy`).
    watch_later: bool,
}

impl Run {
    /// Installs the signal handlers and the watcher of stdout.
    pub(crate) fn start() -> Result<Self, CliError> {
        let mut run = Self::start_lazy()?;
        run.start_watcher();
        Ok(run)
    }

    /// As [`start`](Self::start), but the watcher of stdout starts with the first output:
    /// for runs that write as they go (a trace prints its header once its sockets are open),
    /// where a closed output shows at the next write anyway. No thread exists when the
    /// privileges are dropped then, and a run whose output is a file or a terminal never
    /// starts one.
    pub(crate) fn start_lazy() -> Result<Self, CliError> {
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
        Ok(Self {
            stop,
            closed: Arc::new(AtomicBool::new(false)),
            error: None,
            watch_later: true,
        })
    }

    /// Starts the watcher of stdout if it is a pipe or a socket and none runs yet.
    fn start_watcher(&mut self) {
        if std::mem::take(&mut self.watch_later) && output_can_close() {
            let (s, c) = (Arc::clone(&self.stop), Arc::clone(&self.closed));
            // Detached: it either sees stdout close or dies with the process.
            std::thread::spawn(move || watch_stdout(&s, &c));
        }
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
        self.write(text.as_bytes());
    }

    /// [`print`](Self::print) for bytes (a binary format).
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        if self.output_closed() || self.error.is_some() {
            return;
        }
        self.start_watcher();
        let mut out = io::stdout().lock();
        if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
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

/// A binary format (warts) goes to a file or a pipe, never to a terminal.
pub(crate) fn binary_output_ok() -> Result<(), CliError> {
    if io::IsTerminal::is_terminal(&io::stdout()) {
        return Err(CliError::input(
            "--format warts is binary: redirect the output to a file (> FILE.warts)",
        ));
    }
    Ok(())
}

/// Whether stdout can lose its reader: a pipe or a socket. Regular files and terminals never
/// report it, so they get no watcher thread (a thread that exists when the privileges are
/// dropped makes setuid(2) wait for it: glibc signals every thread).
fn output_can_close() -> bool {
    use nix::sys::stat::{fstat, SFlag};
    match fstat(io::stdout().as_fd()) {
        Ok(st) => {
            let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            kind == SFlag::S_IFIFO || kind == SFlag::S_IFSOCK
        }
        // No stdout to watch.
        Err(_) => false,
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
