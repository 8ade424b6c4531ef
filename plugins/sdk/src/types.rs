//! The contract's types as plain Rust: what a plugin receives and returns.
//!
//! They mirror `wit/0.2.0/types.wit` and the describer's records field for field; the export
//! glue converts them to and from the generated bindings, which stay private.

use std::fmt;

/// One embedding vector. The host rejects vectors containing NaN or infinity, all-zero vectors
/// and vectors whose length differs from the reported dimensions, and L2-normalises the rest.
pub type Vector = Vec<f32>;

/// The answer to a batch: the outer error fails the whole batch (backend down, model missing);
/// otherwise exactly one entry per input, in order, each a vector or that input's own error.
pub type Batch = Result<Vec<Result<Vector, Error>>, Error>;

/// Why a plugin could not do what was asked.
///
/// The host decides from the case alone whether the chain moves on and what it tells the user;
/// the message is shown to a person and should say what to do
/// ("is Ollama running? start it with `ollama serve`").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The backend (a server, a device) cannot be reached or refuses work right now; trying
    /// again later may succeed. Within one request the host does not ask this role again.
    Unavailable(String),
    /// The configured model does not exist or its files are missing or corrupt: say how to get it.
    ModelNotFound(String),
    /// This input cannot be processed by this plugin (empty text, an image it cannot read).
    BadInput(String),
    /// The backend did not answer in time.
    Timeout(String),
    /// A setting of the plugin's config section is wrong: name the key and what it accepts.
    BadSetting(String),
    /// Anything else.
    Other(String),
}

impl Error {
    /// [`Error::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::Unavailable(message.into())
    }

    /// [`Error::ModelNotFound`].
    pub fn model_not_found(message: impl Into<String>) -> Self {
        Error::ModelNotFound(message.into())
    }

    /// [`Error::BadInput`].
    pub fn bad_input(message: impl Into<String>) -> Self {
        Error::BadInput(message.into())
    }

    /// [`Error::Timeout`].
    pub fn timeout(message: impl Into<String>) -> Self {
        Error::Timeout(message.into())
    }

    /// [`Error::BadSetting`].
    pub fn bad_setting(message: impl Into<String>) -> Self {
        Error::BadSetting(message.into())
    }

    /// [`Error::Other`].
    pub fn other(message: impl Into<String>) -> Self {
        Error::Other(message.into())
    }

    /// The case as the contract spells it: `unavailable`, `model-not-found`, `bad-input`,
    /// `timeout` or `other`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Unavailable(_) => "unavailable",
            Error::ModelNotFound(_) => "model-not-found",
            Error::BadInput(_) => "bad-input",
            Error::Timeout(_) => "timeout",
            Error::BadSetting(_) => "bad-setting",
            Error::Other(_) => "other",
        }
    }

    /// The message shown to a person.
    pub fn message(&self) -> &str {
        match self {
            Error::Unavailable(m)
            | Error::ModelNotFound(m)
            | Error::BadInput(m)
            | Error::Timeout(m)
            | Error::BadSetting(m)
            | Error::Other(m) => m,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for Error {}

/// Who a plugin is, for provenance and `imbed plugins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// Short stable name, lowercase, e.g. `ollama`, `hash`.
    pub name: String,
    /// The plugin's own version (semver), independent of the contract version.
    pub version: String,
}

impl PluginInfo {
    /// A name and a version.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        PluginInfo {
            name: name.into(),
            version: version.into(),
        }
    }
}

/// What model an embedder uses and which vector space its output belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// The model as the backend names it, e.g. `nomic-embed-text`.
    pub model_id: String,
    /// Length of every vector; `None` when known only from the first output (the host then
    /// holds every later vector to that first length).
    pub dimensions: Option<u32>,
    /// The embedding space: two vectors are comparable exactly when their space ids are equal,
    /// so change it whenever the numbers would change (model, revision, dimensions, algorithm).
    /// Convention: `<family>/<model>[@<revision>][:<dimensions>]`.
    pub space_id: String,
}

impl ModelInfo {
    /// A model in a space, dimensions unknown until the first vector.
    pub fn new(model_id: impl Into<String>, space_id: impl Into<String>) -> Self {
        ModelInfo {
            model_id: model_id.into(),
            dimensions: None,
            space_id: space_id.into(),
        }
    }

    /// The same, with every vector `dimensions` long.
    pub fn with_dimensions(mut self, dimensions: u32) -> Self {
        self.dimensions = Some(dimensions);
        self
    }
}

/// The prefixes a model wants before texts of each purpose (nomic-embed-text:
/// `search_document: ` and `search_query: `); empty for a model that takes texts as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskPrefixes(Vec<(Purpose, String)>);

impl TaskPrefixes {
    /// No prefixes: every text goes as it is.
    pub fn none() -> Self {
        TaskPrefixes::default()
    }

    /// The same, prefixing texts of `purpose` with `prefix` (an empty prefix removes it).
    pub fn with(mut self, purpose: Purpose, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.0.retain(|(p, _)| *p != purpose);
        if !prefix.is_empty() {
            self.0.push((purpose, prefix));
        }
        self
    }

    /// The prefix for `purpose`, if any.
    pub fn get(&self, purpose: Purpose) -> Option<&str> {
        self.0
            .iter()
            .find(|(p, _)| *p == purpose)
            .map(|(_, prefix)| prefix.as_str())
    }

    /// Whether no purpose gets a prefix.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each purpose with its prefix.
    pub fn iter(&self) -> impl Iterator<Item = (Purpose, &str)> {
        self.0.iter().map(|(p, s)| (*p, s.as_str()))
    }

    /// A short tag naming these prefixes, for the space id (`tp1a2b3c4d`), or `None` without
    /// prefixes. Vectors of prefixed texts are not comparable with vectors of the same model
    /// embedded bare or with other prefixes, so a space id must say which prefixes made it.
    pub fn space_tag(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let mut sorted: Vec<(String, &str)> = self
            .0
            .iter()
            .map(|(p, s)| (format!("{p:?}"), s.as_str()))
            .collect();
        sorted.sort();
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let mut h: u32 = 0x811c_9dc5;
        for (purpose, prefix) in sorted {
            for b in purpose.bytes().chain([0]).chain(prefix.bytes()).chain([0]) {
                h ^= u32::from(b);
                h = h.wrapping_mul(0x0100_0193);
            }
        }
        Some(format!("tp{h:08x}"))
    }

    /// The text the model gets for `text` embedded as `purpose`: the purpose's prefix in front,
    /// unless the text already starts with any of these prefixes (a caller who followed the
    /// model card is never prefixed twice). The host applies the same rule to key its cache.
    pub fn prepare(&self, purpose: Purpose, text: &str) -> String {
        match self.get(purpose) {
            Some(prefix) if !self.0.iter().any(|(_, p)| text.starts_with(p.as_str())) => {
                format!("{prefix}{text}")
            }
            _ => text.to_string(),
        }
    }
}

/// What a batch of texts is embedded for. Asymmetric models embed a document and a query for it
/// differently; symmetric models ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Purpose {
    /// The text exactly as given.
    None,
    /// A text to be found later: a description.
    Document,
    /// A text to search with.
    Query,
    /// A text to classify.
    Classification,
    /// A text to cluster.
    Clustering,
}

/// How one thing a plugin depends on stands right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// Works.
    Ok,
    /// Works, not at full strength.
    Degraded,
    /// Does not work until someone acts on the fix.
    Failing,
    /// Could not be checked.
    Unknown,
}

/// One check of a plugin's health: a server, a model, a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// What was checked, short: `server`, `model llava`.
    pub name: String,
    /// How it stands.
    pub status: HealthStatus,
    /// What was found, for a person.
    pub detail: String,
    /// What to do when it is not ok: "run `ollama pull llava`".
    pub fix: Option<String>,
}

impl HealthCheck {
    /// A check that passed.
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        HealthCheck {
            name: name.into(),
            status: HealthStatus::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A check that failed, with what to do.
    pub fn failing(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        HealthCheck {
            name: name.into(),
            status: HealthStatus::Failing,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// A check that passed with a reservation, with what to do about it.
    pub fn degraded(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        HealthCheck {
            status: HealthStatus::Degraded,
            ..HealthCheck::failing(name, detail, fix)
        }
    }

    /// A check that could not be made.
    pub fn unknown(name: impl Into<String>, detail: impl Into<String>) -> Self {
        HealthCheck {
            status: HealthStatus::Unknown,
            ..HealthCheck::ok(name, detail)
        }
    }
}

/// The encodings a plugin receives: the host re-encodes anything else to PNG first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// `image/png`
    Png,
    /// `image/jpeg`
    Jpeg,
}

/// An image the host has already read, decoded once and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The encoded file (PNG or JPEG bytes), exactly as `mime_type` says.
    pub data: Vec<u8>,
    /// `image/png` or `image/jpeg`.
    pub mime_type: String,
    /// Width in pixels, checked by decoding.
    pub width: u32,
    /// Height in pixels, checked by decoding.
    pub height: u32,
}

impl Image {
    /// The encoding, from `mime_type`; a bad-input error for anything but PNG and JPEG (the
    /// host promises those two, so this fails only for a host that breaks the contract).
    pub fn format(&self) -> Result<ImageFormat, Error> {
        match self.mime_type.as_str() {
            "image/png" => Ok(ImageFormat::Png),
            "image/jpeg" => Ok(ImageFormat::Jpeg),
            other => Err(Error::bad_input(format!(
                "unsupported image type {other}: the contract promises image/png or image/jpeg"
            ))),
        }
    }

    /// Decode the pixels with the `image` crate (feature `image`); a bad-input error when they
    /// do not decode.
    #[cfg(feature = "image")]
    pub fn decode(&self) -> Result<image::DynamicImage, Error> {
        let format = match self.format()? {
            ImageFormat::Png => image::ImageFormat::Png,
            ImageFormat::Jpeg => image::ImageFormat::Jpeg,
        };
        image::load_from_memory_with_format(&self.data, format)
            .map_err(|e| Error::bad_input(format!("cannot decode the image: {e}")))
    }
}

/// Fields a describer may extract when configured to answer in a structured way. Empty lists
/// and `None` mean "not provided", never "none seen".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Structured {
    /// Objects seen in the image.
    pub objects: Vec<String>,
    /// Text visible in the image, verbatim.
    pub visible_text: Option<String>,
    /// Short keywords for the scene.
    pub tags: Vec<String>,
}

/// What a vision model said about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// The description in plain prose: the text that gets embedded.
    pub text: String,
    /// The model that wrote it, as the backend names it.
    pub model_id: String,
    /// The structured fields, when asked for and answered validly.
    pub structured: Option<Structured>,
}

impl Description {
    /// A plain description by `model_id`.
    pub fn new(text: impl Into<String>, model_id: impl Into<String>) -> Self {
        Description {
            text: text.into(),
            model_id: model_id.into(),
            structured: None,
        }
    }

    /// The same, with structured fields.
    pub fn with_structured(mut self, structured: Structured) -> Self {
        self.structured = Some(structured);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_case_and_keep_the_message() {
        let e = Error::model_not_found("run `ollama pull llava`");
        assert_eq!(e.kind(), "model-not-found");
        assert_eq!(e.message(), "run `ollama pull llava`");
        assert_eq!(e.to_string(), "model-not-found: run `ollama pull llava`");
    }

    #[test]
    fn prepare_prefixes_once() {
        let m = TaskPrefixes::none()
            .with(Purpose::Document, "search_document: ")
            .with(Purpose::Query, "search_query: ");
        assert_eq!(m.prepare(Purpose::Query, "cat"), "search_query: cat");
        assert_eq!(m.prepare(Purpose::Document, "cat"), "search_document: cat");
        assert_eq!(m.prepare(Purpose::None, "cat"), "cat");
        assert_eq!(
            m.prepare(Purpose::Query, "search_query: cat"),
            "search_query: cat"
        );
        assert_eq!(
            m.prepare(Purpose::Query, "search_document: cat"),
            "search_document: cat"
        );
        assert_eq!(TaskPrefixes::none().prepare(Purpose::Query, "cat"), "cat");
        assert_eq!(TaskPrefixes::none().space_tag(), None);
        let tag = m.space_tag().unwrap();
        assert!(tag.starts_with("tp") && tag.len() == 10, "{tag}");
        let other = m.clone().with(Purpose::Query, "q: ");
        assert_ne!(other.space_tag(), m.space_tag());
    }

    #[test]
    fn only_png_and_jpeg_are_images() {
        let mut img = Image {
            data: vec![],
            mime_type: "image/jpeg".into(),
            width: 1,
            height: 1,
        };
        assert_eq!(img.format(), Ok(ImageFormat::Jpeg));
        img.mime_type = "image/gif".into();
        assert!(matches!(img.format(), Err(Error::BadInput(m)) if m.contains("image/gif")));
    }
}
