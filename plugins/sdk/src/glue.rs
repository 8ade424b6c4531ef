//! What `export_plugin!` expands to calls into here: one plugin value per instance, and the
//! conversions between the domain types and the generated bindings.

use std::any::Any;
use std::cell::RefCell;

use crate::{Error, Plugin};

thread_local! {
    // A component instance runs one call at a time on one thread, and the host never calls back
    // into it while it is answering, so one slot holds the plugin for the instance's lifetime.
    // `dyn Any` because a generic static per plugin type does not exist in Rust.
    static PLUGIN: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Run `f` on this instance's plugin value, creating it with `Default` on the first call.
pub fn with_plugin<P: Plugin, R>(f: impl FnOnce(&mut P) -> Result<R, Error>) -> Result<R, Error> {
    PLUGIN.with(|slot| {
        let Ok(mut slot) = slot.try_borrow_mut() else {
            return Err(Error::other(
                "the plugin was called while it was still answering another call",
            ));
        };
        if !slot.as_ref().is_some_and(|p| p.is::<P>()) {
            *slot = Some(Box::new(P::default()));
        }
        match slot.as_mut().and_then(|p| p.downcast_mut::<P>()) {
            Some(plugin) => f(plugin),
            // Unreachable: the slot was just filled with a P.
            None => Err(Error::other("the plugin's state is of another type")),
        }
    })
}

#[cfg(target_family = "wasm")]
pub use self::wasm::*;

#[cfg(target_family = "wasm")]
mod wasm {
    use super::with_plugin;
    use crate::bindings::imbed::plugin::types as wit;
    use crate::{
        Describer, Description, Embedder, Error, HealthCheck, HealthStatus, Image, ImageEmbedder,
        ModelInfo, Plugin, Purpose, TaskPrefixes,
    };

    impl From<Error> for wit::Error {
        fn from(e: Error) -> Self {
            match e {
                Error::Unavailable(m) => wit::Error::Unavailable(m),
                Error::ModelNotFound(m) => wit::Error::ModelNotFound(m),
                Error::BadInput(m) => wit::Error::BadInput(m),
                Error::Timeout(m) => wit::Error::Timeout(m),
                Error::BadSetting(m) => wit::Error::BadSetting(m),
                Error::Other(m) => wit::Error::Other(m),
            }
        }
    }

    fn model_info(m: ModelInfo, prefixes: &TaskPrefixes) -> wit::ModelInfo {
        wit::ModelInfo {
            model_id: m.model_id,
            dimensions: m.dimensions,
            space_id: m.space_id,
            task_prefixes: prefixes
                .iter()
                .map(|(purpose, prefix)| wit::TaskPrefix {
                    purpose: purpose.into(),
                    prefix: prefix.to_string(),
                })
                .collect(),
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

    impl From<HealthCheck> for wit::HealthCheck {
        fn from(c: HealthCheck) -> Self {
            wit::HealthCheck {
                name: c.name,
                status: match c.status {
                    HealthStatus::Ok => wit::HealthStatus::Ok,
                    HealthStatus::Degraded => wit::HealthStatus::Degraded,
                    HealthStatus::Failing => wit::HealthStatus::Failing,
                    HealthStatus::Unknown => wit::HealthStatus::Unknown,
                },
                detail: c.detail,
                fix: c.fix,
            }
        }
    }

    impl From<wit::Image> for Image {
        fn from(i: wit::Image) -> Self {
            Image {
                data: i.data,
                mime_type: i.mime_type,
                width: i.width,
                height: i.height,
            }
        }
    }

    type WitBatch = Result<Vec<Result<Vec<f32>, wit::Error>>, wit::Error>;

    fn batch(b: crate::Batch) -> WitBatch {
        b.map(|items| items.into_iter().map(|i| i.map_err(Into::into)).collect())
            .map_err(Into::into)
    }

    /// `plugin.info`
    pub fn info<P: Plugin>() -> wit::PluginInfo {
        let i = P::info();
        wit::PluginInfo {
            name: i.name,
            version: i.version,
        }
    }

    /// `plugin.warm`
    pub fn warm<P: Plugin>() -> Result<(), wit::Error> {
        with_plugin(P::warm).map_err(Into::into)
    }

    /// `plugin.health`
    pub fn health<P: Plugin>() -> Result<wit::HealthReport, wit::Error> {
        with_plugin(P::health)
            .map(|checks| wit::HealthReport {
                checks: checks.into_iter().map(Into::into).collect(),
            })
            .map_err(Into::into)
    }

    /// `embedder.text-model`: the model, with the prefixes `embed_texts` will apply.
    pub fn text_model<P: Embedder>() -> Result<wit::ModelInfo, wit::Error> {
        with_plugin(|p: &mut P| {
            let model = p.text_model()?;
            Ok(model_info(model, &p.task_prefixes()?))
        })
        .map_err(Into::into)
    }

    /// `embedder.embed-texts`: the texts reach the plugin with the model's task prefix for
    /// `purpose` already applied, by the same rule the host keys its cache with.
    pub fn embed_texts<P: Embedder>(texts: Vec<String>, purpose: wit::Purpose) -> WitBatch {
        let purpose = Purpose::from(purpose);
        batch(with_plugin(|p: &mut P| {
            let prefixes = p.task_prefixes()?;
            let texts = if prefixes.is_empty() {
                texts
            } else {
                texts.iter().map(|t| prefixes.prepare(purpose, t)).collect()
            };
            p.embed_texts(texts, purpose)
        }))
    }

    /// `image-embedder.image-model`
    pub fn image_model<P: ImageEmbedder>() -> Result<wit::ModelInfo, wit::Error> {
        with_plugin(P::image_model)
            .map(|m| model_info(m, &TaskPrefixes::none()))
            .map_err(Into::into)
    }

    /// `image-embedder.embed-images`
    pub fn embed_images<P: ImageEmbedder>(images: Vec<wit::Image>) -> WitBatch {
        let images = images.into_iter().map(Image::from).collect();
        batch(with_plugin(|p: &mut P| p.embed_images(images)))
    }

    /// `describer.describe`; the macro converts the description into the plugin crate's own
    /// generated record.
    pub fn describe<P: Describer>(
        image: wit::Image,
        prompt: Option<String>,
    ) -> Result<Description, wit::Error> {
        with_plugin(|p: &mut P| p.describe(image.into(), prompt)).map_err(Into::into)
    }

    /// `describer.cache-identity`
    pub fn cache_identity<P: Describer>() -> Result<Vec<(String, String)>, wit::Error> {
        with_plugin(P::cache_identity).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Counter(u32);

    impl Plugin for Counter {
        const NAME: &'static str = "counter";
        const VERSION: &'static str = "1.2.3";
    }

    #[test]
    fn one_value_lives_across_calls_and_reentry_is_an_error() {
        assert_eq!(
            with_plugin(|c: &mut Counter| {
                c.0 += 1;
                Ok(c.0)
            }),
            Ok(1)
        );
        assert_eq!(
            with_plugin(|c: &mut Counter| {
                c.0 += 1;
                Ok(c.0)
            }),
            Ok(2)
        );
        let inner = with_plugin(|_: &mut Counter| Ok(with_plugin(|c: &mut Counter| Ok(c.0))));
        assert!(matches!(inner, Ok(Err(Error::Other(m))) if m.contains("still answering")));
        assert_eq!(Counter::info(), crate::PluginInfo::new("counter", "1.2.3"));
    }
}
