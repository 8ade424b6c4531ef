//! The persistent cache around plugin calls: texts and images already embedded in a space, and
//! descriptions already written, are answered from the store; fresh answers are remembered.

use super::imbed::Imbed;
use super::walk::{Found, Role, StepError};
use crate::input::ValidImage;
use crate::runtime::{CallError, ItemResult, ModelInfo};
use crate::store::{self, Cache, StoreError};
use crate::types::{Description, FailureKind, PluginId, Purpose};

/// One text of a batch: its vector or error, whether the cache answered, and the task prefix
/// the model saw before it.
pub(super) struct TextItem {
    pub(super) result: ItemResult,
    pub(super) cached: bool,
    pub(super) prefix: Option<String>,
}

impl Imbed {
    /// Run a cache operation off the async threads (SQLite blocks). A cache failure is logged
    /// and treated as a miss: the cache may make imbed faster, never make it fail.
    pub(super) async fn cache<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Cache) -> std::result::Result<T, StoreError> + Send + 'static,
    ) -> Option<T> {
        let store = self.inner.store.clone()?;
        match tokio::task::spawn_blocking(move || op(&store)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::warn!("cache: {e}");
                None
            }
            Err(e) => {
                tracing::warn!("cache task failed: {e}");
                None
            }
        }
    }

    /// Embed `description.text` as `purpose`; the description comes back with the purpose and
    /// the prefix the plugin applied.
    pub(super) async fn embed_one_text(
        &self,
        key: &str,
        mut description: Description,
        purpose: Purpose,
    ) -> std::result::Result<Found, StepError> {
        let (plugin, model, mut items) = self
            .cached_text_batch(key, std::slice::from_ref(&description.text), purpose)
            .await?;
        let item = items.remove(0);
        description.purpose = Some(purpose);
        description.prefix = item.prefix;
        Ok(Found {
            plugin,
            model,
            vector: item.result.map_err(|e| StepError::of(key, e))?,
            description: Some(description),
            cached: item.cached,
        })
    }

    /// One text embedder, one batch: checks the space first (before any slow work), answers
    /// texts already embedded in that space from the cache, sends the rest to the plugin in one
    /// call and remembers them. Each item says whether the cache answered it and which task
    /// prefix the plugin put before it.
    ///
    /// The cache is keyed on the text the model sees (prefix included), not the text given: a
    /// vector of a bare text is not the vector of the same text as a document, so vectors
    /// embedded before a plugin started applying prefixes are never reused for prefixed texts.
    pub(super) async fn cached_text_batch(
        &self,
        key: &str,
        texts: &[String],
        purpose: Purpose,
    ) -> std::result::Result<(PluginId, ModelInfo, Vec<TextItem>), StepError> {
        let plugin = self.plugin(key)?;
        let model = plugin
            .text_model()
            .await
            .map_err(|e| StepError::in_role(key, Role::Text, e))?;
        self.precheck(key, &model)?;
        let (keys, prefixes): (Vec<String>, Vec<Option<String>>) = texts
            .iter()
            .map(|t| {
                let (sent, prefix) = model.sent_text(purpose, t);
                (store::text_key(&sent), prefix)
            })
            .unzip();
        let space = model.space.clone();
        let found = {
            let keys = keys.clone();
            self.cache(move |s| {
                keys.iter()
                    .map(|k| s.text_vector(k, &space))
                    .collect::<std::result::Result<Vec<_>, _>>()
            })
            .await
            .unwrap_or_else(|| vec![None; texts.len()])
        };
        let mut out: Vec<Option<(ItemResult, bool)>> = found
            .into_iter()
            .map(|v| {
                v.filter(|v| model.dimensions.is_none_or(|d| d == v.len()))
                    .map(|v| (Ok(v), true))
            })
            .collect();
        let missing: Vec<usize> = (0..texts.len()).filter(|&i| out[i].is_none()).collect();
        let mut model = model;
        if !missing.is_empty() {
            let batch: Vec<String> = missing.iter().map(|&i| texts[i].clone()).collect();
            let (answered_model, items) = plugin
                .embed_texts(&batch, purpose)
                .await
                .map_err(|e| StepError::in_role(key, Role::Text, e))?;
            model = answered_model;
            let mut fresh = Vec::new();
            for (&i, item) in missing.iter().zip(items) {
                if let Ok(v) = &item {
                    fresh.push((keys[i].clone(), v.clone()));
                }
                out[i] = Some((item, false));
            }
            let (space, model_id) = (model.space.clone(), model.model.clone());
            self.cache(move |s| {
                fresh
                    .iter()
                    .try_for_each(|(k, v)| s.put_text_vector(k, &space, &model_id, v))
            })
            .await;
        }
        let items = out
            .into_iter()
            .zip(prefixes)
            .map(|(o, prefix)| {
                let (result, cached) = o.unwrap_or_else(|| {
                    (Err(CallError::new(FailureKind::Other, "no answer")), false)
                });
                TextItem {
                    result,
                    cached,
                    prefix,
                }
            })
            .collect();
        Ok((plugin.id.clone(), model, items))
    }

    pub(super) async fn embed_one_image(
        &self,
        key: &str,
        image: &ValidImage,
    ) -> std::result::Result<Found, StepError> {
        let plugin = self.plugin(key)?;
        let model = plugin
            .image_model()
            .await
            .map_err(|e| StepError::in_role(key, Role::Image, e))?;
        self.precheck(key, &model)?;
        let (sha, space) = (image.sha256.clone(), model.space.clone());
        if let Some(vector) = self
            .cache(move |s| s.image_vector(&sha, &space))
            .await
            .flatten()
            .filter(|v| model.dimensions.is_none_or(|d| d == v.len()))
        {
            return Ok(Found {
                plugin: plugin.id.clone(),
                model,
                vector,
                description: None,
                cached: true,
            });
        }
        let (model, mut vectors) = plugin
            .embed_images(std::slice::from_ref(image))
            .await
            .map_err(|e| StepError::in_role(key, Role::Image, e))?;
        let vector = vectors.remove(0).map_err(|e| StepError::of(key, e))?;
        let (sha, space, model_id, v) = (
            image.sha256.clone(),
            model.space.clone(),
            model.model.clone(),
            vector.clone(),
        );
        self.cache(move |s| s.put_image_vector(&sha, &space, &model_id, &v))
            .await;
        Ok(Found {
            plugin: plugin.id.clone(),
            model,
            vector,
            description: None,
            cached: false,
        })
    }
}
