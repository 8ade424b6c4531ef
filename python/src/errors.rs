//! The library's errors as the Python exceptions of `imbed._errors` (defined in Python so each
//! can also subclass the natural built-in: `InputError` is a `ValueError`, and so on).

use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::types::PyAttempt;

/// An instance of `imbed._errors.<class>` built from `args`.
fn raise<'py, A: pyo3::call::PyCallArgs<'py>>(class: &str, args: A, py: Python<'py>) -> PyErr {
    let made = py
        .import("imbed._errors")
        .and_then(|m| m.getattr(class))
        .and_then(|c| c.call1(args));
    match made {
        Ok(instance) => PyErr::from_value(instance),
        Err(e) => e,
    }
}

/// `ImbedError` (or a subclass) with `message`.
pub fn new(class: &str, message: String) -> PyErr {
    Python::attach(|py| raise(class, (message,), py))
}

/// The engine could not start.
pub fn engine(message: String) -> PyErr {
    new("EngineError", message)
}

/// A call on an `Imbed` that was closed.
pub fn closed() -> PyErr {
    new(
        "ClosedError",
        "this Imbed is closed: create a new one".into(),
    )
}

/// The Python exception for a library error.
pub fn from_imbed(error: imbed::Error) -> PyErr {
    let message = error.to_string();
    match error {
        imbed::Error::Config(_) => new("ConfigError", message),
        imbed::Error::Input(_) => new("InputError", message),
        imbed::Error::Exhausted { attempts } => Python::attach(|py| {
            let list = PyList::empty(py);
            for a in &attempts {
                match Py::new(py, PyAttempt::from(a)) {
                    Ok(a) => {
                        if let Err(e) = list.append(a) {
                            return e;
                        }
                    }
                    Err(e) => return e,
                }
            }
            raise("ExhaustedError", (message, list), py)
        }),
        imbed::Error::Engine(_) => new("EngineError", message),
        imbed::Error::Usage(imbed::UsageError::IndexWithoutCache) => new("ConfigError", message),
        imbed::Error::Usage(_) => new("UsageError", message),
        _ => new("ImbedError", message),
    }
}

/// The Python exception for a search that could not run.
pub fn from_search(error: imbed::search::SearchError) -> PyErr {
    let message = error.to_string();
    match error {
        imbed::search::SearchError::EmptySpace { .. } => new("EmptySpaceError", message),
        _ => new("ImbedError", message),
    }
}

/// The Python exception for a failure of the cache.
pub fn from_store(error: imbed::StoreError) -> PyErr {
    new("CacheError", error.to_string())
}
