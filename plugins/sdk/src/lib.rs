//! Write imbed plugins in Rust.
//!
//! An imbed plugin is a WebAssembly component implementing the contract in `wit/0.2.0`
//! (`imbed:plugin@0.2.0`). This crate keeps the generated bindings out of sight: a plugin is a
//! type implementing [`Plugin`] and any of the roles [`Embedder`], [`ImageEmbedder`] and
//! [`Describer`] with plain Rust types, and one [`export_plugin!`] line that makes the component
//! export exactly those roles (the host reads a component's exports to know what it can do).
//! [`http`], [`settings`] and [`log`] wrap what the host offers; [`nn`] runs named graphs on the
//! host's native inference runtime (wasi-nn) when the plugin is granted them.
//!
//! ```
//! use imbed_plugin_sdk::{export_plugin, settings, Embedder, Error, ModelInfo, Plugin, Vector};
//!
//! /// Counts letters: a toy text embedder.
//! #[derive(Default)]
//! struct Letters;
//!
//! impl Plugin for Letters {
//!     const NAME: &'static str = "letters";
//!     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
//! }
//!
//! impl Embedder for Letters {
//!     fn text_model(&mut self) -> Result<ModelInfo, Error> {
//!         Ok(ModelInfo::new("letters", "letters/count@1:26").with_dimensions(26))
//!     }
//!
//!     fn embed_text(&mut self, text: &str) -> Result<Vector, Error> {
//!         let scale: f32 = settings::parse_in("scale", 1.0, 0.1..=10.0)?;
//!         let mut v = vec![0.0; 26];
//!         for c in text.to_ascii_lowercase().bytes().filter(u8::is_ascii_lowercase) {
//!             v[usize::from(c - b'a')] += scale;
//!         }
//!         if v.iter().all(|x| *x == 0.0) {
//!             return Err(Error::bad_input("the text has no letters to count"));
//!         }
//!         Ok(v)
//!     }
//! }
//!
//! export_plugin!(Letters: embedder);
//! # fn main() {
//! #     assert_eq!(Letters.embed_text("Abba").unwrap()[..2], [2.0, 2.0]);
//! # }
//! ```
//!
//! Build it for `wasm32-wasip2` (`cargo build --release --target wasm32-wasip2`, crate type
//! `cdylib`) and the `.wasm` is a component; `imbed plugins check` says what it exports. On
//! other targets [`export_plugin!`] only checks that the type implements the roles it lists,
//! so the plugin's logic is unit-tested natively (`cargo test --target <host triple>`).
//!
//! The plugin's crate must depend on this one under its own name, `imbed_plugin_sdk` (the
//! export macro names it), and the contract is read from the repository's `wit/0.2.0` next to
//! this crate (or from `$IMBED_WIT_DIR` when this crate is built elsewhere).
#![deny(missing_docs)]

mod glue;
pub mod http;
pub mod log;
pub mod nn;
pub mod prefixes;
pub mod settings;
mod types;

pub use types::{
    Batch, Description, Error, HealthCheck, HealthStatus, Image, ImageFormat, ModelInfo,
    PluginInfo, Purpose, Structured, TaskPrefixes, Vector,
};

/// The bindings of the imports every plugin shares (host, http, types). Public only so that the
/// code `export_plugin!` writes into the plugin's crate can name them; not part of the API.
#[cfg(target_family = "wasm")]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        // A world of imports only: the exports are generated in the plugin's crate, for the
        // roles it implements, by `export_plugin!`.
        inline: "
            package imbed:plugin-sdk;
            world sdk {
                import imbed:plugin/types@0.2.0;
                import imbed:plugin/host@0.2.0;
                import imbed:plugin/http@0.2.0;
            }
        ",
        world: "sdk",
        path: "../../wit/0.2.0",
        // The types interface has no functions; its records are used by the plugin's exports.
        generate_unused_types: true,
        // The interfaces come from the contract package, not the inline one.
        generate_all,
    });
}

// `__imbed_generate!`, written by build.rs with the contract's absolute path.
include!(concat!(env!("OUT_DIR"), "/generate.rs"));

/// Not part of the API: what the code `export_plugin!` writes into a plugin's crate uses.
#[doc(hidden)]
pub mod __private {
    #[cfg(target_family = "wasm")]
    pub use crate::bindings;
    pub use crate::glue::*;
    pub use wit_bindgen;
}

/// Everything a plugin usually needs, in one `use`.
pub mod prelude {
    pub use crate::http::{Request, Response};
    pub use crate::{
        embed_non_blank, export_plugin, log, settings, single, Batch, Describer, Description,
        Embedder, Error, HealthCheck, HealthStatus, Image, ImageEmbedder, ModelInfo, Plugin,
        PluginInfo, Purpose, Structured, TaskPrefixes, Vector,
    };
}

/// What every plugin is: a name, a version, and a way to get ready.
///
/// The host creates one value per plugin instance, with `Default`, on the instance's first
/// call, and keeps it for the instance's lifetime: fields are the place for caches and clients.
/// An instance answers one call at a time, hence `&mut self`.
pub trait Plugin: Default + 'static {
    /// Short stable name, lowercase (`hash`, `ollama`): shown by `imbed plugins` and in every
    /// vector's provenance.
    const NAME: &'static str;
    /// The plugin's own version (semver), usually `env!("CARGO_PKG_VERSION")`.
    const VERSION: &'static str;

    /// Name and version; built from [`Plugin::NAME`] and [`Plugin::VERSION`].
    fn info() -> PluginInfo {
        PluginInfo::new(Self::NAME, Self::VERSION)
    }

    /// Get ready for work (load a model). The host calls it once per instance at start when the
    /// config says `warm = true`; a failure is logged and the instance stays usable. Does
    /// nothing by default.
    fn warm(&mut self) -> Result<(), Error> {
        Ok(())
    }

    /// Whether the plugin can work now, and if not what to do: one [`HealthCheck`] per thing
    /// it depends on (the server, then each model), in the order a person should fix them.
    /// `imbed doctor` prints it and `/health` reports it. Cheap and without side effects: no
    /// model loading, no embedding. By default nothing is checked (an empty report).
    fn health(&mut self) -> Result<Vec<HealthCheck>, Error> {
        Ok(Vec::new())
    }
}

/// Text to vectors (steps `describe-then-embed`, `description`, and text queries).
pub trait Embedder: Plugin {
    /// The model and space of the vectors. May contact the backend; called before the first
    /// embed.
    fn text_model(&mut self) -> Result<ModelInfo, Error>;

    /// The prefixes the model wants before texts of each purpose, from the settings alone (no
    /// backend contact: it is asked before every batch). The SDK applies them before
    /// [`Embedder::embed_texts`] sees the texts and reports them to the host with
    /// [`Embedder::text_model`], so what the host is told and what the model gets cannot
    /// differ. A plugin that starts prefixing a model it used to embed bare must change that
    /// model's space id too. None by default.
    fn task_prefixes(&mut self) -> Result<TaskPrefixes, Error> {
        Ok(TaskPrefixes::none())
    }

    /// Embed one text, exactly as given (any task prefix is already on it).
    fn embed_text(&mut self, text: &str) -> Result<Vector, Error>;

    /// Embed a batch of texts for `purpose`: exactly one entry per text, in order. The texts
    /// arrive with the prefix of [`Embedder::task_prefixes`] already applied (the SDK does
    /// it), so most plugins ignore `purpose`; it is there for backends that take the task
    /// another way (an API field). By default each text goes through [`Embedder::embed_text`]
    /// on its own; override it when the backend takes batches.
    fn embed_texts(&mut self, texts: Vec<String>, purpose: Purpose) -> Batch {
        let _ = purpose;
        Ok(texts.iter().map(|t| self.embed_text(t)).collect())
    }
}

/// The answer of a one-item batch, for plugins whose `embed_text` or `embed_image` sends a
/// batch of one through their batch path.
pub fn single(batch: Batch) -> Result<Vector, Error> {
    batch.and_then(|mut items| {
        items
            .pop()
            .unwrap_or_else(|| Err(Error::Other("no answer for the item".into())))
    })
}

/// Embed the texts that have something in them with one call of `embed` (given them in order)
/// and answer each empty or blank text with `bad-input` in its place, for backends that take
/// batches: an empty item costs no request, and a backend that refuses empty input cannot fail
/// the whole batch over it. `embed` is not called when no text is left.
pub fn embed_non_blank(texts: &[String], embed: impl FnOnce(&[&str]) -> Batch) -> Batch {
    let wanted: Vec<&str> = texts
        .iter()
        .map(String::as_str)
        .filter(|t| !t.trim().is_empty())
        .collect();
    let mut answers = if wanted.is_empty() {
        Vec::new()
    } else {
        embed(&wanted)?
    }
    .into_iter();
    Ok(texts
        .iter()
        .map(|t| {
            if t.trim().is_empty() {
                Err(Error::BadInput("the text is empty".into()))
            } else {
                answers
                    .next()
                    .unwrap_or_else(|| Err(Error::Other("no answer for the text".into())))
            }
        })
        .collect())
}

/// Images to vectors without going through text (steps `image-embed` and `hash`).
pub trait ImageEmbedder: Plugin {
    /// The model and space of the vectors. A plugin that is also an [`Embedder`] with the same
    /// space id promises its text and image vectors are comparable (as CLIP's are).
    fn image_model(&mut self) -> Result<ModelInfo, Error>;

    /// Embed one image.
    fn embed_image(&mut self, image: &Image) -> Result<Vector, Error>;

    /// Embed a batch: exactly one entry per image, in order. By default each image goes through
    /// [`ImageEmbedder::embed_image`] on its own; override it when the backend takes batches.
    fn embed_images(&mut self, images: Vec<Image>) -> Batch {
        Ok(images.iter().map(|i| self.embed_image(i)).collect())
    }
}

/// Image to text: a vision model writes a description (step `describe-then-embed`).
pub trait Describer: Plugin {
    /// Describe one image; `prompt` overrides the plugin's configured prompt when given.
    fn describe(&mut self, image: Image, prompt: Option<String>) -> Result<Description, Error>;

    /// What determines the descriptions besides the image and the `prompt` argument, as
    /// key/value pairs: the model (and its weights' digest when known), the configured prompt,
    /// sampling options. The host caches descriptions under them (with the plugin's name), so
    /// list everything that changes a description and nothing that does not (the server's
    /// address, timeouts). By default nothing: right only for a describer without settings.
    fn cache_identity(&mut self) -> Result<Vec<(String, String)>, Error> {
        Ok(Vec::new())
    }
}

/// Export a [`Plugin`] type as the component's implementation of the roles listed.
///
/// ```text
/// export_plugin!(MyPlugin: embedder);
/// export_plugin!(MyPlugin: embedder, image_embedder);
/// export_plugin!(MyPlugin: describer, embedder);
/// ```
///
/// The roles are `describer`, `embedder` and `image_embedder`, in any order, each at most once;
/// the type must implement the matching traits. The component exports `imbed:plugin/plugin`
/// and exactly those roles, which is how the host learns what the plugin can do. Use it once
/// per crate. On targets other than wasm it only checks the trait implementations, so the
/// crate still builds and tests natively.
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty : describer $(,)?) => {
        $crate::__export_plugin!($ty, [world: "describer-plugin",], [describer]);
    };
    ($ty:ty : embedder $(,)?) => {
        $crate::__export_plugin!($ty, [world: "embedder-plugin",], [embedder]);
    };
    ($ty:ty : image_embedder $(,)?) => {
        $crate::__export_plugin!($ty, [world: "image-embedder-plugin",], [image_embedder]);
    };
    ($ty:ty : describer, embedder $(,)?) => {
        $crate::__export_plugin!($ty, [world: "describer-embedder-plugin",], [describer embedder]);
    };
    ($ty:ty : embedder, describer $(,)?) => { $crate::export_plugin!($ty: describer, embedder); };
    ($ty:ty : embedder, image_embedder $(,)?) => {
        $crate::__export_plugin!($ty, [world: "dual-embedder-plugin",], [embedder image_embedder]);
    };
    ($ty:ty : image_embedder, embedder $(,)?) => { $crate::export_plugin!($ty: embedder, image_embedder); };
    ($ty:ty : describer, image_embedder $(,)?) => {
        // The contract has no world for this pair: a world of our own that exports the same
        // contract interfaces gives the same component exports.
        $crate::__export_plugin!($ty, [
            inline: "package imbed:plugin-sdk;
                world describer-image-embedder-plugin {
                    include imbed:plugin/imports@0.2.0;
                    export imbed:plugin/plugin@0.2.0;
                    export imbed:plugin/describer@0.2.0;
                    export imbed:plugin/image-embedder@0.2.0;
                }",
            world: "describer-image-embedder-plugin",
        ], [describer image_embedder]);
    };
    ($ty:ty : image_embedder, describer $(,)?) => { $crate::export_plugin!($ty: describer, image_embedder); };
    ($ty:ty : describer, embedder, image_embedder $(,)?) => {
        $crate::__export_plugin!($ty, [world: "backend",], [describer embedder image_embedder]);
    };
    ($ty:ty : describer, image_embedder, embedder $(,)?) => { $crate::export_plugin!($ty: describer, embedder, image_embedder); };
    ($ty:ty : embedder, describer, image_embedder $(,)?) => { $crate::export_plugin!($ty: describer, embedder, image_embedder); };
    ($ty:ty : embedder, image_embedder, describer $(,)?) => { $crate::export_plugin!($ty: describer, embedder, image_embedder); };
    ($ty:ty : image_embedder, describer, embedder $(,)?) => { $crate::export_plugin!($ty: describer, embedder, image_embedder); };
    ($ty:ty : image_embedder, embedder, describer $(,)?) => { $crate::export_plugin!($ty: describer, embedder, image_embedder); };
    ($ty:ty : $($other:tt)*) => {
        ::core::compile_error!(::core::concat!(
            "export_plugin!: list the roles the type implements, each once, from `describer`, `embedder` and `image_embedder` (got `",
            ::core::stringify!($($other)*),
            "`), e.g. export_plugin!(MyPlugin: embedder, image_embedder)"
        ));
    };
}

/// The body of [`export_plugin!`]: world options, then the roles.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_plugin {
    ($ty:ty, [$($world:tt)*], [$($role:ident)*]) => {
        // Named outside the module below, where the caller's paths resolve.
        #[cfg(target_family = "wasm")]
        #[doc(hidden)]
        type __ImbedPluginType = $ty;

        #[cfg(target_family = "wasm")]
        #[doc(hidden)]
        mod __imbed_plugin_export {
            ::imbed_plugin_sdk::__imbed_generate!($($world)*);

            struct __ImbedGlue;

            $crate::__export_role!(plugin);
            $($crate::__export_role!($role);)*

            export!(__ImbedGlue);
        }

        #[cfg(not(target_family = "wasm"))]
        const _: () = {
            fn __imbed_check<P: $crate::Plugin>() {}
            let _ = __imbed_check::<$ty>;
            $($crate::__check_role!($role, $ty);)*
        };
    };
}

/// Fails to compile unless the type implements the role's trait.
#[doc(hidden)]
#[macro_export]
macro_rules! __check_role {
    (describer, $ty:ty) => {{
        fn __imbed_role<P: $crate::Describer>() {}
        let _ = __imbed_role::<$ty>;
    }};
    (embedder, $ty:ty) => {{
        fn __imbed_role<P: $crate::Embedder>() {}
        let _ = __imbed_role::<$ty>;
    }};
    (image_embedder, $ty:ty) => {{
        fn __imbed_role<P: $crate::ImageEmbedder>() {}
        let _ = __imbed_role::<$ty>;
    }};
}

/// The generated `Guest` implementation of one exported interface, delegating to the SDK.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_role {
    (plugin) => {
        impl exports::imbed::plugin::plugin::Guest for __ImbedGlue {
            fn info() -> $crate::__private::bindings::imbed::plugin::types::PluginInfo {
                $crate::__private::info::<super::__ImbedPluginType>()
            }
            fn warm() -> ::core::result::Result<(), $crate::__private::bindings::imbed::plugin::types::Error> {
                $crate::__private::warm::<super::__ImbedPluginType>()
            }
            fn health() -> ::core::result::Result<
                $crate::__private::bindings::imbed::plugin::types::HealthReport,
                $crate::__private::bindings::imbed::plugin::types::Error,
            > {
                $crate::__private::health::<super::__ImbedPluginType>()
            }
        }
    };
    (embedder) => {
        impl exports::imbed::plugin::embedder::Guest for __ImbedGlue {
            fn text_model() -> ::core::result::Result<
                $crate::__private::bindings::imbed::plugin::types::ModelInfo,
                $crate::__private::bindings::imbed::plugin::types::Error,
            > {
                $crate::__private::text_model::<super::__ImbedPluginType>()
            }
            fn embed_texts(
                texts: ::std::vec::Vec<::std::string::String>,
                purpose: $crate::__private::bindings::imbed::plugin::types::Purpose,
            ) -> ::core::result::Result<
                ::std::vec::Vec<::core::result::Result<::std::vec::Vec<f32>, $crate::__private::bindings::imbed::plugin::types::Error>>,
                $crate::__private::bindings::imbed::plugin::types::Error,
            > {
                $crate::__private::embed_texts::<super::__ImbedPluginType>(texts, purpose)
            }
        }
    };
    (image_embedder) => {
        impl exports::imbed::plugin::image_embedder::Guest for __ImbedGlue {
            fn image_model() -> ::core::result::Result<
                $crate::__private::bindings::imbed::plugin::types::ModelInfo,
                $crate::__private::bindings::imbed::plugin::types::Error,
            > {
                $crate::__private::image_model::<super::__ImbedPluginType>()
            }
            fn embed_images(
                images: ::std::vec::Vec<$crate::__private::bindings::imbed::plugin::types::Image>,
            ) -> ::core::result::Result<
                ::std::vec::Vec<::core::result::Result<::std::vec::Vec<f32>, $crate::__private::bindings::imbed::plugin::types::Error>>,
                $crate::__private::bindings::imbed::plugin::types::Error,
            > {
                $crate::__private::embed_images::<super::__ImbedPluginType>(images)
            }
        }
    };
    (describer) => {
        impl exports::imbed::plugin::describer::Guest for __ImbedGlue {
            fn describe(
                image: $crate::__private::bindings::imbed::plugin::types::Image,
                prompt: ::core::option::Option<::std::string::String>,
            ) -> ::core::result::Result<
                exports::imbed::plugin::describer::Description,
                $crate::__private::bindings::imbed::plugin::types::Error,
            > {
                // The describer's records are generated in this crate, so they are built here.
                $crate::__private::describe::<super::__ImbedPluginType>(image, prompt).map(|d| {
                    exports::imbed::plugin::describer::Description {
                        text: d.text,
                        model_id: d.model_id,
                        structured: d.structured.map(|s| exports::imbed::plugin::describer::Structured {
                            objects: s.objects,
                            visible_text: s.visible_text,
                            tags: s.tags,
                        }),
                    }
                })
            }
            fn cache_identity() -> ::core::result::Result<
                ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                $crate::__private::bindings::imbed::plugin::types::Error,
            > {
                $crate::__private::cache_identity::<super::__ImbedPluginType>()
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_texts_answer_bad_input_in_place_and_are_not_sent() {
        let texts: Vec<String> = ["a", "", "bb", " \n", "ccc"].map(String::from).to_vec();
        let mut sent = Vec::new();
        let out = embed_non_blank(&texts, |wanted| {
            sent = wanted.iter().map(|t| t.to_string()).collect();
            Ok(wanted.iter().map(|t| Ok(vec![t.len() as f32])).collect())
        })
        .unwrap();
        assert_eq!(sent, ["a", "bb", "ccc"]);
        let lengths: Vec<Option<f32>> = out.iter().map(|r| r.as_ref().ok().map(|v| v[0])).collect();
        assert_eq!(lengths, [Some(1.0), None, Some(2.0), None, Some(3.0)]);
        assert!(matches!(out[1], Err(Error::BadInput(_))));

        let blank = ["", "  "].map(String::from).to_vec();
        let out = embed_non_blank(&blank, |_| panic!("nothing to send")).unwrap();
        assert!(out.iter().all(|r| matches!(r, Err(Error::BadInput(_)))));
        // A batch-wide failure stays batch-wide.
        assert!(embed_non_blank(&texts, |_| Err(Error::Unavailable("down".into()))).is_err());
    }
}
