//! The generated WIT bindings of contract `imbed:plugin@0.1.0`, and their conversions into the
//! runtime's own types. Private to the runtime: everything outside it sees only the domain types
//! of [`crate::types`] and [`super::super::call`].
//!
//! 0.1.0 is served through the newest contract's host functions (its imports delegate to
//! [`super::v0_2_0`]'s) and answers the runtime's calls as a 0.1.0 plugin can: it embeds every
//! text as given whatever the purpose, reports no task prefixes, no health and no description
//! cache identity (the host falls back to what it did before 0.2.0).

use wasmtime::component::{Instance as WasmInstance, InstancePre};
use wasmtime::Store;

use super::v0_2_0 as newest;
use crate::input::ValidImage;
use crate::runtime::call::{
    CallError, HealthReport, ItemResult, ModelInfo, PluginDescription, PluginInfo, Roles,
};
use crate::runtime::sandbox::PluginState;
use crate::types::{FailureKind, Purpose, StructuredDescription};

wasmtime::component::bindgen!({
    world: "host-view",
    path: "../wit/0.1.0",
    imports: { default: async | trappable },
    exports: { default: async },
});

use self::exports::imbed::plugin::{describer, embedder, image_embedder, plugin};
use self::imbed::plugin::{host, http, types};
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
            task_prefixes: Vec::new(),
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

fn to_wit_image(img: &ValidImage) -> wit::Image {
    wit::Image {
        data: img.data.to_vec(),
        mime_type: img.mime_type.to_string(),
        width: img.width,
        height: img.height,
    }
}

fn items(
    batch: Result<Vec<Result<Vec<f32>, wit::Error>>, wit::Error>,
) -> Result<Vec<ItemResult>, CallError> {
    batch
        .map(|items| {
            items
                .into_iter()
                .map(|i| i.map_err(CallError::from))
                .collect()
        })
        .map_err(CallError::from)
}

// The host functions a 0.1.0 plugin imports are the newest contract's, whose interfaces are
// the same field for field: each call converts and delegates, so the grant checks and budgets
// live in one place.

impl wit::Host for PluginState {}

impl host::Host for PluginState {
    async fn log(&mut self, level: host::LogLevel, message: String) -> wasmtime::Result<()> {
        use newest::host::LogLevel as L;
        let level = match level {
            host::LogLevel::Trace => L::Trace,
            host::LogLevel::Debug => L::Debug,
            host::LogLevel::Info => L::Info,
            host::LogLevel::Warn => L::Warn,
            host::LogLevel::Error => L::Error,
        };
        newest::host::Host::log(self, level, message).await
    }

    async fn get_setting(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        newest::host::Host::get_setting(self, key).await
    }

    async fn setting_keys(&mut self) -> wasmtime::Result<Vec<String>> {
        newest::host::Host::setting_keys(self).await
    }
}

impl http::Host for PluginState {
    async fn send(
        &mut self,
        req: http::Request,
    ) -> wasmtime::Result<Result<http::Response, http::HttpError>> {
        let req = newest::http::Request {
            method: req.method,
            url: req.url,
            headers: req.headers,
            body: req.body,
            timeout_ms: req.timeout_ms,
        };
        let answer = newest::http::Host::send(self, req).await?;
        Ok(answer
            .map(|r| http::Response {
                status: r.status,
                headers: r.headers,
                body: r.body,
            })
            .map_err(|e| {
                use newest::http::HttpError as E;
                match e {
                    E::Denied(m) => http::HttpError::Denied(m),
                    E::Unreachable(m) => http::HttpError::Unreachable(m),
                    E::Timeout(m) => http::HttpError::Timeout(m),
                    E::Invalid(m) => http::HttpError::Invalid(m),
                    E::TooLarge(m) => http::HttpError::TooLarge(m),
                    E::Other(m) => http::HttpError::Other(m),
                }
            }))
    }
}

/// Where each role's exports are in a 0.1.0 component, found once at load.
pub(crate) struct Indices {
    plugin: plugin::GuestIndices,
    describer: Option<describer::GuestIndices>,
    embedder: Option<embedder::GuestIndices>,
    image_embedder: Option<image_embedder::GuestIndices>,
}

impl Indices {
    pub(crate) fn new(pre: &InstancePre<PluginState>) -> Result<Self, String> {
        Ok(Indices {
            plugin: plugin::GuestIndices::new(pre).map_err(|e| e.to_string())?,
            describer: describer::GuestIndices::new(pre).ok(),
            embedder: embedder::GuestIndices::new(pre).ok(),
            image_embedder: image_embedder::GuestIndices::new(pre).ok(),
        })
    }

    pub(crate) fn roles(&self) -> Roles {
        Roles {
            describer: self.describer.is_some(),
            text_embedder: self.embedder.is_some(),
            image_embedder: self.image_embedder.is_some(),
        }
    }

    pub(crate) fn load(
        &self,
        store: &mut Store<PluginState>,
        instance: &WasmInstance,
    ) -> wasmtime::Result<Exports> {
        Ok(Exports {
            plugin: self.plugin.load(&mut *store, instance)?,
            describer: self
                .describer
                .as_ref()
                .map(|i| i.load(&mut *store, instance))
                .transpose()?,
            embedder: self
                .embedder
                .as_ref()
                .map(|i| i.load(&mut *store, instance))
                .transpose()?,
            image_embedder: self
                .image_embedder
                .as_ref()
                .map(|i| i.load(&mut *store, instance))
                .transpose()?,
        })
    }
}

/// A live 0.1.0 instance's exports.
pub(crate) struct Exports {
    plugin: plugin::Guest,
    describer: Option<describer::Guest>,
    embedder: Option<embedder::Guest>,
    image_embedder: Option<image_embedder::Guest>,
}

type Answer<T> = wasmtime::Result<Result<T, CallError>>;

fn missing(what: &str) -> CallError {
    CallError::new(
        FailureKind::NotApplicable,
        format!("the plugin does not export {what}"),
    )
}

impl Exports {
    pub(crate) async fn info(&self, store: &mut Store<PluginState>) -> Answer<PluginInfo> {
        let i = self.plugin.call_info(store).await?;
        Ok(Ok(PluginInfo {
            name: i.name,
            version: i.version,
        }))
    }

    pub(crate) async fn warm(&self, store: &mut Store<PluginState>) -> Answer<()> {
        Ok(self.plugin.call_warm(store).await?.map_err(CallError::from))
    }

    /// 0.1.0 has no health export: the host's own checks stand in.
    pub(crate) async fn health(&self, _store: &mut Store<PluginState>) -> Answer<HealthReport> {
        Ok(Ok(None))
    }

    pub(crate) async fn text_model(&self, store: &mut Store<PluginState>) -> Answer<ModelInfo> {
        let Some(guest) = &self.embedder else {
            return Ok(Err(missing("a text embedder")));
        };
        Ok(guest
            .call_text_model(store)
            .await?
            .map(ModelInfo::from)
            .map_err(CallError::from))
    }

    /// The purpose is dropped: a 0.1.0 plugin cannot be told, and embeds the texts as given.
    pub(crate) async fn embed_texts(
        &self,
        store: &mut Store<PluginState>,
        texts: &[String],
        _purpose: Purpose,
    ) -> Answer<Vec<ItemResult>> {
        let Some(guest) = &self.embedder else {
            return Ok(Err(missing("a text embedder")));
        };
        Ok(items(guest.call_embed_texts(store, texts).await?))
    }

    pub(crate) async fn image_model(&self, store: &mut Store<PluginState>) -> Answer<ModelInfo> {
        let Some(guest) = &self.image_embedder else {
            return Ok(Err(missing("an image embedder")));
        };
        Ok(guest
            .call_image_model(store)
            .await?
            .map(ModelInfo::from)
            .map_err(CallError::from))
    }

    pub(crate) async fn embed_images(
        &self,
        store: &mut Store<PluginState>,
        images: &[ValidImage],
    ) -> Answer<Vec<ItemResult>> {
        let Some(guest) = &self.image_embedder else {
            return Ok(Err(missing("an image embedder")));
        };
        let images: Vec<wit::Image> = images.iter().map(to_wit_image).collect();
        Ok(items(guest.call_embed_images(store, &images).await?))
    }

    pub(crate) async fn describe(
        &self,
        store: &mut Store<PluginState>,
        image: &ValidImage,
        prompt: Option<&str>,
    ) -> Answer<PluginDescription> {
        let Some(guest) = &self.describer else {
            return Ok(Err(missing("a describer")));
        };
        let image = to_wit_image(image);
        Ok(guest
            .call_describe(store, &image, prompt)
            .await?
            .map(PluginDescription::from)
            .map_err(CallError::from))
    }

    /// 0.1.0 describers cannot say what determines their descriptions.
    pub(crate) async fn cache_identity(
        &self,
        _store: &mut Store<PluginState>,
    ) -> Answer<Option<Vec<(String, String)>>> {
        Ok(Ok(None))
    }
}
