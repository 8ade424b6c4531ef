//! The walk: the configured steps in order until one answers, recording why each earlier step
//! did not, and skipping steps that need a plugin role that already failed for good.

use super::imbed::Imbed;
use crate::config::Step;
use crate::error::{Error, Result};
use crate::input::ValidImage;
use crate::runtime::{CallError, ModelInfo};
use crate::store::{self, CachedDescription, ImageMeta};
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

impl Imbed {
    /// Walk the chain for an image that has already been validated.
    pub async fn embed_valid_image(
        &self,
        image: &ValidImage,
        description: Option<&str>,
    ) -> Result<Embedding> {
        let description = description.map(str::trim).filter(|d| !d.is_empty());
        let mut attempts = Vec::new();
        let mut dead = Vec::new();
        for (index, step) in self.inner.config.chain.steps.iter().enumerate() {
            let outcome = match skip_if_dead(step, false, &dead) {
                Some(skip) => Err(skip),
                None => self.image_step(step, image, description).await,
            };
            note_dead(index, &outcome, &mut dead);
            if let Some(embedding) = self.accept(index, step.kind(), outcome, &mut attempts) {
                // Recorded before returning, so a caller that saw the answer (an index run that
                // is then killed) finds it in the cache next time.
                let meta = ImageMeta::of(image);
                let entry = embedding.clone();
                self.cache(move |s| s.put_entry(&meta, &entry)).await;
                return Ok(embedding);
            }
        }
        Err(Error::Exhausted { attempts })
    }

    /// Describe an image with the chain's describers, in chain order, without embedding.
    pub async fn describe(&self, image: &ValidImage, prompt: Option<&str>) -> Result<Description> {
        let mut attempts = Vec::new();
        for (index, step) in self.inner.config.chain.steps.iter().enumerate() {
            let Step::DescribeThenEmbed {
                describer,
                prompt: step_prompt,
                ..
            } = step
            else {
                continue;
            };
            let outcome = async {
                let plugin = self.plugin(describer)?;
                let d = plugin
                    .describe(image, prompt.or(step_prompt.as_deref()))
                    .await
                    .map_err(|e| StepError::of(describer, e))?;
                Ok::<_, StepError>(Description {
                    text: d.text,
                    source: DescriptionSource::Model,
                    plugin: Some(plugin.id.clone()),
                    model: Some(d.model),
                    structured: d.structured,
                    purpose: None,
                    prefix: None,
                })
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
            return Err(Error::Usage(
                "the chain has no describe-then-embed step, so nothing can describe images".into(),
            ));
        }
        Err(Error::Exhausted { attempts })
    }

    /// Embed a text query into the space of the chain's image results, walking the same chain
    /// with each step's text side. The text is a query (an asymmetric model gets its query
    /// prefix); [`Imbed::embed_text_for`] embeds it for another purpose.
    pub async fn embed_text(&self, text: &str) -> Result<Embedding> {
        self.embed_text_for(text, Purpose::Query).await
    }

    /// [`Imbed::embed_text`] for `purpose`.
    pub async fn embed_text_for(&self, text: &str, purpose: Purpose) -> Result<Embedding> {
        if text.trim().is_empty() {
            return Err(Error::Usage("the text to embed is empty".into()));
        }
        let mut attempts = Vec::new();
        let mut dead = Vec::new();
        for (index, step) in self.inner.config.chain.steps.iter().enumerate() {
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
    pub(super) fn accept(
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
                if let Some(required) = &self.inner.config.chain.require_space {
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
    pub(super) fn precheck(
        &self,
        key: &str,
        model: &ModelInfo,
    ) -> std::result::Result<(), StepError> {
        match &self.inner.config.chain.require_space {
            Some(required) if !model.space.meets(required) => {
                Err(StepError::of(key, space_mismatch(&model.space, required)))
            }
            _ => Ok(()),
        }
    }

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
                let describe_with = self.plugin(describer)?;
                // Check the embedder first: describing is the slow part, and is wasted when the
                // embedder cannot answer or answers in the wrong space.
                let text_plugin = self.plugin(embedder)?;
                let model = text_plugin
                    .text_model()
                    .await
                    .map_err(|e| StepError::in_role(embedder, Role::Text, e))?;
                self.precheck(embedder, &model)?;
                // A description depends on the image, the vision model and the prompt, not on
                // the embedding model: swapping the embedder reuses it.
                // The describer says what its descriptions depend on (0.2.0); one that cannot
                // (0.1.0) is keyed by its settings, as every description was before 0.2.0.
                // Those older entries are still read, so moving to a describer that states
                // its identity costs no vision call for images described already.
                let legacy = store::describer_identity(
                    &describe_with.id.name,
                    &describe_with.config.settings,
                );
                let identity = match describe_with
                    .cache_identity()
                    .await
                    .map_err(|e| StepError::in_role(describer, Role::Describe, e))?
                {
                    Some(pairs) => store::describer_identity_of(&describe_with.id.name, &pairs),
                    None => legacy.clone(),
                };
                let prompt_key = prompt.clone().unwrap_or_default();
                let cached = {
                    let (sha, id, old, p) = (
                        image.sha256.clone(),
                        identity.clone(),
                        legacy,
                        prompt_key.clone(),
                    );
                    self.cache(move |s| match s.description(&sha, &id, &p)? {
                        Some(found) => Ok(Some(found)),
                        None if old != id => s.description(&sha, &old, &p),
                        None => Ok(None),
                    })
                    .await
                    .flatten()
                };
                let (description, described_from_cache) = match cached {
                    Some(c) => (
                        Description {
                            text: c.text,
                            source: DescriptionSource::Model,
                            plugin: Some(describe_with.id.clone()),
                            model: Some(c.model),
                            structured: c.structured.and_then(|j| serde_json::from_str(&j).ok()),
                            purpose: None,
                            prefix: None,
                        },
                        true,
                    ),
                    None => {
                        let d = describe_with
                            .describe(image, prompt.as_deref())
                            .await
                            .map_err(|e| StepError::in_role(describer, Role::Describe, e))?;
                        let row = CachedDescription {
                            text: d.text.clone(),
                            plugin: describe_with.id.name.clone(),
                            model: d.model.clone(),
                            structured: d
                                .structured
                                .as_ref()
                                .and_then(|st| serde_json::to_string(st).ok()),
                        };
                        let sha = image.sha256.clone();
                        self.cache(move |s| s.put_description(&sha, &identity, &prompt_key, &row))
                            .await;
                        (
                            Description {
                                text: d.text,
                                source: DescriptionSource::Model,
                                plugin: Some(describe_with.id.clone()),
                                model: Some(d.model),
                                structured: d.structured,
                                purpose: None,
                                prefix: None,
                            },
                            false,
                        )
                    }
                };
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
    pub(super) async fn text_embedder<'a>(
        &self,
        step: &'a Step,
    ) -> std::result::Result<&'a str, StepError> {
        match step {
            Step::DescribeThenEmbed { embedder, .. } | Step::Description { embedder } => {
                Ok(embedder)
            }
            Step::ImageEmbed { plugin: key } | Step::Hash { plugin: key } => {
                let plugin = self.plugin(key)?;
                if !plugin.roles().text_embedder {
                    return Err(StepError::not_applicable(format!(
                        "plugin {key:?} embeds images only, not text"
                    )));
                }
                if step.kind() == StepKind::ImageEmbed {
                    // Text from an image embedder is only useful when it lands in the image space.
                    let image_space = plugin
                        .image_model()
                        .await
                        .map_err(|e| StepError::of(key, e))?
                        .space;
                    let text_space = plugin
                        .text_model()
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

    pub(super) async fn text_step(
        &self,
        step: &Step,
        text: &str,
        purpose: Purpose,
    ) -> std::result::Result<Found, StepError> {
        let key = self.text_embedder(step).await?;
        self.embed_one_text(key, query_description(text), purpose)
            .await
    }

    /// Embed many texts (queries) in batches: each step gets every text still unanswered in one
    /// call, so a backend such as Ollama sees one request per step, not one per text. Results
    /// come in input order; an item that fails moves on to the next step alone.
    pub async fn embed_texts(&self, texts: &[String]) -> Vec<Result<Embedding>> {
        self.embed_texts_for(texts, Purpose::Query).await
    }

    /// [`Imbed::embed_texts`] for `purpose` (the compatible routes embed as given: `none`).
    pub async fn embed_texts_for(
        &self,
        texts: &[String],
        purpose: Purpose,
    ) -> Vec<Result<Embedding>> {
        let mut results: Vec<Option<Result<Embedding>>> = texts
            .iter()
            .map(|t| {
                t.trim()
                    .is_empty()
                    .then(|| Err(Error::Usage("the text to embed is empty".into())))
            })
            .collect();
        let mut attempts: Vec<Vec<Attempt>> = vec![Vec::new(); texts.len()];
        let mut dead = Vec::new();
        let mut pending: Vec<usize> = (0..texts.len()).filter(|&i| results[i].is_none()).collect();
        for (index, step) in self.inner.config.chain.steps.iter().enumerate() {
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
                        let (plugin, model, items) =
                            self.cached_text_batch(key, &batch, purpose).await?;
                        Ok::<_, StepError>((key, plugin, model, items))
                    }
                    .await
                }
            };
            if let Err(e) = &answered {
                let probe = Err(StepError {
                    plugin: e.plugin.clone(),
                    role: e.role,
                    error: e.error.clone(),
                });
                note_dead(index, &probe, &mut dead);
            }
            let mut still = Vec::new();
            match answered {
                Err(e) => {
                    for &i in &pending {
                        let e = StepError {
                            plugin: e.plugin.clone(),
                            role: e.role,
                            error: e.error.clone(),
                        };
                        self.accept(index, kind, Err(e), &mut attempts[i]);
                    }
                    continue;
                }
                Ok((key, plugin, model, items)) => {
                    for (&i, item) in pending.iter().zip(items) {
                        let outcome = item
                            .result
                            .map(|vector| Found {
                                plugin: plugin.clone(),
                                model: model.clone(),
                                vector,
                                description: Some(Description {
                                    purpose: Some(purpose),
                                    prefix: item.prefix,
                                    ..query_description(&texts[i])
                                }),
                                cached: item.cached,
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
