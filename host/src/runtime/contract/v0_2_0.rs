//! The generated WIT bindings of contract `imbed:plugin@0.2.0`, the newest the host serves, and
//! their conversions into the runtime's own types. The host functions are implemented against
//! this version ([`crate::runtime::host_fns`]); older versions delegate to them. Private to the
//! runtime: everything outside it sees only the domain types.

use wasmtime::component::{Instance as WasmInstance, InstancePre};
use wasmtime::Store;

use crate::input::ValidImage;
use crate::runtime::call::{
    CallError, HealthReport, ItemResult, ModelInfo, PluginDescription, PluginInfo, Roles,
};
use crate::runtime::sandbox::PluginState;
use crate::types::{FailureKind, HealthCheck, HealthStatus, Purpose, StructuredDescription};

wasmtime::component::bindgen!({
    world: "host-view",
    path: "../wit/0.2.0",
    imports: { default: async | trappable },
    exports: { default: async },
});

use self::exports::imbed::plugin::{describer, embedder, image_embedder, plugin};
pub(crate) use self::imbed::plugin::{host, http, types};
use self::types as wit;

impl From<wit::Error> for CallError {
    fn from(e: wit::Error) -> Self {
        match e {
            wit::Error::Unavailable(m) => CallError::new(FailureKind::Unavailable, m),
            wit::Error::ModelNotFound(m) => CallError::new(FailureKind::ModelNotFound, m),
            wit::Error::BadInput(m) => CallError::new(FailureKind::BadInput, m),
            wit::Error::Timeout(m) => CallError::new(FailureKind::Timeout, m),
            wit::Error::BadSetting(m) => CallError::new(FailureKind::BadSetting, m),
            wit::Error::Other(m) => CallError::new(FailureKind::Other, m),
        }
    }
}

impl From<Purpose> for wit::Purpose {
    fn from(p: Purpose) -> Self {
        match p {
            Purpose::None => wit::Purpose::None,
            Purpose::Document => wit::Purpose::Document,
            Purpose::Query => wit::Purpose::Query,
            Purpose::Classification => wit::Purpose::Classification,
            Purpose::Clustering => wit::Purpose::Clustering,
        }
    }
}

impl From<wit::Purpose> for Purpose {
    fn from(p: wit::Purpose) -> Self {
        match p {
            wit::Purpose::None => Purpose::None,
            wit::Purpose::Document => Purpose::Document,
            wit::Purpose::Query => Purpose::Query,
            wit::Purpose::Classification => Purpose::Classification,
            wit::Purpose::Clustering => Purpose::Clustering,
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
            task_prefixes: m
                .task_prefixes
                .into_iter()
                .map(|t| (t.purpose.into(), t.prefix))
                .collect(),
        }
    }
}

impl From<wit::HealthCheck> for HealthCheck {
    fn from(c: wit::HealthCheck) -> Self {
        HealthCheck {
            name: c.name,
            status: match c.status {
                wit::HealthStatus::Ok => HealthStatus::Ok,
                wit::HealthStatus::Degraded => HealthStatus::Degraded,
                wit::HealthStatus::Failing => HealthStatus::Failing,
                wit::HealthStatus::Unknown => HealthStatus::Unknown,
            },
            detail: c.detail,
            fix: c.fix,
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

/// Where each role's exports are in a 0.2.0 component, found once at load.
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

/// A live 0.2.0 instance's exports.
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

    pub(crate) async fn health(&self, store: &mut Store<PluginState>) -> Answer<HealthReport> {
        Ok(self
            .plugin
            .call_health(store)
            .await?
            .map(|r| Some(r.checks.into_iter().map(HealthCheck::from).collect()))
            .map_err(CallError::from))
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

    pub(crate) async fn embed_texts(
        &self,
        store: &mut Store<PluginState>,
        texts: &[String],
        purpose: Purpose,
    ) -> Answer<Vec<ItemResult>> {
        let Some(guest) = &self.embedder else {
            return Ok(Err(missing("a text embedder")));
        };
        Ok(items(
            guest.call_embed_texts(store, texts, purpose.into()).await?,
        ))
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

    pub(crate) async fn cache_identity(
        &self,
        store: &mut Store<PluginState>,
    ) -> Answer<Option<Vec<(String, String)>>> {
        let Some(guest) = &self.describer else {
            return Ok(Err(missing("a describer")));
        };
        Ok(guest
            .call_cache_identity(store)
            .await?
            .map(Some)
            .map_err(CallError::from))
    }
}
