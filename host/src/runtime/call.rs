//! What a plugin call answers, in the host's own terms: the generated WIT types are converted
//! into these in [`super::contract`], and nothing outside the runtime sees a generated type.

use crate::types::{FailureKind, HealthCheck, Inference, Purpose, SpaceId, StructuredDescription};

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
    /// The task prefix the plugin puts before a text of each purpose (contract 0.2.0; a 0.1.0
    /// plugin has none: it embeds every text as given).
    pub task_prefixes: Vec<(Purpose, String)>,
}

impl ModelInfo {
    /// What the plugin sends the model for `text` embedded as `purpose`, and the prefix it put
    /// in front, if any. Mirrors the rule every 0.2.0 plugin follows: a text that already
    /// starts with one of the model's prefixes goes as it is, so a caller who followed the
    /// model card is not prefixed twice.
    pub(crate) fn sent_text(&self, purpose: Purpose, text: &str) -> (String, Option<String>) {
        let Some((_, prefix)) = self
            .task_prefixes
            .iter()
            .find(|(p, prefix)| *p == purpose && !prefix.is_empty())
        else {
            return (text.to_string(), None);
        };
        if self
            .task_prefixes
            .iter()
            .any(|(_, p)| !p.is_empty() && text.starts_with(p.as_str()))
        {
            return (text.to_string(), None);
        }
        (format!("{prefix}{text}"), Some(prefix.clone()))
    }
}

/// Who a plugin says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PluginInfo {
    pub name: String,
    pub version: String,
}

/// A plugin's answer to `health`: `None` for a contract version without the export.
pub(crate) type HealthReport = Option<Vec<HealthCheck>>;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn nomic() -> ModelInfo {
        ModelInfo {
            model: "nomic-embed-text".into(),
            dimensions: Some(768),
            space: "ollama/nomic-embed-text".into(),
            inference: None,
            task_prefixes: vec![
                (Purpose::Document, "search_document: ".into()),
                (Purpose::Query, "search_query: ".into()),
            ],
        }
    }

    #[test]
    fn sent_text_prefixes_once_and_only_for_a_purpose_with_a_prefix() {
        let m = nomic();
        assert_eq!(
            m.sent_text(Purpose::Query, "cat"),
            ("search_query: cat".into(), Some("search_query: ".into()))
        );
        assert_eq!(m.sent_text(Purpose::None, "cat"), ("cat".into(), None));
        assert_eq!(
            m.sent_text(Purpose::Clustering, "cat"),
            ("cat".into(), None)
        );
        // Already carrying any of the model's prefixes: sent unchanged.
        assert_eq!(
            m.sent_text(Purpose::Query, "search_query: cat"),
            ("search_query: cat".into(), None)
        );
        assert_eq!(
            m.sent_text(Purpose::Query, "search_document: cat"),
            ("search_document: cat".into(), None)
        );
    }
}
