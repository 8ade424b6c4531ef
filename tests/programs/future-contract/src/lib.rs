//! Exports `imbed:plugin/plugin@9.0.0`: the host must refuse it and name both versions.

wit_bindgen::generate!({ world: "later-contract", path: "wit" });

struct Later;

impl exports::imbed::plugin::plugin::Guest for Later {
    fn info() -> exports::imbed::plugin::plugin::PluginInfo {
        exports::imbed::plugin::plugin::PluginInfo {
            name: "future".into(),
            version: "9.0.0".into(),
        }
    }
}

export!(Later);
