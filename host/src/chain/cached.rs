//! The persistent cache around plugin calls: texts and images already embedded in a space, and
//! descriptions already written, are answered from the store; fresh answers are remembered.
//! This is the walk's [`Backend`] for a loaded [`Imbed`].
//!
//! It is also where a plugin's claim on a space is checked, since it is the one place every
//! vector passes between a plugin and both the store and the caller: a space belongs to the
//! plugin (config key) that first wrote into it, and a vector another plugin reports in that
//! space is refused (`space-mismatch`) before it is stored or returned, unless the config
//! declares the two as sharing (`shares_space_with`). A plugin's own claim on its space can
//! only come from the config, never from what the plugin says.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::backend::Backend;
use super::imbed::Imbed;
use crate::input::ValidImage;
use crate::runtime::{CallError, ItemResult, ModelInfo, Plugin, PluginDescription, Roles};
use crate::store::{
    self, Cache, CachedDescription, ImageMeta, Ownership, SpaceClaim, SpaceOwner, StoreError,
    Writer,
};
use crate::types::{Embedding, FailureKind, PluginId, Purpose, SpaceId};

impl Imbed {
    /// Run a cache operation off the async threads. A cache failure is logged and treated as a
    /// miss: the cache may make imbed faster, never make it fail.
    async fn cache<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Cache) -> std::result::Result<T, StoreError> + Send + 'static,
    ) -> Option<T> {
        let store = self.inner.store.as_ref()?;
        store
            .run(op)
            .await
            .inspect_err(|e| {
                tracing::warn!("cache: {e}");
                // Pruned meanwhile (perhaps by another process): ask the store next time.
                if let StoreError::NotClaimed { space, key, .. } = e {
                    self.inner.claims.forget(space, key);
                }
            })
            .ok()
    }
}

/// The store's name for what `plugin` writes.
fn writer_of(plugin: &Plugin) -> Writer {
    Writer {
        key: plugin.key.clone(),
        name: plugin.id.name.clone(),
        component: plugin.component_sha256.clone(),
    }
}

/// Why a plugin's vectors in a space another plugin owns were dropped, and what would allow
/// them.
fn not_the_owner(plugin: &Plugin, space: &SpaceId, owner: &SpaceOwner) -> CallError {
    CallError::new(
        FailureKind::SpaceMismatch,
        format!(
            "plugin {key:?} (reporting itself as {name:?}) answers in space {space:?}, which belongs to plugin {owner_key:?} (reporting itself as {owner_name:?}), the first to write into it: its vectors were neither stored nor returned. If both really compute the same vectors, add shares_space_with = {owner_key:?} to [plugins.{key}]; otherwise the plugin reports the wrong space id",
            key = plugin.key,
            name = plugin.id.name,
            owner_key = owner.key,
            owner_name = owner.name,
        ),
    )
}

/// How long a granted claim is taken as still granted without asking the store again. The
/// store asks itself the same question inside every write's transaction, so this only spares
/// the round trips to it (two per call, a third of a small request's time on `imbed serve`); it
/// is the store's own interval for refreshing a writer's `last_seen`, so `cache stats` keeps
/// showing when a writer was last active. A pin pruned by another process meanwhile is
/// noticed at this runtime's next write (refused there, then forgotten here) or after this
/// interval, whichever comes first.
const CLAIM_MEMO: Duration = Duration::from_secs(60);

/// Claims granted to this runtime, by (space, plugin key), with when the store granted them.
/// Refusals are not remembered: a refused plugin asks the store every time, so a later
/// `shares_space_with` (a reload) or a prune of the owner takes effect at once.
#[derive(Default)]
pub(super) struct GrantedClaims(Mutex<HashMap<(String, String), Instant>>);

impl GrantedClaims {
    fn fresh(&self, space: &SpaceId, key: &str) -> bool {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&(space.to_string(), key.to_string()))
            .is_some_and(|at| at.elapsed() < CLAIM_MEMO)
    }

    fn granted(&self, space: &SpaceId, key: &str) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert((space.to_string(), key.to_string()), Instant::now());
    }

    /// Forget a claim the store no longer holds (its pin was pruned meanwhile).
    fn forget(&self, space: &str, key: &str) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.remove(&(space.to_string(), key.to_string()));
    }
}

impl Imbed {
    /// What `plugin` asks for when it writes into a space.
    fn claim_of(&self, plugin: &Plugin) -> SpaceClaim {
        SpaceClaim {
            writer: writer_of(plugin),
            shares_with: self.inner.config.space_partners(&plugin.key),
        }
    }

    /// Before a plugin works for a space it announced: refuse it at once when another plugin
    /// owns that space, rather than after a (possibly slow) call whose answer would be dropped.
    /// Pins nothing.
    async fn check_owner(&self, plugin: &Plugin, space: &SpaceId) -> Result<(), CallError> {
        if self.inner.claims.fresh(space, &plugin.key) {
            return Ok(());
        }
        let s = space.to_string();
        let claim = self.claim_of(plugin);
        match self.cache(move |c| c.space_owner(&s)).await.flatten() {
            Some(owner) if !claim.allows(&owner.key) => Err(not_the_owner(plugin, space, &owner)),
            _ => Ok(()),
        }
    }

    /// Claim `space` for `plugin` before any of its vectors there is stored or returned. A
    /// refusal is the call's error. A cache that cannot answer does not fail the call (the
    /// cache never makes imbed fail): the vectors are returned, and the store, finding no
    /// claim, writes none of them.
    async fn claim(&self, plugin: &Arc<Plugin>, space: &SpaceId) -> Result<(), CallError> {
        if self.inner.claims.fresh(space, &plugin.key) {
            return Ok(());
        }
        let (s, claim) = (space.to_string(), self.claim_of(plugin));
        match self.cache(move |c| c.claim_space(&s, &claim)).await {
            Some(Ownership::Refused { owner }) => Err(not_the_owner(plugin, space, &owner)),
            Some(Ownership::Granted { owner }) => {
                self.inner.claims.granted(space, &plugin.key);
                if owner.key != plugin.key {
                    tracing::debug!(
                        plugin = plugin.key.as_str(),
                        "writing into space {space:?} of plugin {:?} (shares_space_with)",
                        owner.key
                    );
                }
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl Backend for Imbed {
    fn loaded(&self, key: &str) -> Result<(PluginId, Roles), CallError> {
        let plugin = self.plugin(key)?;
        Ok((plugin.id.clone(), plugin.roles()))
    }

    async fn text_model(&self, key: &str) -> Result<ModelInfo, CallError> {
        self.plugin(key)?.text_model().await
    }

    async fn image_model(&self, key: &str) -> Result<ModelInfo, CallError> {
        self.plugin(key)?.image_model().await
    }

    async fn describe(
        &self,
        key: &str,
        image: &ValidImage,
        prompt: Option<&str>,
        use_cache: bool,
    ) -> Result<(PluginDescription, bool), CallError> {
        let plugin = self.plugin(key)?;
        if !use_cache {
            return Ok((plugin.describe(image, prompt).await?, false));
        }
        // A description depends on the image, the vision model and the prompt, not on the
        // embedding model: swapping the embedder reuses it.
        // The describer says what its descriptions depend on (0.2.0); one that cannot (0.1.0)
        // is keyed by its settings, as every description was before 0.2.0. Those older entries
        // are still read, so moving to a describer that states its identity costs no vision
        // call for images described already.
        let legacy = store::describer_identity(&plugin.id.name, &plugin.config.settings);
        let identity = match plugin.cache_identity().await? {
            Some(pairs) => store::describer_identity_of(&plugin.id.name, &pairs),
            None => legacy.clone(),
        };
        let prompt_key = prompt.unwrap_or_default().to_string();
        let (sha, id, old, p) = (
            image.sha256.clone(),
            identity.clone(),
            legacy,
            prompt_key.clone(),
        );
        if let Some(c) = self
            .cache(move |s| match s.description(&sha, &id, &p)? {
                Some(found) => Ok(Some(found)),
                None if old != id => s.description(&sha, &old, &p),
                None => Ok(None),
            })
            .await
            .flatten()
        {
            let structured = c.structured.and_then(|j| serde_json::from_str(&j).ok());
            return Ok((
                PluginDescription {
                    text: c.text,
                    model: c.model,
                    structured,
                },
                true,
            ));
        }
        let d = plugin.describe(image, prompt).await?;
        let row = CachedDescription {
            text: d.text.clone(),
            plugin: plugin.id.name.clone(),
            model: d.model.clone(),
            structured: d
                .structured
                .as_ref()
                .and_then(|st| serde_json::to_string(st).ok()),
        };
        let sha = image.sha256.clone();
        self.cache(move |s| s.put_description(&sha, &identity, &prompt_key, &row))
            .await;
        Ok((d, false))
    }

    async fn embed_texts(
        &self,
        key: &str,
        model: ModelInfo,
        texts: &[String],
        purpose: Purpose,
    ) -> Result<(ModelInfo, Vec<(ItemResult, bool)>), CallError> {
        let plugin = self.plugin(key)?;
        self.check_owner(plugin, &model.space).await?;
        // Keyed on the text the model sees (prefix included), not the text given: a vector of
        // a bare text is not the vector of the same text as a document, so vectors embedded
        // before a plugin started applying prefixes are never reused for prefixed texts.
        let keys: Vec<String> = texts
            .iter()
            .map(|t| store::text_key(&model.sent_text(purpose, t).0))
            .collect();
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
        if missing.is_empty() {
            // All from the cache: still only for a plugin that may write into the space (the
            // vectors there may be another plugin's).
            self.claim(plugin, &model.space).await?;
        } else {
            let batch: Vec<String> = missing.iter().map(|&i| texts[i].clone()).collect();
            let (answered_model, items) = plugin.embed_texts(&batch, purpose).await?;
            model = answered_model;
            // The space the plugin answered in, which may not be the one it announced.
            if items.iter().any(Result::is_ok) || missing.len() < texts.len() {
                self.claim(plugin, &model.space).await?;
            }
            let mut fresh = Vec::new();
            for (&i, item) in missing.iter().zip(items) {
                if let Ok(v) = &item {
                    fresh.push((keys[i].clone(), v.clone()));
                }
                out[i] = Some((item, false));
            }
            let (space, model_id, writer) =
                (model.space.clone(), model.model.clone(), writer_of(plugin));
            if !fresh.is_empty() {
                self.cache(move |s| {
                    fresh
                        .iter()
                        .try_for_each(|(k, v)| s.put_text_vector(k, &space, &model_id, v, &writer))
                })
                .await;
            }
        }
        let items = out
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| (Err(CallError::new(FailureKind::Other, "no answer")), false))
            })
            .collect();
        Ok((model, items))
    }

    async fn embed_image(
        &self,
        key: &str,
        model: ModelInfo,
        image: &ValidImage,
    ) -> Result<(ModelInfo, ItemResult, bool), CallError> {
        let plugin = self.plugin(key)?;
        self.check_owner(plugin, &model.space).await?;
        let (sha, space) = (image.sha256.clone(), model.space.clone());
        if let Some(vector) = self
            .cache(move |s| s.image_vector(&sha, &space))
            .await
            .flatten()
            .filter(|v| model.dimensions.is_none_or(|d| d == v.len()))
        {
            self.claim(plugin, &model.space).await?;
            return Ok((model, Ok(vector), true));
        }
        let (model, mut vectors) = plugin.embed_images(std::slice::from_ref(image)).await?;
        let item = vectors.remove(0);
        if let Ok(v) = &item {
            // The space the plugin answered in, which may not be the one it announced.
            self.claim(plugin, &model.space).await?;
            let (sha, space, model_id, v, writer) = (
                image.sha256.clone(),
                model.space.clone(),
                model.model.clone(),
                v.clone(),
                writer_of(plugin),
            );
            self.cache(move |s| s.put_image_vector(&sha, &space, &model_id, &v, &writer))
                .await;
        }
        Ok((model, item, false))
    }

    async fn record(&self, image: &ValidImage, embedding: &Embedding) {
        // (The work queue records its answers itself, through `writer_of_answer`.)
        // Recorded before the answer is returned, so a caller that saw it (an index run that
        // is then killed) finds it in the cache next time.
        // The plugin that produced it, which claimed the space when it answered (the store
        // refuses the row otherwise).
        let Ok(plugin) = self.plugin(&embedding.provenance.plugin.key) else {
            return;
        };
        let (meta, entry, writer) = (ImageMeta::of(image), embedding.clone(), writer_of(plugin));
        self.cache(move |s| s.put_entry(&meta, &entry, &writer))
            .await;
    }
}

impl Imbed {
    /// The store's name for the plugin that produced `embedding`: the work queue records the
    /// answer as written by it (the store checks that it claimed the space, which it did when
    /// it answered). `None` if no such plugin is loaded.
    pub(crate) fn writer_of_answer(&self, embedding: &Embedding) -> Option<Writer> {
        self.plugin(&embedding.provenance.plugin.key)
            .ok()
            .map(|p| writer_of(p))
    }
}
