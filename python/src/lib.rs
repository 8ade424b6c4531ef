//! `imbed._imbed`: the PyO3 extension behind the `imbed` Python package. It wraps the library's
//! [`imbed::Imbed`] in a class whose calls release the GIL, honour Ctrl-C and survive `fork`,
//! with asyncio twins on the module's one tokio runtime. The Python package (`python/imbed/`)
//! re-exports it and adds the drop-in function and the LangChain and LlamaIndex adapters.

mod errors;
mod runtime;
mod types;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use futures::StreamExt;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyString, PyTuple};

use imbed::{Config, Env, ImageRequest, ImageSource, ImbedOptions, Purpose};
use types::{PyBase64, PyEmbedding, PyIndexReport, PyIndexSummary, PySearchResult};

/// The loaded runtime and the process it was loaded in.
enum State {
    Open(Option<(u32, imbed::Imbed)>),
    Closed,
}

/// imbed in-process: the chain, the sandboxed plugins, the cache. See `imbed/__init__.pyi`.
#[pyclass(frozen, name = "Imbed", module = "imbed")]
struct PyImbed {
    config: Config,
    state: Mutex<State>,
}

impl PyImbed {
    /// The library runtime of this process: loaded at construction, loaded again in a child
    /// after `fork` (its threads, sockets and database handle belong to the parent).
    fn live(&self, py: Python<'_>) -> PyResult<imbed::Imbed> {
        let pid = std::process::id();
        {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            match &mut *state {
                State::Closed => return Err(errors::closed()),
                State::Open(Some((owner, imbed))) if *owner == pid => return Ok(imbed.clone()),
                State::Open(slot) => {
                    if let Some(stale) = slot.take() {
                        // Dropping it would join the parent's threads, which this process
                        // does not have.
                        std::mem::forget(stale);
                    }
                }
            }
        }
        // Loaded without the lock: loading releases the GIL, and another thread holding the
        // GIL while it waits for the lock would never let this one take the GIL back.
        let config = self.config.clone();
        let loaded = runtime::block_on(py, load(config))?.map_err(errors::from_imbed)?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *state {
            State::Closed => Err(errors::closed()),
            State::Open(Some((owner, imbed))) if *owner == pid => Ok(imbed.clone()),
            State::Open(slot) => {
                *slot = Some((pid, loaded.clone()));
                Ok(loaded)
            }
        }
    }

    fn store(&self, imbed: &imbed::Imbed) -> PyResult<imbed::Cache> {
        imbed.store().cloned().ok_or_else(|| {
            errors::new(
                "ConfigError",
                format!(
                    "search and index need the cache, which the config ({}) turns off: set [cache] database",
                    self.config.source
                ),
            )
        })
    }
}

async fn load(config: Config) -> imbed::Result<imbed::Imbed> {
    let opened = match &config.cache.database {
        Some(imbed::config::Database::Sqlite(path)) => Some(imbed::Cache::open(path)),
        Some(imbed::config::Database::Postgres(url)) => {
            // As the CLI does: the search settings of [cache] apply to PostgreSQL.
            let settings = &config.cache;
            let mut options = imbed::store::PgOptions::default();
            options.ef_search = settings.ef_search;
            options.halfvec = settings.halfvec;
            options.exact_rerank = settings.exact_rerank;
            options.pool_size = settings.pool_size;
            options.local_dir = settings.local_dir.clone();
            let url = url.clone();
            // Opening blocks (it connects and migrates): off the async threads.
            Some(
                tokio::task::spawn_blocking(move || imbed::Cache::open_postgres(&url, options))
                    .await
                    .unwrap_or_else(|e| Err(imbed::store::StoreError::Task(e.to_string()))),
            )
        }
        None => None,
    };
    let options = match opened {
        Some(Ok(store)) => ImbedOptions::default().store(store),
        Some(Err(e)) => {
            // As the CLI does for embedding: the cache only speeds things up here; search
            // and index say it is missing when they need it.
            tracing_warn(&format!("the cache cannot be opened: {e}"));
            ImbedOptions::default()
        }
        None => ImbedOptions::default(),
    };
    imbed::Imbed::with_options(config, options).await
}

fn tracing_warn(message: &str) {
    Python::attach(|py| {
        let _ = py
            .import("warnings")
            .and_then(|w| w.call_method1("warn", (message,)));
    });
}

/// The config: `None` finds it as the CLI does, a path loads that file, a dict is the TOML
/// document as a dict. Plugin files the config names but that are not installed are taken
/// from the wheel when it carries them (hash, ollama, openai).
fn read_config(py: Python<'_>, config: Option<&Bound<'_, PyAny>>) -> PyResult<Config> {
    let env = Env::from_process();
    let mut config = match config {
        None => Config::discover(None, &env),
        Some(c) if c.is_instance_of::<PyDict>() => {
            let json: String = py.import("json")?.call_method1("dumps", (c,))?.extract()?;
            let text = dict_to_toml(&json)?;
            Config::from_toml_str(&text, "<dict>", None, &env)
        }
        Some(c) => {
            let path: PathBuf = py
                .import("os")?
                .call_method1("fspath", (c,))
                .map_err(|_| {
                    PyTypeError::new_err(format!(
                        "config must be None, a path or a dict, not {}",
                        type_name(c)
                    ))
                })?
                .extract()?;
            Config::load(&path, &env)
        }
    }
    .map_err(|e| errors::from_imbed(e.into()))?;
    let bundled = bundled_plugin_dir(py)?;
    for plugin in config.plugins.values_mut() {
        if plugin.path.is_file() {
            continue;
        }
        if let Some(name) = plugin.path.file_name() {
            let candidate = bundled.join(name);
            if candidate.is_file() {
                plugin.path = candidate;
            }
        }
    }
    Ok(config)
}

fn dict_to_toml(json: &str) -> PyResult<String> {
    let bad = |e: String| {
        errors::new(
            "ConfigError",
            format!("the config dict is not a TOML document: {e}"),
        )
    };
    let value: toml::Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    toml::to_string(&value).map_err(|e| bad(e.to_string()))
}

/// `imbed/plugins/` inside the installed package.
fn bundled_plugin_dir(py: Python<'_>) -> PyResult<PathBuf> {
    let file: PathBuf = py.import("imbed")?.getattr("__file__")?.extract()?;
    Ok(file
        .parent()
        .map(|p| p.join("plugins"))
        .unwrap_or_else(|| Path::new("plugins").to_path_buf()))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// An image argument: a path (`str` or `os.PathLike`), an `http(s)://` URL, a `data:` URI,
/// encoded bytes, or [`PyBase64`] text.
fn image_source(obj: &Bound<'_, PyAny>) -> PyResult<ImageSource> {
    if let Ok(b) = obj.cast::<PyBase64>() {
        return Ok(ImageSource::Base64(b.get().text.clone()));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(ImageSource::Bytes(b.as_bytes().to_vec()));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(ImageSource::Bytes(b.to_vec()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        let s = s.to_str()?;
        let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
        return Ok(
            if lower.starts_with("http://") || lower.starts_with("https://") {
                ImageSource::Url(s.to_string())
            } else if lower.starts_with("data:") {
                ImageSource::Base64(s.to_string())
            } else {
                ImageSource::Path(PathBuf::from(s))
            },
        );
    }
    let py = obj.py();
    if obj.is_instance(&py.import("builtins")?.getattr("memoryview")?)? {
        let b: Vec<u8> = obj.call_method0("tobytes")?.extract()?;
        return Ok(ImageSource::Bytes(b));
    }
    if let Ok(path) = py.import("os")?.call_method1("fspath", (obj,)) {
        return Ok(ImageSource::Path(path.extract()?));
    }
    Err(PyTypeError::new_err(format!(
        "an image is a path, a URL, a data: URI, bytes or imbed.Base64, not {}",
        type_name(obj)
    )))
}

fn requests(images: &Bound<'_, PyAny>, description: Option<&str>) -> PyResult<Vec<ImageRequest>> {
    if images.is_instance_of::<PyString>() || images.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(
            "embed_images takes a list of images; for one image call embed_image",
        ));
    }
    let mut out = Vec::new();
    for item in images.try_iter()? {
        let mut request = ImageRequest::new(image_source(&item?)?);
        request.description = description.map(str::to_string);
        out.push(request);
    }
    Ok(out)
}

fn purpose(name: &str) -> PyResult<Purpose> {
    Ok(match name {
        "query" => Purpose::Query,
        "document" => Purpose::Document,
        "none" => Purpose::None,
        "classification" => Purpose::Classification,
        "clustering" => Purpose::Clustering,
        other => {
            return Err(errors::new(
                "UsageError",
                format!(
                    "unknown purpose {other:?}: use \"query\", \"document\", \"none\", \"classification\" or \"clustering\""
                ),
            ))
        }
    })
}

fn embedding(py: Python<'_>, result: imbed::Result<imbed::Embedding>) -> PyResult<Py<PyAny>> {
    let e = result.map_err(errors::from_imbed)?;
    Ok(Py::new(py, PyEmbedding::new(py, &e)?)?.into_any())
}

/// Every result, or the first error (`return_exceptions`: each error in its place, as an
/// exception instance, like `asyncio.gather`).
fn embeddings(
    py: Python<'_>,
    results: Vec<imbed::Result<imbed::Embedding>>,
    return_exceptions: bool,
) -> PyResult<Py<PyAny>> {
    let mut out = Vec::with_capacity(results.len());
    for r in results {
        match embedding(py, r) {
            Ok(e) => out.push(e),
            Err(e) if return_exceptions => out.push(e.into_value(py).into_any()),
            Err(e) => return Err(e),
        }
    }
    Ok(out.into_pyobject(py)?.into_any().unbind())
}

fn embeddings_strict(
    py: Python<'_>,
    results: Vec<imbed::Result<imbed::Embedding>>,
) -> PyResult<Py<PyAny>> {
    embeddings(py, results, false)
}

fn embeddings_lenient(
    py: Python<'_>,
    results: Vec<imbed::Result<imbed::Embedding>>,
) -> PyResult<Py<PyAny>> {
    embeddings(py, results, true)
}

/// What a search looks for: a text, a vector already made, or an image.
enum Query {
    Text(String),
    Vector { space: String, vector: Vec<f32> },
    Image(ImageSource),
}

fn query(obj: &Bound<'_, PyAny>) -> PyResult<Query> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Query::Text(s.to_str()?.to_string()));
    }
    if let Ok(e) = obj.cast::<PyEmbedding>() {
        let e = e.get();
        return Ok(Query::Vector {
            space: e.space.clone(),
            vector: e.vector.clone(),
        });
    }
    Ok(Query::Image(image_source(obj)?))
}

/// Why a search failed, before it is turned into a Python exception (off the GIL).
enum SearchFailure {
    Imbed(imbed::Error),
    Search(imbed::search::SearchError),
}

async fn run_search(
    imbed: imbed::Imbed,
    store: imbed::Cache,
    query: Query,
    k: usize,
) -> Result<imbed::search::SearchResult, SearchFailure> {
    let (space, vector) = match query {
        Query::Text(text) => {
            let e = imbed
                .embed_text_for(&text, Purpose::Query)
                .await
                .map_err(SearchFailure::Imbed)?;
            (e.provenance.space.to_string(), e.vector)
        }
        Query::Image(source) => {
            let e = imbed
                .embed_image(ImageRequest::new(source))
                .await
                .map_err(SearchFailure::Imbed)?;
            (e.provenance.space.to_string(), e.vector)
        }
        Query::Vector { space, vector } => (space, vector),
    };
    // SQLite reads and the scan block: off the runtime's async threads.
    tokio::task::spawn_blocking(move || {
        imbed::search::search(
            &store,
            &space,
            &vector,
            k,
            imbed::search::Method::Auto,
            None,
        )
    })
    .await
    .map_err(|_| SearchFailure::Imbed(imbed::Error::Internal(panicked())))?
    .map_err(SearchFailure::Search)
}

fn panicked() -> imbed::error::Internal {
    imbed::error::Internal::Panicked("the search")
}

fn search_out(
    py: Python<'_>,
    result: Result<imbed::search::SearchResult, SearchFailure>,
) -> PyResult<Py<PyAny>> {
    match result {
        Ok(r) => Ok(Py::new(py, PySearchResult::from(r))?.into_any()),
        Err(SearchFailure::Imbed(e)) => Err(errors::from_imbed(e)),
        Err(SearchFailure::Search(e)) => Err(errors::from_search(e)),
    }
}

#[pymethods]
impl PyImbed {
    #[new]
    #[pyo3(signature = (config=None))]
    fn new(py: Python<'_>, config: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let config = read_config(py, config)?;
        let this = PyImbed {
            config,
            state: Mutex::new(State::Open(None)),
        };
        this.live(py)?;
        Ok(this)
    }

    /// Where the config came from (a path, `<dict>` or `<default>`).
    #[getter]
    fn config_source(&self) -> &str {
        &self.config.source
    }

    #[pyo3(signature = (image, *, description=None))]
    fn embed_image(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        description: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let imbed = self.live(py)?;
        let mut request = ImageRequest::new(image_source(image)?);
        request.description = description;
        let result = runtime::block_on(py, imbed.embed_image(request))?;
        embedding(py, result)
    }

    #[pyo3(signature = (images, *, description=None, jobs=4, return_exceptions=false))]
    fn embed_images(
        &self,
        py: Python<'_>,
        images: &Bound<'_, PyAny>,
        description: Option<String>,
        jobs: usize,
        return_exceptions: bool,
    ) -> PyResult<Py<PyAny>> {
        let imbed = self.live(py)?;
        let requests = requests(images, description.as_deref())?;
        let results =
            runtime::block_on(py, imbed.embed_images(requests, jobs).collect::<Vec<_>>())?;
        embeddings(py, results, return_exceptions)
    }

    #[pyo3(signature = (text, *, purpose="query"))]
    fn embed_text(&self, py: Python<'_>, text: String, purpose: &str) -> PyResult<Py<PyAny>> {
        let purpose = self::purpose(purpose)?;
        let imbed = self.live(py)?;
        let result = runtime::block_on(
            py,
            async move { imbed.embed_text_for(&text, purpose).await },
        )?;
        embedding(py, result)
    }

    #[pyo3(signature = (texts, *, purpose="document"))]
    fn embed_texts(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        purpose: &str,
    ) -> PyResult<Py<PyAny>> {
        let purpose = self::purpose(purpose)?;
        let imbed = self.live(py)?;
        let results =
            runtime::block_on(
                py,
                async move { imbed.embed_texts_for(&texts, purpose).await },
            )?;
        embeddings(py, results, false)
    }

    #[pyo3(signature = (query, *, k=10))]
    fn search(&self, py: Python<'_>, query: &Bound<'_, PyAny>, k: usize) -> PyResult<Py<PyAny>> {
        let imbed = self.live(py)?;
        let store = self.store(&imbed)?;
        let query = self::query(query)?;
        let result = runtime::block_on(py, run_search(imbed, store, query, k))?;
        search_out(py, result)
    }

    #[pyo3(signature = (*paths, jobs=None, upgrade=false, progress=None))]
    fn index(
        &self,
        py: Python<'_>,
        paths: &Bound<'_, PyTuple>,
        jobs: Option<usize>,
        upgrade: bool,
        progress: Option<Bound<'_, PyAny>>,
    ) -> PyResult<PyIndexSummary> {
        let imbed = self.live(py)?;
        let store = self.store(&imbed)?;
        let os = py.import("os")?;
        let mut roots = Vec::new();
        for p in paths.iter() {
            roots.push(os.call_method1("fspath", (p,))?.extract::<PathBuf>()?);
        }
        if roots.is_empty() {
            return Err(errors::new(
                "UsageError",
                "give the folders or files to index".into(),
            ));
        }
        let (files, skipped) = py
            .detach(|| {
                // The search page of `imbed serve` serves files from under these folders only.
                imbed::index::record_roots(&store, &roots)
                    .map(|_| imbed::index::find_images(&roots))
            })
            .map_err(errors::from_store)?;
        let jobs = jobs.unwrap_or_else(|| {
            self.config
                .plugins
                .values()
                .map(|p| p.pool_size)
                .max()
                .unwrap_or(1)
                .clamp(1, 16)
        });
        let options = imbed::index::IndexOptions::new(jobs).upgrade(upgrade);
        let mut stream =
            imbed::index::index_files(&imbed, files, &options).map_err(errors::from_imbed)?;
        let mut summary = imbed::index::Summary::default();
        // Dropping the stream (Ctrl-C, a callback that raises) abandons the images in flight;
        // every finished one is already committed.
        while let Some(report) = runtime::block_on(py, stream.next())? {
            summary.add(&report);
            if let Some(callback) = &progress {
                callback.call1((PyIndexReport::from(&report),))?;
            }
        }
        if summary.embedded + summary.upgraded > 0 {
            // As `imbed index` does: the search index is built now, not by the first search.
            // Failing here loses nothing (the first search builds it), so it only warns.
            if let Err(e) = py.detach(|| imbed::search::prepare(&store)) {
                tracing_warn(&format!(
                    "the search index could not be built now (the first search builds it): {e}"
                ));
            }
        }
        Ok(PyIndexSummary::new(&summary, skipped))
    }

    /// Every configured plugin: its file, whether it loaded, what it is granted (as
    /// `imbed plugins --json` prints it).
    fn plugins(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let imbed = self.live(py)?;
        let json = serde_json::to_string(&imbed.plugins())
            .map_err(|e| errors::new("ImbedError", e.to_string()))?;
        Ok(py.import("json")?.call_method1("loads", (json,))?.unbind())
    }

    #[pyo3(signature = (image, *, description=None))]
    fn aembed_image<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        description: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let imbed = self.live(py)?;
        let mut request = ImageRequest::new(image_source(image)?);
        request.description = description;
        runtime::into_asyncio(
            py,
            async move { imbed.embed_image(request).await },
            embedding,
        )
    }

    #[pyo3(signature = (images, *, description=None, jobs=4, return_exceptions=false))]
    fn aembed_images<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        description: Option<String>,
        jobs: usize,
        return_exceptions: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let imbed = self.live(py)?;
        let requests = requests(images, description.as_deref())?;
        let future = imbed.embed_images(requests, jobs).collect::<Vec<_>>();
        if return_exceptions {
            runtime::into_asyncio(py, future, embeddings_lenient)
        } else {
            runtime::into_asyncio(py, future, embeddings_strict)
        }
    }

    #[pyo3(signature = (text, *, purpose="query"))]
    fn aembed_text<'py>(
        &self,
        py: Python<'py>,
        text: String,
        purpose: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let purpose = self::purpose(purpose)?;
        let imbed = self.live(py)?;
        runtime::into_asyncio(
            py,
            async move { imbed.embed_text_for(&text, purpose).await },
            embedding,
        )
    }

    #[pyo3(signature = (texts, *, purpose="document"))]
    fn aembed_texts<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        purpose: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let purpose = self::purpose(purpose)?;
        let imbed = self.live(py)?;
        runtime::into_asyncio(
            py,
            async move { imbed.embed_texts_for(&texts, purpose).await },
            embeddings_strict,
        )
    }

    #[pyo3(signature = (query, *, k=10))]
    fn asearch<'py>(
        &self,
        py: Python<'py>,
        query: &Bound<'py, PyAny>,
        k: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let imbed = self.live(py)?;
        let store = self.store(&imbed)?;
        let query = self::query(query)?;
        runtime::into_asyncio(py, run_search(imbed, store, query, k), search_out)
    }

    /// Release the plugins and the cache. Later calls raise `ClosedError`.
    fn close(&self, py: Python<'_>) {
        let previous = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *state, State::Closed)
        };
        if let State::Open(Some((owner, imbed))) = previous {
            if owner == std::process::id() {
                // Dropping joins the plugin engine's threads: without the GIL.
                py.detach(move || drop(imbed));
            } else {
                std::mem::forget(imbed);
            }
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        let state = match &*self.state.lock().unwrap_or_else(PoisonError::into_inner) {
            State::Closed => "closed",
            State::Open(_) => "open",
        };
        format!("Imbed(config={:?}, {state})", self.config.source)
    }

    /// For the benchmark (`python/bench/overhead.py`): `n` text embeddings made by the Rust
    /// library in one call, without Python between them; the seconds they took.
    fn _bench_rust_embed_text(&self, py: Python<'_>, text: String, n: usize) -> PyResult<f64> {
        let imbed = self.live(py)?;
        let result = runtime::block_on(py, async move {
            let started = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(imbed.embed_text_for(&text, Purpose::Query).await?);
            }
            Ok::<_, imbed::Error>(started.elapsed().as_secs_f64())
        })?;
        result.map_err(errors::from_imbed)
    }
}

#[pymodule]
fn _imbed(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyImbed>()?;
    m.add_class::<PyEmbedding>()?;
    m.add_class::<types::PyProvenance>()?;
    m.add_class::<types::PyAttempt>()?;
    m.add_class::<types::PyPluginId>()?;
    m.add_class::<types::PyDescription>()?;
    m.add_class::<PyBase64>()?;
    m.add_class::<PySearchResult>()?;
    m.add_class::<types::PyHit>()?;
    m.add_class::<PyIndexReport>()?;
    m.add_class::<PyIndexSummary>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
