//! The plugin contract as the host speaks it: one module per WIT version, each with its generated
//! bindings kept private and converted to the runtime's types right there. Used only by the
//! runtime; may use `crate::types` and `crate::input` (the image a plugin is handed).

use wasmtime::component::Component;
use wasmtime::Engine;

mod v0_1_0;

pub(crate) use v0_1_0::{
    describer, embedder, host, http, image_embedder, plugin, to_wit_image, types as wit, HostView,
};

/// The contract version this host serves.
pub(crate) const CONTRACT_VERSION: &str = "0.1.0";

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
