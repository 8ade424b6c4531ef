//! What a plugin call answers, in the host's own terms: the generated WIT types are converted
//! into these in [`super::contract`], and nothing outside the runtime sees a generated type.

use crate::types::{FailureKind, Inference, SpaceId, StructuredDescription};

/// Why a plugin call did not produce a usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallError {
    pub kind: FailureKind,
    pub message: String,
    /// Native inference (wasi-nn) that ran during the failed call.
    pub inference: Option<Inference>,
}

impl CallError {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        CallError {
            kind,
            message: message.into(),
            inference: None,
        }
    }
}

/// One item of a batch: its vector, or why this item has none.
pub(crate) type ItemResult = Result<Vec<f32>, CallError>;

/// A model as a plugin reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModelInfo {
    pub model: String,
    pub dimensions: Option<usize>,
    pub space: SpaceId,
    /// On the copy returned with a batch: what ran natively (wasi-nn) to answer it.
    pub inference: Option<Inference>,
}

/// What a describer wrote.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PluginDescription {
    pub text: String,
    pub model: String,
    pub structured: Option<StructuredDescription>,
}

/// The roles a component can serve, from what it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Roles {
    /// Exports `describer`.
    pub describer: bool,
    /// Exports `embedder`.
    pub text_embedder: bool,
    /// Exports `image-embedder`.
    pub image_embedder: bool,
}
