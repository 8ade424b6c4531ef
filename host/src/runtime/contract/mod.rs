//! The plugin contract as the host speaks it: one module per WIT version, each with its generated
//! bindings kept private and converted to the runtime's types right there. Used only by the
//! runtime; may use `crate::types` and `crate::input` (the image a plugin is handed).
//!
//! [`Indices`] and [`Exports`] hide which version a component targets: every call takes and
//! returns domain types, and an older version answers as well as it can (0.1.0 drops the
//! purpose and has no health or cache identity).

use wasmtime::component::{Component, HasSelf, Instance as WasmInstance, InstancePre, Linker};
use wasmtime::{Engine, Store};

use super::call::{
    CallError, HealthReport, ItemResult, ModelInfo, PluginDescription, PluginInfo, Roles,
};
use super::sandbox::PluginState;
use crate::input::ValidImage;
use crate::types::Purpose;

mod v0_1_0;
mod v0_2_0;

// The host functions are written against the newest version; older ones delegate to them.
pub(crate) use v0_2_0::{host, http, types as wit};

/// The contract versions this host serves, oldest first.
pub(crate) const SUPPORTED: &[&str] = &["0.1.0", "0.2.0"];

/// The newest contract version: what new plugins are built against.
pub(crate) const NEWEST: &str = "0.2.0";

/// The supported versions for a message: `imbed:plugin@0.1.0 and imbed:plugin@0.2.0`.
pub(crate) fn supported_list() -> String {
    let names: Vec<String> = SUPPORTED
        .iter()
        .map(|v| format!("imbed:plugin@{v}"))
        .collect();
    names.join(" and ")
}

/// The version of the `imbed:plugin` contract a component exports, from its export names.
pub(crate) fn contract_version(engine: &Engine, component: &Component) -> Option<String> {
    component
        .component_type()
        .exports(engine)
        .find_map(|(name, _)| {
            name.strip_prefix("imbed:plugin/plugin@")
                .map(str::to_string)
        })
}

/// Put every served version's host functions into the linker (each version's imports have
/// their own instance names, so they sit side by side).
pub(crate) fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    v0_1_0::HostView::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    v0_2_0::HostView::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    Ok(())
}

/// Where each role's exports are in a component, for the version it targets.
pub(crate) enum Indices {
    V0_1(v0_1_0::Indices),
    V0_2(v0_2_0::Indices),
}

/// A live instance's exports, for the version its component targets.
pub(crate) enum Exports {
    V0_1(v0_1_0::Exports),
    V0_2(v0_2_0::Exports),
}

impl Indices {
    /// The indices of a component exporting `version`, or why it cannot be served.
    pub(crate) fn new(version: &str, pre: &InstancePre<PluginState>) -> Result<Self, String> {
        match version {
            "0.1.0" => v0_1_0::Indices::new(pre).map(Indices::V0_1),
            "0.2.0" => v0_2_0::Indices::new(pre).map(Indices::V0_2),
            other => Err(format!(
                "imbed:plugin@{other} is not a version this host serves ({})",
                supported_list()
            )),
        }
    }

    pub(crate) fn roles(&self) -> Roles {
        match self {
            Indices::V0_1(i) => i.roles(),
            Indices::V0_2(i) => i.roles(),
        }
    }

    /// The contract version the component targets.
    pub(crate) fn version(&self) -> &'static str {
        match self {
            Indices::V0_1(_) => "0.1.0",
            Indices::V0_2(_) => "0.2.0",
        }
    }

    pub(crate) fn load(
        &self,
        store: &mut Store<PluginState>,
        instance: &WasmInstance,
    ) -> wasmtime::Result<Exports> {
        Ok(match self {
            Indices::V0_1(i) => Exports::V0_1(i.load(store, instance)?),
            Indices::V0_2(i) => Exports::V0_2(i.load(store, instance)?),
        })
    }
}

/// What each call answers: the outer error is a trap, the inner the plugin's own.
type Answer<T> = wasmtime::Result<Result<T, CallError>>;

/// Calls the same method on whichever version the exports are.
macro_rules! each_version {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            Exports::V0_1(e) => e.$method($($arg),*).await,
            Exports::V0_2(e) => e.$method($($arg),*).await,
        }
    };
}

impl Exports {
    pub(crate) async fn info(&self, store: &mut Store<PluginState>) -> Answer<PluginInfo> {
        each_version!(self.info(store))
    }

    pub(crate) async fn warm(&self, store: &mut Store<PluginState>) -> Answer<()> {
        each_version!(self.warm(store))
    }

    pub(crate) async fn health(&self, store: &mut Store<PluginState>) -> Answer<HealthReport> {
        each_version!(self.health(store))
    }

    pub(crate) async fn text_model(&self, store: &mut Store<PluginState>) -> Answer<ModelInfo> {
        each_version!(self.text_model(store))
    }

    pub(crate) async fn embed_texts(
        &self,
        store: &mut Store<PluginState>,
        texts: &[String],
        purpose: Purpose,
    ) -> Answer<Vec<ItemResult>> {
        each_version!(self.embed_texts(store, texts, purpose))
    }

    pub(crate) async fn image_model(&self, store: &mut Store<PluginState>) -> Answer<ModelInfo> {
        each_version!(self.image_model(store))
    }

    pub(crate) async fn embed_images(
        &self,
        store: &mut Store<PluginState>,
        images: &[ValidImage],
    ) -> Answer<Vec<ItemResult>> {
        each_version!(self.embed_images(store, images))
    }

    pub(crate) async fn describe(
        &self,
        store: &mut Store<PluginState>,
        image: &ValidImage,
        prompt: Option<&str>,
    ) -> Answer<PluginDescription> {
        each_version!(self.describe(store, image, prompt))
    }

    pub(crate) async fn cache_identity(
        &self,
        store: &mut Store<PluginState>,
    ) -> Answer<Option<Vec<(String, String)>>> {
        each_version!(self.cache_identity(store))
    }
}
