//! The host's own domain types. Generated WIT types never leave the `plugin` module: they are
//! converted into these at the boundary.

use serde::{Deserialize, Serialize};

/// An embedding vector together with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    /// The vector, L2-normalised by the host.
    pub vector: Vec<f32>,
    /// Which step, plugin, model and embedding space produced it, and what failed before.
    pub provenance: Provenance,
}

impl Embedding {
    /// Cosine similarity with another embedding of the same space, or `None` when the spaces
    /// differ: vectors from different spaces are never compared.
    pub fn similarity(&self, other: &Embedding) -> Option<f32> {
        if self.provenance.space != other.provenance.space
            || self.vector.len() != other.vector.len()
        {
            return None;
        }
        Some(
            self.vector
                .iter()
                .zip(&other.vector)
                .map(|(a, b)| a * b)
                .sum(),
        )
    }
}

/// The kind of a chain step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum StepKind {
    /// A describer writes a description; a text embedder embeds it.
    DescribeThenEmbed,
    /// An image embedder embeds the image directly.
    ImageEmbed,
    /// A text embedder embeds the description the caller supplied.
    Description,
    /// The last resort: the hash plugin.
    Hash,
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StepKind::DescribeThenEmbed => "describe-then-embed",
            StepKind::ImageEmbed => "image-embed",
            StepKind::Description => "description",
            StepKind::Hash => "hash",
        })
    }
}

/// A plugin as it names itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginId {
    /// The name under which the config lists the plugin (`[plugins.<key>]`).
    pub key: String,
    /// The name the plugin reports for itself.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
}

/// Where a vector came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Index of the answering step in the chain, from 0.
    pub step: usize,
    /// Kind of the answering step.
    pub step_kind: StepKind,
    /// The plugin that produced the vector.
    pub plugin: PluginId,
    /// The model that produced the vector.
    pub model: String,
    /// The embedding space; vectors are comparable exactly when these are equal.
    pub space: SpaceId,
    /// Length of the vector.
    pub dimensions: usize,
    /// The text that was embedded, when the vector was made from text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<Description>,
    /// True when a step before this one was tried and did not answer: the result may be
    /// upgraded later, once a better step answers again.
    pub degraded: bool,
    /// True when the persistent cache answered every plugin call behind this vector (nothing
    /// was computed this time).
    #[serde(default)]
    pub cached: bool,
    /// The steps tried before this one, and why each did not answer.
    pub attempts: Vec<Attempt>,
    /// Native inference behind the vector, when the plugin ran graphs on the host (wasi-nn);
    /// absent when everything ran inside the sandbox (or the cache answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference: Option<Inference>,
}

/// Graphs a plugin call ran natively on the host through the `wasi:nn` capability. The host
/// records this itself; the plugin cannot claim or hide it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inference {
    /// The native backend: `onnxruntime`.
    pub backend: String,
    /// The graph names that computed, in first-use order.
    pub graphs: Vec<String>,
    /// How many `compute` calls ran (one call may run a graph several times).
    pub runs: u32,
}

impl Inference {
    /// Count one run of `graph`.
    pub(crate) fn record(slot: &mut Option<Inference>, backend: &str, graph: &str) {
        let i = slot.get_or_insert_with(|| Inference {
            backend: backend.to_string(),
            graphs: Vec::new(),
            runs: 0,
        });
        if !i.graphs.iter().any(|g| g == graph) {
            i.graphs.push(graph.to_string());
        }
        i.runs += 1;
    }
}

/// Where a description came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DescriptionSource {
    /// A describer plugin wrote it.
    Model,
    /// The caller supplied it.
    Caller,
    /// The text was the input itself (`embed-text`).
    Query,
}

/// A text that was embedded, with its origin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// The text.
    pub text: String,
    /// Who wrote it.
    pub source: DescriptionSource,
    /// The describer plugin, when a model wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginId>,
    /// The vision model, when a model wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Structured fields, when the describer was asked for them and answered with them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub structured: Option<StructuredDescription>,
    /// What the text was embedded as (`document`, `query`, `none`); absent on records written
    /// before purposes existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<Purpose>,
    /// The task prefix the embedder put before the text (`search_document: `), when it put one:
    /// the model saw `prefix + text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// What a text is embedded for. Asymmetric models (nomic-embed-text, e5, mxbai-embed-large)
/// embed documents and queries with different task prefixes; the plugin applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Purpose {
    /// The text exactly as given (the OpenAI- and Ollama-compatible routes by default).
    None,
    /// A text to be found: a description of an image, by a describer or a caller.
    Document,
    /// A text to search with.
    Query,
    /// A text to classify.
    Classification,
    /// A text to cluster.
    Clustering,
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Purpose::None => "none",
            Purpose::Document => "document",
            Purpose::Query => "query",
            Purpose::Classification => "classification",
            Purpose::Clustering => "clustering",
        })
    }
}

/// How one thing a plugin depends on stands, as the plugin's `health` export says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthStatus {
    /// Works.
    Ok,
    /// Works, not at full strength.
    Degraded,
    /// Does not work until someone acts.
    Failing,
    /// Could not be checked (or the plugin's contract has no health export).
    Unknown,
}

/// One check of a plugin's health report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// What was checked: `server`, `model llava`.
    pub name: String,
    /// How it stands.
    pub status: HealthStatus,
    /// What was found.
    pub detail: String,
    /// What to do when it is not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Fields a describer extracted from an image.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StructuredDescription {
    /// Objects seen.
    pub objects: Vec<String>,
    /// Text visible in the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visible_text: Option<String>,
    /// Keywords for the scene.
    pub tags: Vec<String>,
}

/// Why a step did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The plugin's backend is unreachable or refuses work.
    Unavailable,
    /// The model is missing.
    ModelNotFound,
    /// The plugin could not process this input.
    BadInput,
    /// The plugin or its backend ran past the deadline.
    Timeout,
    /// The plugin reported some other failure.
    Other,
    /// A setting in the plugin's config section is wrong (contract 0.2.0 and later).
    BadSetting,
    /// The plugin file is missing or failed to load.
    NotInstalled,
    /// The plugin crashed (a trap: panic, unreachable, a failed host call).
    Trap,
    /// The plugin exceeded its memory cap.
    MemoryExceeded,
    /// The plugin returned output that breaks the contract (wrong length, NaN, wrong count).
    Malformed,
    /// The step answered in another embedding space than the config requires.
    SpaceMismatch,
    /// The step does not apply to this input (no caller description, no text side).
    NotApplicable,
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.write_str(s.as_ref().and_then(|v| v.as_str()).unwrap_or("other"))
    }
}

/// One step that was tried and did not answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Index of the step in the chain.
    pub step: usize,
    /// Kind of the step.
    pub step_kind: StepKind,
    /// The config key of the plugin that failed, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// What went wrong, as a category.
    pub kind: FailureKind,
    /// What went wrong, for a person.
    pub message: String,
    /// Native inference that ran during the failed call (wasi-nn), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference: Option<Inference>,
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {} ({}", self.step, self.step_kind)?;
        if let Some(p) = &self.plugin {
            write!(f, ", plugin {p:?}")?;
        }
        write!(f, "): {}: {}", self.kind, self.message)
    }
}

/// An embedding space id, such as `ollama/nomic-embed-text@0a109f422b47` or
/// `imbed-hash/text@v1:256`: a model, the weights' revision after `@`, and a dimension suffix
/// after `:`. Vectors are comparable exactly when their space ids are equal; [`SpaceId::meets`]
/// is the looser rule for a *requirement* (`[chain] require_space`, or a space id as the OpenAI
/// route's `model`). Reads as a `str` (through `Deref`), serialises as a plain string.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpaceId(String);

impl SpaceId {
    /// A space id as a plugin or a user wrote it.
    pub fn new(id: impl Into<String>) -> Self {
        SpaceId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether an answer in this space meets a requirement for space `required`. Space ids
    /// carry the weights' revision after `@`; a requirement written without one accepts any
    /// revision of that model, so a config need not change when the model is pulled again. The
    /// vectors still carry their full space, and only equal spaces are ever compared.
    pub fn meets(&self, required: &SpaceId) -> bool {
        let (found, required) = (self.as_str(), required.as_str());
        found == required || (!required.contains('@') && without_revision(found) == required)
    }
}

impl std::ops::Deref for SpaceId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SpaceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for SpaceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

// Debug prints the id as a quoted string, as messages (`{space:?}`) always have.
impl std::fmt::Debug for SpaceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::fmt::Display for SpaceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for SpaceId {
    fn from(id: String) -> Self {
        SpaceId(id)
    }
}

impl From<&str> for SpaceId {
    fn from(id: &str) -> Self {
        SpaceId(id.to_string())
    }
}

impl From<SpaceId> for String {
    fn from(id: SpaceId) -> Self {
        id.0
    }
}

impl PartialEq<str> for SpaceId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for SpaceId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for SpaceId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl PartialEq<SpaceId> for String {
    fn eq(&self, other: &SpaceId) -> bool {
        *self == other.0
    }
}

impl PartialEq<SpaceId> for &str {
    fn eq(&self, other: &SpaceId) -> bool {
        *self == other.0
    }
}

/// `space` without its `@revision` part (up to the next `:`, which starts a dimension suffix).
fn without_revision(space: &str) -> std::borrow::Cow<'_, str> {
    let Some(at) = space.find('@') else {
        return space.into();
    };
    let rest = &space[at + 1..];
    let tail = rest.find(':').map(|i| &rest[i..]).unwrap_or("");
    format!("{}{tail}", &space[..at]).into()
}

#[cfg(test)]
mod space_tests {
    use super::SpaceId;

    fn space_meets(found: &str, required: &str) -> bool {
        SpaceId::from(found).meets(&SpaceId::from(required))
    }

    #[test]
    fn a_requirement_without_revision_accepts_every_revision_and_nothing_else() {
        let ollama = "ollama/nomic-embed-text@0a109f422b47";
        assert!(space_meets(ollama, "ollama/nomic-embed-text"));
        assert!(space_meets(ollama, ollama));
        assert!(!space_meets(ollama, "ollama/nomic-embed-text@111111111111"));
        assert!(!space_meets(ollama, "ollama/nomic-embed"));
        assert!(!space_meets(ollama, "ollama/mxbai-embed-large"));
        assert!(space_meets("ollama/m@abc:256", "ollama/m:256"));
        assert!(!space_meets("ollama/m@abc:256", "ollama/m"));
        assert!(!space_meets("ollama/m@abc", "ollama/m:256"));
        assert!(space_meets(
            "ollama/nomic-embed-text",
            "ollama/nomic-embed-text"
        ));
        assert!(!space_meets(
            "ollama/nomic-embed-text",
            "ollama/nomic-embed-text@0a109f422b47"
        ));
    }
}
