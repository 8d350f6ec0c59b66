//! Runs in a background thread, as streams: the caller iterates over events as they come,
//! may cancel, then waits for the run's outcome.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::Error;

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
