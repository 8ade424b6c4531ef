//! The contract's types as plain Rust: what a plugin receives and returns.
//!
//! They mirror `wit/0.1.0/types.wit` and the describer's records field for field; the export
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
    /// Anything else, including a bad setting.
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
