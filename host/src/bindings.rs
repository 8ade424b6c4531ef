//! The generated WIT bindings. Private to the crate: everything outside `plugin` sees only the
//! domain types of [`crate::types`].

wasmtime::component::bindgen!({
    world: "host-view",
    path: "../wit/0.1.0",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub(crate) use self::exports::imbed::plugin::{describer, embedder, image_embedder, plugin};
pub(crate) use self::imbed::plugin::{host, http, types};
