//! The generated WIT bindings of contract `imbed:plugin@0.1.0`, and their conversions into the
//! runtime's own types. Private to the runtime: everything outside it sees only the domain types
//! of [`crate::types`] and [`super::super::call`].

use crate::input::ValidImage;
use crate::runtime::call::{CallError, ModelInfo, PluginDescription};
use crate::types::{FailureKind, StructuredDescription};

wasmtime::component::bindgen!({
    world: "host-view",
    path: "../wit/0.1.0",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub(crate) use self::exports::imbed::plugin::{describer, embedder, image_embedder, plugin};
pub(crate) use self::imbed::plugin::{host, http, types};
use self::types as wit;

impl From<wit::Error> for CallError {
    fn from(e: wit::Error) -> Self {
        match e {
            wit::Error::Unavailable(m) => CallError::new(FailureKind::Unavailable, m),
            wit::Error::ModelNotFound(m) => CallError::new(FailureKind::ModelNotFound, m),
            wit::Error::BadInput(m) => CallError::new(FailureKind::BadInput, m),
            wit::Error::Timeout(m) => CallError::new(FailureKind::Timeout, m),
            wit::Error::Other(m) => CallError::new(FailureKind::Other, m),
        }
    }
}

impl From<wit::ModelInfo> for ModelInfo {
    fn from(m: wit::ModelInfo) -> Self {
        ModelInfo {
            model: m.model_id,
            dimensions: m.dimensions.map(|d| d as usize),
            space: m.space_id.into(),
            inference: None,
        }
    }
}

impl From<describer::Description> for PluginDescription {
    fn from(d: describer::Description) -> Self {
        PluginDescription {
            text: d.text,
            model: d.model_id,
            structured: d.structured.map(|s| StructuredDescription {
                objects: s.objects,
                visible_text: s.visible_text,
                tags: s.tags,
            }),
        }
    }
}

pub(crate) fn to_wit_image(img: &ValidImage) -> wit::Image {
    wit::Image {
        data: img.data.to_vec(),
        mime_type: img.mime_type.to_string(),
        width: img.width,
        height: img.height,
    }
}
