//! The threads native runs execute on. A run takes tens to hundreds of milliseconds of CPU:
//! on one of tokio's async workers it would stall every other request, and `spawn_blocking`
//! would start as many runs at once as there are callers. A fixed set of threads bounds the
//! runs in flight (ONNX Runtime's intra-op threads come on top, per session).

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

pub(super) struct RunPool {
    size: usize,
    /// Started at the first run: hosts whose plugins never compute start no threads.
    sender: OnceLock<Mutex<Sender<Job>>>,
}

impl RunPool {
    pub(super) fn new(size: usize) -> RunPool {
        RunPool {
            size: size.max(1),
            sender: OnceLock::new(),
        }
    }

    fn start(&self) -> Mutex<Sender<Job>> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..self.size {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("imbed-nn-{i}"))
                .spawn(move || worker(&rx));
            if let Err(e) = spawned {
                tracing::error!("cannot start native inference thread {i}: {e}");
            }
        }
        Mutex::new(tx)
    }

    /// Queue `job`; its result arrives on the receiver (dropped if the job panicked).
    pub(super) fn submit<R: Send + 'static>(
        &self,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> tokio::sync::oneshot::Receiver<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let boxed: Job = Box::new(move || {
            let _ = tx.send(job());
        });
        let sender = self.sender.get_or_init(|| self.start());
        // A send fails only when every worker is gone; the caller then sees a closed channel.
        let _ = sender.lock().unwrap_or_else(|p| p.into_inner()).send(boxed);
        rx
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            // The pool was dropped: its runtime is gone.
            Err(_) => return,
        };
        // A panic in a run (a bug) loses that run's answer, not the thread.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}
