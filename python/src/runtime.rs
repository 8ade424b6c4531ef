//! The module's one tokio runtime, how a blocking call runs on it with the GIL released and
//! Ctrl-C honoured, and the bridge that hands a Rust future to asyncio.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyCFunction;

use crate::errors;

/// How often a blocking call takes the GIL back to look for signals (Ctrl-C).
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// The runtime and the process that built it. After `fork` the child has the memory of the
/// parent's runtime but none of its threads, so a runtime is only used by the process that
/// built it; the child builds its own on first use.
static RUNTIME: Mutex<Option<(u32, Arc<tokio::runtime::Runtime>)>> = Mutex::new(None);

/// The current process's runtime, built on first use (again after a `fork`).
pub fn runtime() -> PyResult<Arc<tokio::runtime::Runtime>> {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((owner, rt)) = slot.as_ref() {
        if *owner == pid {
            return Ok(rt.clone());
        }
    }
    if let Some(stale) = slot.take() {
        // Its worker threads died with the parent's address space: dropping it would wait for
        // them forever. The memory is the parent's copy; leaking it costs nothing new.
        std::mem::forget(stale);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("imbed-python")
        .enable_all()
        .build()
        .map_err(|e| errors::engine(format!("cannot start a tokio runtime: {e}")))?;
    let rt = Arc::new(rt);
    *slot = Some((pid, rt.clone()));
    Ok(rt)
}

/// Run `future` to its end with the GIL released. The future runs on the calling thread (no
/// hand-off to a worker: the cheapest path for short calls) while the runtime's workers drive
/// what it spawns. Every [`SIGNAL_POLL`] the GIL is taken back to run Python's signal handlers:
/// Ctrl-C drops the future (cancelling the call) and raises `KeyboardInterrupt`.
pub fn block_on<F>(py: Python<'_>, future: F) -> PyResult<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let rt = runtime()?;
    let mut future = std::pin::pin!(future);
    loop {
        let step = py.detach(|| {
            rt.block_on(async {
                tokio::select! {
                    biased;
                    out = &mut future => Some(out),
                    _ = tokio::time::sleep(SIGNAL_POLL) => None,
                }
            })
        });
        match step {
            Some(out) => return Ok(out),
            None => py.check_signals()?,
        }
    }
}

/// An asyncio future on the running loop that `future` resolves from the runtime's workers:
/// `convert` turns its output into the result (or the exception) under the GIL. Cancelling the
/// asyncio future aborts the task.
pub fn into_asyncio<'py, F, T>(
    py: Python<'py>,
    future: F,
    convert: fn(Python<'_>, T) -> PyResult<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    // Raises RuntimeError("no running event loop") when called outside a coroutine.
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let asyncio_future = event_loop.call_method0("create_future")?;
    let resolve = py.import("imbed._bridge")?.getattr("resolve")?.unbind();
    let (loop_ref, future_ref) = (event_loop.unbind(), asyncio_future.clone().unbind());
    let task = runtime()?.spawn(async move {
        let out = future.await;
        Python::attach(|py| {
            let (ok, value) = match convert(py, out) {
                Ok(v) => (true, v),
                Err(e) => (false, e.into_value(py).into_any()),
            };
            // The loop may be closed by now; nobody is left to tell.
            let _ = loop_ref.bind(py).call_method1(
                "call_soon_threadsafe",
                (resolve.bind(py), future_ref.bind(py), ok, value),
            );
        });
    });
    let abort = task.abort_handle();
    let on_done = PyCFunction::new_closure(py, None, None, move |args, _kwargs| -> PyResult<()> {
        let cancelled: bool = args.get_item(0)?.call_method0("cancelled")?.extract()?;
        if cancelled {
            abort.abort();
        }
        Ok(())
    })?;
    asyncio_future.call_method1("add_done_callback", (on_done,))?;
    Ok(asyncio_future)
}
