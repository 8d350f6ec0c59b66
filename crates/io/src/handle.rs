//! Runs in a background thread, as streams: the caller iterates over events as they come,
//! may cancel, then waits for the run's outcome.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::Error;

/// Stops a background run from anywhere: see [`RunHandle::canceller`].
#[derive(Debug, Clone)]
pub struct Canceller(Arc<AtomicBool>);

impl Canceller {
    /// Stops the run: work in flight ends as `interrupted`.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether the run was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A run in a background thread that streams events of type `E` and ends with an `R`.
pub struct RunHandle<E, R> {
    events: mpsc::Receiver<E>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<R, Error>>>,
}

impl<E, R> RunHandle<E, R> {
    /// The next event, blocking until one comes; `None` once the run is over.
    pub fn next_event(&self) -> Option<E> {
        self.events.recv().ok()
    }

    /// The next event if one is ready.
    pub fn try_next_event(&self) -> Option<E> {
        self.events.try_recv().ok()
    }

    /// Stops the run: work in flight ends as `interrupted`.
    pub fn cancel(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// A token that stops the run from anywhere (another thread, a signal handler's flag
    /// watcher) while this handle is being iterated: `cancel()` on it is `cancel()` on the
    /// handle. It can be cloned and outlive the run.
    pub fn canceller(&self) -> Canceller {
        Canceller(Arc::clone(&self.stop))
    }

    /// Whether the run is over (its last events may still be waiting to be read).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for the end of the run and returns its outcome.
    pub fn wait(mut self) -> Result<R, Error> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(Error::Unsupported("the background thread panicked".into())),
        }
    }
}

impl<E, R> Iterator for RunHandle<E, R> {
    type Item = E;
    fn next(&mut self) -> Option<E> {
        self.next_event()
    }
}

/// Runs `run(stop, emit)` in a new thread; `emit` sends one event to the handle.
pub(crate) fn spawn<E, R, F>(run: F) -> RunHandle<E, R>
where
    E: Send + 'static,
    R: Send + 'static,
    F: FnOnce(&AtomicBool, &mut dyn FnMut(E)) -> Result<R, Error> + Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        run(&flag, &mut |ev| {
            let _ = tx.send(ev);
        })
    });
    RunHandle {
        events: rx,
        stop,
        thread: Some(thread),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A run that emits a number every millisecond until stopped, then returns how many.
    fn counting() -> RunHandle<u64, u64> {
        spawn(|stop, emit| {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                emit(n);
                n += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(n)
        })
    }

    #[test]
    fn a_canceller_stops_a_run_that_another_thread_iterates() {
        let run = counting();
        let canceller = run.canceller();
        let reader = std::thread::spawn(move || {
            let mut seen = 0u64;
            let mut run = run;
            for _ in run.by_ref() {
                seen += 1;
            }
            (seen, run.wait().expect("the run ends cleanly"))
        });
        std::thread::sleep(Duration::from_millis(30));
        let t = Instant::now();
        canceller.cancel();
        assert!(canceller.is_cancelled());
        let (seen, total) = reader.join().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the run ended promptly"
        );
        assert!(
            seen > 0 && seen == total,
            "every event reached the reader: {seen} of {total}"
        );
    }
}
