//! The walk: the configured steps in order until one answers, recording why each earlier step
//! did not, and skipping steps that need a plugin role that already failed for good. It asks
//! plugins (and the cache in front of them) only through [`Backend`], so its rules are tested
//! below with fakes, without wasm or a database.

use super::backend::Backend;
use crate::config::{ChainConfig, Step};
use crate::error::{Error, Result, UsageError};
use crate::input::ValidImage;
use crate::runtime::{CallError, ItemResult, ModelInfo, PluginDescription, Roles};
use crate::types::{
    Attempt, Description, DescriptionSource, Embedding, FailureKind, PluginId, Provenance, Purpose,
    SpaceId, StepKind,
};

/// What one step produced.
pub(super) struct Found {
    pub(super) plugin: PluginId,
    pub(super) model: ModelInfo,
    pub(super) vector: Vec<f32>,
    pub(super) description: Option<Description>,
    /// Every plugin call behind it was answered by the cache.
    pub(super) cached: bool,
}

/// Why one step did not answer.
#[derive(Clone)]
pub(super) struct StepError {
    pub(super) plugin: Option<String>,
    /// The role the plugin failed in, when a call to it failed.
    pub(super) role: Option<Role>,
    pub(super) error: CallError,
}

/// What a step asks of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Describe,
    Text,
    Image,
}

impl Role {
    pub(super) fn name(self) -> &'static str {
        match self {
            Role::Describe => "describer",
            Role::Text => "text embedder",
            Role::Image => "image embedder",
        }
    }
}

/// A plugin role that failed in a way that will not change within one request (unreachable,
/// timed out): later steps that need it again are skipped rather than waiting a second time.
struct Dead {
    plugin: String,
    role: Role,
    step: usize,
    kind: FailureKind,
}

/// The plugin roles a step needs, in the order it uses them.
fn needs(step: &Step, text_walk: bool) -> Vec<(&str, Role)> {
    match step {
        Step::DescribeThenEmbed {
            describer,
            embedder,
            ..
        } if !text_walk => {
            vec![
                (embedder.as_str(), Role::Text),
                (describer.as_str(), Role::Describe),
            ]
        }
        Step::DescribeThenEmbed { embedder, .. } | Step::Description { embedder } => {
            vec![(embedder.as_str(), Role::Text)]
        }
        Step::ImageEmbed { plugin } | Step::Hash { plugin } => {
            vec![(
                plugin.as_str(),
                if text_walk { Role::Text } else { Role::Image },
            )]
        }
    }
}

/// The step's outcome if a role it needs already failed for good in this request.
fn skip_if_dead(step: &Step, text_walk: bool, dead: &[Dead]) -> Option<StepError> {
    needs(step, text_walk).into_iter().find_map(|(plugin, role)| {
        dead.iter().find(|d| d.plugin == plugin && d.role == role).map(|d| StepError {
            plugin: Some(plugin.to_string()),
            role: Some(role),
            error: CallError::new(
                d.kind,
                format!(
                    "skipped: plugin {plugin:?} already failed as a {} in step {} of this request ({})",
                    role.name(),
                    d.step,
                    d.kind
                ),
            ),
        })
    })
}

/// Remember a failure that would only repeat if tried again in this request.
fn note_dead(index: usize, outcome: &std::result::Result<Found, StepError>, dead: &mut Vec<Dead>) {
    if let Err(StepError {
        plugin: Some(plugin),
        role: Some(role),
        error,
    }) = outcome
    {
        if matches!(error.kind, FailureKind::Unavailable | FailureKind::Timeout)
            && !dead.iter().any(|d| &d.plugin == plugin && d.role == *role)
        {
            dead.push(Dead {
                plugin: plugin.clone(),
                role: *role,
                step: index,
                kind: error.kind,
            });
        }
    }
}

impl StepError {
    pub(super) fn of(plugin: &str, error: CallError) -> Self {
        StepError {
            plugin: Some(plugin.to_string()),
            role: None,
            error,
        }
    }

    pub(super) fn in_role(plugin: &str, role: Role, error: CallError) -> Self {
        StepError {
            plugin: Some(plugin.to_string()),
            role: Some(role),
            error,
        }
    }

    pub(super) fn not_applicable(message: impl Into<String>) -> Self {
        StepError {
            plugin: None,
            role: None,
            error: CallError::new(FailureKind::NotApplicable, message),
        }
    }
}

/// One walk over a chain's steps, asking `backend`.
pub(super) struct Walk<'a, B> {
    backend: &'a B,
    chain: &'a ChainConfig,
}

impl<'a, B: Backend> Walk<'a, B> {
    pub(super) fn new(backend: &'a B, chain: &'a ChainConfig) -> Self {
        Walk { backend, chain }
    }

    /// The plugin under `key`, or the step's error when it cannot be called.
    fn loaded(&self, key: &str) -> std::result::Result<(PluginId, Roles), StepError> {
        self.backend.loaded(key).map_err(|e| StepError::of(key, e))
    }

    /// Walk the chain for an image that has already been validated; with `record`, the answer
    /// is recorded before it is returned.
    pub(super) async fn image(
        &self,
        image: &ValidImage,
        description: Option<&str>,
        record: bool,
    ) -> Result<Embedding> {
        let description = description.map(str::trim).filter(|d| !d.is_empty());
        let mut attempts = Vec::new();
        let mut dead = Vec::new();
        for (index, step) in self.chain.steps.iter().enumerate() {
            let outcome = match skip_if_dead(step, false, &dead) {
                Some(skip) => Err(skip),
                None => self.image_step(step, image, description).await,
            };
            note_dead(index, &outcome, &mut dead);
            if let Some(embedding) = self.accept(index, step.kind(), outcome, &mut attempts) {
                if record {
                    self.backend.record(image, &embedding).await;
                }
                return Ok(embedding);
            }
        }
        Err(Error::Exhausted { attempts })
    }

    /// Describe an image with the chain's describers, in chain order, without embedding (and
    /// without the description cache: the caller asked for a fresh look).
    pub(super) async fn describe(
        &self,
        image: &ValidImage,
        prompt: Option<&str>,
    ) -> Result<Description> {
        let mut attempts = Vec::new();
        for (index, step) in self.chain.steps.iter().enumerate() {
            let Step::DescribeThenEmbed {
                describer,
                prompt: step_prompt,
                ..
            } = step
            else {
                continue;
            };
            let outcome = async {
                let (id, _) = self.loaded(describer)?;
                let (d, _) = self
                    .backend
                    .describe(describer, image, prompt.or(step_prompt.as_deref()), false)
                    .await
                    .map_err(|e| StepError::of(describer, e))?;
                Ok::<_, StepError>(model_description(id, d))
            }
            .await;
            match outcome {
                Ok(d) => return Ok(d),
                Err(e) => attempts.push(Attempt {
                    step: index,
                    step_kind: step.kind(),
                    plugin: e.plugin,
                    kind: e.error.kind,
                    message: e.error.message,
                    inference: e.error.inference,
                }),
            }
        }
        if attempts.is_empty() {
            return Err(UsageError::NoDescriber.into());
        }
        Err(Error::Exhausted { attempts })
    }

    /// Embed a text into the space of the chain's image results, walking the same chain with
    /// each step's text side; `purpose` says what the text is for (an asymmetric model puts its
    /// task prefix before it).
    pub(super) async fn text(&self, text: &str, purpose: Purpose) -> Result<Embedding> {
        if text.trim().is_empty() {
            return Err(UsageError::EmptyText.into());
        }
        let mut attempts = Vec::new();
        let mut dead = Vec::new();
        for (index, step) in self.chain.steps.iter().enumerate() {
            let outcome = match skip_if_dead(step, true, &dead) {
                Some(skip) => Err(skip),
                None => self.text_step(step, text, purpose).await,
            };
            note_dead(index, &outcome, &mut dead);
            if let Some(embedding) = self.accept(index, step.kind(), outcome, &mut attempts) {
                return Ok(embedding);
            }
        }
        Err(Error::Exhausted { attempts })
    }

    /// Turn a step's outcome into the final embedding, or record why it is not one.
    fn accept(
        &self,
        index: usize,
        step_kind: StepKind,
        outcome: std::result::Result<Found, StepError>,
        attempts: &mut Vec<Attempt>,
    ) -> Option<Embedding> {
        let mut record = |plugin: Option<String>, e: CallError| {
            tracing::debug!(step = index, %step_kind, "step did not answer: {}", e.message);
            attempts.push(Attempt {
                step: index,
                step_kind,
                plugin,
                kind: e.kind,
                message: e.message,
                inference: e.inference,
            });
        };
        match outcome {
            Err(e) => {
                record(e.plugin, e.error);
                None
            }
            Ok(found) => {
                if let Some(required) = &self.chain.require_space {
                    if !found.model.space.meets(required) {
                        record(
                            Some(found.plugin.key.clone()),
                            space_mismatch(&found.model.space, required),
                        );
                        return None;
                    }
                }
                let dimensions = found.vector.len();
                Some(Embedding {
                    vector: found.vector,
                    provenance: Provenance {
                        step: index,
                        step_kind,
                        plugin: found.plugin,
                        model: found.model.model,
                        space: found.model.space,
                        dimensions,
                        description: found.description,
                        degraded: index > 0,
                        cached: found.cached,
                        attempts: std::mem::take(attempts),
                        inference: found.model.inference,
                    },
                })
            }
        }
    }

    /// With `require_space` set, refuse a step before doing its (possibly slow) work when its
    /// model already says it answers in another space.
    fn precheck(&self, key: &str, model: &ModelInfo) -> std::result::Result<(), StepError> {
        match &self.chain.require_space {
            Some(required) if !model.space.meets(required) => {
                Err(StepError::of(key, space_mismatch(&model.space, required)))
            }
            _ => Ok(()),
        }
    }

    /// One step of the image walk.
    pub(super) async fn image_step(
        &self,
        step: &Step,
        image: &ValidImage,
        caller_description: Option<&str>,
    ) -> std::result::Result<Found, StepError> {
        match step {
            Step::DescribeThenEmbed {
                describer,
                embedder,
                prompt,
            } => {
                let (describer_id, _) = self.loaded(describer)?;
                // Check the embedder first: describing is the slow part, and is wasted when the
                // embedder cannot answer or answers in the wrong space.
                self.loaded(embedder)?;
                let model = self
                    .backend
                    .text_model(embedder)
                    .await
                    .map_err(|e| StepError::in_role(embedder, Role::Text, e))?;
                self.precheck(embedder, &model)?;
                let (d, described_from_cache) = self
                    .backend
                    .describe(describer, image, prompt.as_deref(), true)
                    .await
                    .map_err(|e| StepError::in_role(describer, Role::Describe, e))?;
                let description = model_description(describer_id, d);
                // A description is what a search should find: embedded as a document.
                let mut found = self
                    .embed_one_text(embedder, description, Purpose::Document)
                    .await?;
                found.cached &= described_from_cache;
                Ok(found)
            }
            Step::ImageEmbed { plugin } | Step::Hash { plugin } => {
                self.embed_one_image(plugin, image).await
            }
            Step::Description { embedder } => match caller_description {
                None => Err(StepError::not_applicable(
                    "no description was given with the image (--description)",
                )),
                Some(text) => {
                    let description = Description {
                        text: text.to_string(),
                        source: DescriptionSource::Caller,
                        plugin: None,
                        model: None,
                        structured: None,
                        purpose: None,
                        prefix: None,
                    };
                    self.embed_one_text(embedder, description, Purpose::Document)
                        .await
                }
            },
        }
    }

    /// The plugin that embeds text for `step`, checked to land in the step's own space.
    async fn text_embedder<'s>(&self, step: &'s Step) -> std::result::Result<&'s str, StepError> {
        match step {
            Step::DescribeThenEmbed { embedder, .. } | Step::Description { embedder } => {
                Ok(embedder)
            }
            Step::ImageEmbed { plugin: key } | Step::Hash { plugin: key } => {
                let (_, roles) = self.loaded(key)?;
                if !roles.text_embedder {
                    return Err(StepError::not_applicable(format!(
                        "plugin {key:?} embeds images only, not text"
                    )));
                }
                if step.kind() == StepKind::ImageEmbed {
                    // Text from an image embedder is only useful when it lands in the image space.
                    let image_space = self
                        .backend
                        .image_model(key)
                        .await
                        .map_err(|e| StepError::of(key, e))?
                        .space;
                    let text_space = self
                        .backend
                        .text_model(key)
                        .await
                        .map_err(|e| StepError::of(key, e))?
                        .space;
                    if image_space != text_space {
                        return Err(StepError::not_applicable(format!(
                            "plugin {key:?} embeds text in {text_space:?}, not in its image space {image_space:?}"
                        )));
                    }
                }
                Ok(key)
            }
        }
    }

    async fn text_step(
        &self,
        step: &Step,
        text: &str,
        purpose: Purpose,
    ) -> std::result::Result<Found, StepError> {
        let key = self.text_embedder(step).await?;
        self.embed_one_text(key, query_description(text), purpose)
            .await
    }

    /// Embed `description.text` as `purpose`; the description comes back with the purpose and
    /// the prefix the plugin applied.
    async fn embed_one_text(
        &self,
        key: &str,
        mut description: Description,
        purpose: Purpose,
    ) -> std::result::Result<Found, StepError> {
        let (plugin, model, mut items) = self
            .text_batch(key, std::slice::from_ref(&description.text), purpose)
            .await?;
        let (vector, cached) = items.remove(0);
        description.purpose = Some(purpose);
        description.prefix = model.sent_text(purpose, &description.text).1;
        Ok(Found {
            plugin,
            model,
            vector: vector.map_err(|e| StepError::of(key, e))?,
            description: Some(description),
            cached,
        })
    }

    /// One text embedder, one batch: checks the space first (before any slow work), then asks
    /// the backend for every text at once. Each item says whether the cache answered it.
    async fn text_batch(
        &self,
        key: &str,
        texts: &[String],
        purpose: Purpose,
    ) -> std::result::Result<(PluginId, ModelInfo, Vec<(ItemResult, bool)>), StepError> {
        let (id, _) = self.loaded(key)?;
        let model = self
            .backend
            .text_model(key)
            .await
            .map_err(|e| StepError::in_role(key, Role::Text, e))?;
        self.precheck(key, &model)?;
        let (model, items) = self
            .backend
            .embed_texts(key, model, texts, purpose)
            .await
            .map_err(|e| StepError::in_role(key, Role::Text, e))?;
        Ok((id, model, items))
    }

    async fn embed_one_image(
        &self,
        key: &str,
        image: &ValidImage,
    ) -> std::result::Result<Found, StepError> {
        let (id, _) = self.loaded(key)?;
        let model = self
            .backend
            .image_model(key)
            .await
            .map_err(|e| StepError::in_role(key, Role::Image, e))?;
        self.precheck(key, &model)?;
        let (model, item, cached) = self
            .backend
            .embed_image(key, model, image)
            .await
            .map_err(|e| StepError::in_role(key, Role::Image, e))?;
        Ok(Found {
            plugin: id,
            model,
            vector: item.map_err(|e| StepError::of(key, e))?,
            description: None,
            cached,
        })
    }

    /// Embed many texts in batches: each step gets every text still unanswered in one call.
    /// Results come in input order; an item that fails moves on to the next step alone.
    pub(super) async fn texts(&self, texts: &[String], purpose: Purpose) -> Vec<Result<Embedding>> {
        let mut results: Vec<Option<Result<Embedding>>> = texts
            .iter()
            .map(|t| {
                t.trim()
                    .is_empty()
                    .then(|| Err(UsageError::EmptyText.into()))
            })
            .collect();
        let mut attempts: Vec<Vec<Attempt>> = vec![Vec::new(); texts.len()];
        let mut dead = Vec::new();
        let mut pending: Vec<usize> = (0..texts.len()).filter(|&i| results[i].is_none()).collect();
        for (index, step) in self.chain.steps.iter().enumerate() {
            if pending.is_empty() {
                break;
            }
            let kind = step.kind();
            let batch: Vec<String> = pending.iter().map(|&i| texts[i].clone()).collect();
            let answered = match skip_if_dead(step, true, &dead) {
                Some(skip) => Err(skip),
                None => {
                    async {
                        let key = self.text_embedder(step).await?;
                        let (plugin, model, items) = self.text_batch(key, &batch, purpose).await?;
                        Ok::<_, StepError>((key, plugin, model, items))
                    }
                    .await
                }
            };
            let mut still = Vec::new();
            match answered {
                Err(e) => {
                    note_dead(index, &Err::<Found, _>(e.clone()), &mut dead);
                    for &i in &pending {
                        self.accept(index, kind, Err(e.clone()), &mut attempts[i]);
                    }
                    continue;
                }
                Ok((key, plugin, model, items)) => {
                    for (&i, (item, cached)) in pending.iter().zip(items) {
                        let outcome = item
                            .map(|vector| Found {
                                plugin: plugin.clone(),
                                model: model.clone(),
                                vector,
                                description: Some(Description {
                                    purpose: Some(purpose),
                                    prefix: model.sent_text(purpose, &texts[i]).1,
                                    ..query_description(&texts[i])
                                }),
                                cached,
                            })
                            .map_err(|e| StepError::of(key, e));
                        match self.accept(index, kind, outcome, &mut attempts[i]) {
                            Some(embedding) => results[i] = Some(Ok(embedding)),
                            None => still.push(i),
                        }
                    }
                }
            }
            pending = still;
        }
        results
            .into_iter()
            .zip(attempts)
            .map(|(r, attempts)| r.unwrap_or(Err(Error::Exhausted { attempts })))
            .collect()
    }
}

/// A describer's answer as the walk reports it.
fn model_description(plugin: PluginId, d: PluginDescription) -> Description {
    Description {
        text: d.text,
        source: DescriptionSource::Model,
        plugin: Some(plugin),
        model: Some(d.model),
        structured: d.structured,
        purpose: None,
        prefix: None,
    }
}

fn query_description(text: &str) -> Description {
    Description {
        text: text.to_string(),
        source: DescriptionSource::Query,
        plugin: None,
        model: None,
        structured: None,
        purpose: None,
        prefix: None,
    }
}

fn space_mismatch(space: &SpaceId, required: &SpaceId) -> CallError {
    CallError::new(
        FailureKind::SpaceMismatch,
        format!("answers in space {space:?}, but the config requires {required:?} ([chain] require_space)"),
    )
}

#[cfg(test)]
mod tests;
