//! Writes `$OUT_DIR/generate.rs`: the macro the export macro expands to, with the absolute path
//! of the contract's WIT folder in it.
//!
//! `wit_bindgen::generate!` resolves a relative `path` against the crate that invokes it, and
//! `export_plugin!` runs `generate!` inside the plugin's crate (so the component carries exactly
//! the world the plugin implements). The plugin's crate may live anywhere, so the path must be
//! absolute, and only this build script knows where the SDK, and the contract beside it, is.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=IMBED_WIT_DIR");
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let wit = match env::var_os("IMBED_WIT_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => manifest.join("../../wit/0.2.0"),
    };
    let wit = match wit.canonicalize() {
        Ok(p) if p.join("worlds.wit").is_file() => p,
        _ => {
            // A build script reports a failure by exiting non-zero with a message cargo shows.
            eprintln!(
                "error: the imbed plugin SDK needs the contract at {} (worlds.wit was not found there): \
                 keep plugins/sdk inside the imbed repository, or set IMBED_WIT_DIR to a copy of wit/0.2.0",
                wit.display()
            );
            std::process::exit(1);
        }
    };
    println!("cargo:rerun-if-changed={}", wit.display());
    let Some(wit_str) = wit.to_str() else {
        eprintln!(
            "error: the path of the contract, {}, is not UTF-8: move the repository",
            wit.display()
        );
        std::process::exit(1);
    };
    // `{:?}` writes a Rust string literal with every character escaped as needed.
    let source = format!(
        r#"/// Runs `wit_bindgen::generate!` for the contract with the SDK's shared imports; the rest of
/// the options come from [`export_plugin!`](crate::export_plugin).
#[doc(hidden)]
#[macro_export]
macro_rules! __imbed_generate {{
    ($($options:tt)*) => {{
        ::imbed_plugin_sdk::__private::wit_bindgen::generate!({{
            path: {wit:?},
            runtime_path: "::imbed_plugin_sdk::__private::wit_bindgen::rt",
            with: {{
                "imbed:plugin/types@0.2.0": ::imbed_plugin_sdk::__private::bindings::imbed::plugin::types,
                "imbed:plugin/host@0.2.0": ::imbed_plugin_sdk::__private::bindings::imbed::plugin::host,
                "imbed:plugin/http@0.2.0": ::imbed_plugin_sdk::__private::bindings::imbed::plugin::http,
            }},
            // For the inline world of export_plugin!, whose interfaces live in another package.
            generate_all,
            $($options)*
        }});
    }};
}}
"#,
        wit = wit_str
    );
    let out = Path::new(&env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("generate.rs");
    if let Err(e) = fs::write(&out, source) {
        eprintln!("error: cannot write {}: {e}", out.display());
        std::process::exit(1);
    }
}
