//! The library's domain types as frozen Python classes, converted once at the boundary.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// `None` or the quoted text, as Python writes an optional string.
fn optional(value: &Option<String>) -> String {
    match value {
        Some(v) => format!("{v:?}"),
        None => "None".into(),
    }
}

/// One chain step that was tried and did not answer.
#[pyclass(frozen, get_all, name = "Attempt", module = "imbed")]
#[derive(Clone)]
pub struct PyAttempt {
    step: usize,
    step_kind: String,
    plugin: Option<String>,
    kind: String,
    message: String,
}

impl From<&imbed::Attempt> for PyAttempt {
    fn from(a: &imbed::Attempt) -> Self {
        PyAttempt {
            step: a.step,
            step_kind: a.step_kind.to_string(),
            plugin: a.plugin.clone(),
            kind: a.kind.to_string(),
            message: a.message.clone(),
        }
    }
}

#[pymethods]
impl PyAttempt {
    fn __repr__(&self) -> String {
        format!(
            "Attempt(step={}, step_kind={:?}, plugin={}, kind={:?}, message={:?})",
            self.step,
            self.step_kind,
            optional(&self.plugin),
            self.kind,
            self.message
        )
    }

    fn __str__(&self) -> String {
        let plugin = self
            .plugin
            .as_ref()
            .map(|p| format!(", plugin {p:?}"))
            .unwrap_or_default();
        format!(
            "step {} ({}{plugin}): {}: {}",
            self.step, self.step_kind, self.kind, self.message
        )
    }
}

/// A plugin as it names itself.
#[pyclass(frozen, get_all, name = "PluginId", module = "imbed")]
#[derive(Clone)]
pub struct PyPluginId {
    key: String,
    name: String,
    version: String,
}

impl From<&imbed::PluginId> for PyPluginId {
    fn from(p: &imbed::PluginId) -> Self {
        PyPluginId {
            key: p.key.clone(),
            name: p.name.clone(),
            version: p.version.clone(),
        }
    }
}

#[pymethods]
impl PyPluginId {
    fn __repr__(&self) -> String {
        format!(
            "PluginId(key={:?}, name={:?}, version={:?})",
            self.key, self.name, self.version
        )
    }
}

/// The text that was embedded, and who wrote it.
#[pyclass(frozen, get_all, name = "Description", module = "imbed")]
#[derive(Clone)]
pub struct PyDescription {
    text: String,
    source: String,
    model: Option<String>,
    purpose: Option<String>,
    prefix: Option<String>,
}

impl From<&imbed::Description> for PyDescription {
    fn from(d: &imbed::Description) -> Self {
        let source = match d.source {
            imbed::DescriptionSource::Model => "model",
            imbed::DescriptionSource::Caller => "caller",
            imbed::DescriptionSource::Query => "query",
        };
        PyDescription {
            text: d.text.clone(),
            source: source.into(),
            model: d.model.clone(),
            purpose: d.purpose.map(|p| p.to_string()),
            prefix: d.prefix.clone(),
        }
    }
}

#[pymethods]
impl PyDescription {
    fn __repr__(&self) -> String {
        format!(
            "Description(text={:?}, source={:?}, model={})",
            self.text,
            self.source,
            optional(&self.model)
        )
    }
}

/// Where a vector came from: the answering step, plugin, model and space, and every step
/// tried before it.
#[pyclass(frozen, get_all, name = "Provenance", module = "imbed")]
#[derive(Clone)]
pub struct PyProvenance {
    step: usize,
    step_kind: String,
    plugin: PyPluginId,
    model: String,
    space: String,
    dimensions: usize,
    description: Option<PyDescription>,
    degraded: bool,
    cached: bool,
    attempts: Vec<PyAttempt>,
}

impl From<&imbed::Provenance> for PyProvenance {
    fn from(p: &imbed::Provenance) -> Self {
        PyProvenance {
            step: p.step,
            step_kind: p.step_kind.to_string(),
            plugin: (&p.plugin).into(),
            model: p.model.clone(),
            space: p.space.to_string(),
            dimensions: p.dimensions,
            description: p.description.as_ref().map(Into::into),
            degraded: p.degraded,
            cached: p.cached,
            attempts: p.attempts.iter().map(Into::into).collect(),
        }
    }
}

#[pymethods]
impl PyProvenance {
    fn __repr__(&self) -> String {
        format!(
            "Provenance(step={}, step_kind={:?}, plugin={:?}, model={:?}, space={:?}, degraded={}, attempts={})",
            self.step,
            self.step_kind,
            self.plugin.key,
            self.model,
            self.space,
            if self.degraded { "True" } else { "False" },
            self.attempts.len()
        )
    }
}

/// An embedding vector and where it came from. Vectors are L2-normalised; two are comparable
/// exactly when their `space` is equal.
#[pyclass(frozen, name = "Embedding", module = "imbed")]
pub struct PyEmbedding {
    pub vector: Vec<f32>,
    pub space: String,
    provenance: Py<PyProvenance>,
}

impl PyEmbedding {
    /// Convert a library embedding (the provenance is built once, here).
    pub fn new(py: Python<'_>, e: &imbed::Embedding) -> PyResult<Self> {
        Ok(PyEmbedding {
            vector: e.vector.clone(),
            space: e.provenance.space.to_string(),
            provenance: Py::new(py, PyProvenance::from(&e.provenance))?,
        })
    }
}

#[pymethods]
impl PyEmbedding {
    /// The vector as a list of floats.
    #[getter]
    fn vector(&self) -> Vec<f32> {
        self.vector.clone()
    }

    /// The vector as little-endian f32 bytes: `numpy.frombuffer(e.vector_bytes, "<f4")`.
    #[getter]
    fn vector_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let bytes: Vec<u8> = self.vector.iter().flat_map(|x| x.to_le_bytes()).collect();
        PyBytes::new(py, &bytes)
    }

    #[getter]
    fn space(&self) -> &str {
        &self.space
    }

    #[getter]
    fn dimensions(&self) -> usize {
        self.vector.len()
    }

    #[getter]
    fn degraded(&self, py: Python<'_>) -> bool {
        self.provenance.bind(py).get().degraded
    }

    #[getter]
    fn provenance(&self, py: Python<'_>) -> Py<PyProvenance> {
        self.provenance.clone_ref(py)
    }

    /// Cosine similarity with `other`; raises `SpaceMismatchError` when the two are of
    /// different spaces, whose vectors mean nothing to each other.
    fn similarity(&self, other: PyRef<'_, PyEmbedding>) -> PyResult<f32> {
        if self.space != other.space || self.vector.len() != other.vector.len() {
            return Err(crate::errors::new(
                "SpaceMismatchError",
                format!(
                    "cannot compare a vector of space {:?} with one of space {:?}: embed both with the same chain",
                    self.space, other.space
                ),
            ));
        }
        Ok(imbed::search::dot(&self.vector, &other.vector))
    }

    fn __len__(&self) -> usize {
        self.vector.len()
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let p = self.provenance.bind(py).get();
        format!(
            "Embedding(space={:?}, dimensions={}, step_kind={:?}, degraded={})",
            self.space,
            self.vector.len(),
            p.step_kind,
            if p.degraded { "True" } else { "False" }
        )
    }
}

/// Base64 image text (raw, or a `data:` URI), for `embed_image`: a plain `str` is a path, a
/// URL or a `data:` URI, never guessed to be base64.
#[pyclass(frozen, get_all, name = "Base64", module = "imbed")]
pub struct PyBase64 {
    pub text: String,
}

#[pymethods]
impl PyBase64 {
    #[new]
    fn new(text: String) -> Self {
        PyBase64 { text }
    }

    fn __repr__(&self) -> String {
        format!("Base64(<{} characters>)", self.text.len())
    }
}

/// One search result.
#[pyclass(frozen, get_all, name = "Hit", module = "imbed")]
#[derive(Clone)]
pub struct PyHit {
    image: String,
    paths: Vec<std::path::PathBuf>,
    score: f32,
}

#[pymethods]
impl PyHit {
    fn __repr__(&self) -> String {
        format!(
            "Hit(score={:.4}, image={:?}, paths={:?})",
            self.score, self.image, self.paths
        )
    }
}

/// A search's answer: the space searched, how many vectors it holds, the hits best first.
#[pyclass(frozen, get_all, name = "SearchResult", module = "imbed")]
pub struct PySearchResult {
    space: String,
    method: String,
    searched: usize,
    hits: Vec<PyHit>,
}

impl From<imbed::search::SearchResult> for PySearchResult {
    fn from(r: imbed::search::SearchResult) -> Self {
        let method = match r.method {
            imbed::search::Method::Exact => "exact",
            imbed::search::Method::Approximate => "approximate",
            imbed::search::Method::Auto => "auto",
        };
        PySearchResult {
            space: r.space,
            method: method.into(),
            searched: r.searched,
            hits: r
                .hits
                .into_iter()
                .map(|h| PyHit {
                    image: h.image,
                    paths: h.paths,
                    score: h.score,
                })
                .collect(),
        }
    }
}

#[pymethods]
impl PySearchResult {
    fn __len__(&self) -> usize {
        self.hits.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "SearchResult(space={:?}, method={:?}, searched={}, hits={})",
            self.space,
            self.method,
            self.searched,
            self.hits.len()
        )
    }
}

/// What happened to one file of an index run; `status` is one of `embedded`, `unchanged`,
/// `known-content`, `upgraded`, `still-degraded`, `failed`.
#[pyclass(frozen, get_all, name = "IndexReport", module = "imbed")]
pub struct PyIndexReport {
    path: std::path::PathBuf,
    status: String,
    space: Option<String>,
    degraded: bool,
    message: Option<String>,
}

impl From<&imbed::index::ItemReport> for PyIndexReport {
    fn from(r: &imbed::index::ItemReport) -> Self {
        use imbed::index::Outcome;
        let (status, space, degraded, message) = match &r.outcome {
            Outcome::Embedded {
                space, degraded, ..
            } => ("embedded", Some(space.clone()), *degraded, None),
            Outcome::Unchanged => ("unchanged", None, false, None),
            Outcome::KnownContent => ("known-content", None, false, None),
            Outcome::Upgraded { space } => ("upgraded", Some(space.clone()), false, None),
            Outcome::StillDegraded { space } => ("still-degraded", Some(space.clone()), true, None),
            Outcome::Failed { message } => ("failed", None, false, Some(message.clone())),
        };
        PyIndexReport {
            path: r.path.clone(),
            status: status.into(),
            space,
            degraded,
            message,
        }
    }
}

#[pymethods]
impl PyIndexReport {
    fn __repr__(&self) -> String {
        format!(
            "IndexReport(path={:?}, status={:?})",
            self.path, self.status
        )
    }
}

/// The totals of an index run.
#[pyclass(frozen, get_all, name = "IndexSummary", module = "imbed")]
pub struct PyIndexSummary {
    total: u64,
    embedded: u64,
    unchanged: u64,
    known_content: u64,
    upgraded: u64,
    still_degraded: u64,
    degraded: u64,
    failed: u64,
    skipped: Vec<String>,
}

impl PyIndexSummary {
    pub fn new(s: &imbed::index::Summary, skipped: Vec<String>) -> Self {
        PyIndexSummary {
            total: s.total,
            embedded: s.embedded,
            unchanged: s.unchanged,
            known_content: s.known_content,
            upgraded: s.upgraded,
            still_degraded: s.still_degraded,
            degraded: s.degraded,
            failed: s.failed,
            skipped,
        }
    }
}

#[pymethods]
impl PyIndexSummary {
    fn __repr__(&self) -> String {
        format!(
            "IndexSummary(total={}, embedded={}, unchanged={}, known_content={}, failed={})",
            self.total, self.embedded, self.unchanged, self.known_content, self.failed
        )
    }
}
