//! The walk's rules against a fake backend: no wasm, no database. Each fake plugin answers
//! from a small script, and every call is logged so a test can say what was (not) asked.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::Walk;
use crate::chain::backend::Backend;
use crate::config::{ChainConfig, Step};
use crate::error::Error;
use crate::input::ValidImage;
use crate::runtime::{CallError, ItemResult, ModelInfo, PluginDescription, Roles};
use crate::types::{DescriptionSource, Embedding, FailureKind, PluginId, Purpose, SpaceId};

/// One plugin as the fake plays it.
#[derive(Clone, Default)]
struct FakePlugin {
    roles: Roles,
    /// Calls (`describe`, `text_model`, `image_model`, `embed_texts`, `embed_image`) that fail
    /// as a whole, and how.
    fails: BTreeMap<&'static str, FailureKind>,
    /// Texts that fail on their own while the rest of their batch answers.
    bad_texts: Vec<&'static str>,
}

impl FakePlugin {
    fn describer() -> Self {
        FakePlugin {
            roles: Roles {
                describer: true,
                ..Roles::default()
            },
            ..FakePlugin::default()
        }
    }

    fn text_embedder() -> Self {
        FakePlugin {
            roles: Roles {
                text_embedder: true,
                ..Roles::default()
            },
            ..FakePlugin::default()
        }
    }

    /// Embeds images, and text in the same space when `text` is set (as CLIP and hash do).
    fn image_embedder(text: bool) -> Self {
        FakePlugin {
            roles: Roles {
                image_embedder: true,
                text_embedder: text,
                ..Roles::default()
            },
            ..FakePlugin::default()
        }
    }

    fn failing(mut self, call: &'static str, kind: FailureKind) -> Self {
        self.fails.insert(call, kind);
        self
    }

    fn bad_text(mut self, text: &'static str) -> Self {
        self.bad_texts.push(text);
        self
    }
}

/// Plugins by config key; each answers in the space named after its key.
#[derive(Default)]
struct Fake {
    plugins: BTreeMap<&'static str, FakePlugin>,
    calls: Mutex<Vec<String>>,
    recorded: Mutex<Vec<Embedding>>,
}

impl Fake {
    fn with(mut self, key: &'static str, plugin: FakePlugin) -> Self {
        self.plugins.insert(key, plugin);
        self
    }

    /// Log the call and answer with the plugin's script for it.
    fn call(&self, key: &str, call: &'static str, detail: &str) -> Result<&FakePlugin, CallError> {
        let mut line = format!("{call} {key}");
        if !detail.is_empty() {
            line = format!("{line} [{detail}]");
        }
        self.calls.lock().unwrap().push(line);
        let plugin = &self.plugins[key];
        match plugin.fails.get(call) {
            Some(&kind) => Err(CallError::new(kind, format!("{key} {call} failed"))),
            None => Ok(plugin),
        }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn count(&self, call: &str) -> usize {
        self.calls().iter().filter(|c| c.starts_with(call)).count()
    }
}

fn model(key: &str) -> ModelInfo {
    ModelInfo {
        model: format!("{key}-model"),
        dimensions: Some(3),
        space: SpaceId::new(key),
        inference: None,
        task_prefixes: Vec::new(),
    }
}

/// A vector that says which plugin embedded which input.
fn vector(key: &str, input: &str) -> Vec<f32> {
    vec![
        key.len() as f32,
        input.len() as f32,
        f32::from(input.bytes().next().unwrap_or(0)),
    ]
}

impl Backend for Fake {
    fn loaded(&self, key: &str) -> Result<(PluginId, Roles), CallError> {
        let plugin = self.plugins.get(key).ok_or_else(|| {
            CallError::new(FailureKind::NotInstalled, format!("no plugin {key:?}"))
        })?;
        let id = PluginId {
            key: key.to_string(),
            name: key.to_string(),
            version: "1.0.0".to_string(),
        };
        Ok((id, plugin.roles))
    }

    async fn text_model(&self, key: &str) -> Result<ModelInfo, CallError> {
        self.call(key, "text_model", "")?;
        Ok(model(key))
    }

    async fn image_model(&self, key: &str) -> Result<ModelInfo, CallError> {
        self.call(key, "image_model", "")?;
        Ok(model(key))
    }

    async fn describe(
        &self,
        key: &str,
        _image: &ValidImage,
        prompt: Option<&str>,
        use_cache: bool,
    ) -> Result<(PluginDescription, bool), CallError> {
        let detail = format!(
            "{}{}",
            prompt.unwrap_or(""),
            if use_cache { "" } else { " fresh" }
        );
        self.call(key, "describe", detail.trim())?;
        let d = PluginDescription {
            text: format!("a cat, as {key} sees it"),
            model: format!("{key}-vision"),
            structured: None,
        };
        Ok((d, false))
    }

    async fn embed_texts(
        &self,
        key: &str,
        model: ModelInfo,
        texts: &[String],
        _purpose: Purpose,
    ) -> Result<(ModelInfo, Vec<(ItemResult, bool)>), CallError> {
        let plugin = self.call(key, "embed_texts", &texts.join("|"))?;
        let items = texts
            .iter()
            .map(|t| {
                let item = if plugin.bad_texts.contains(&t.as_str()) {
                    Err(CallError::new(
                        FailureKind::BadInput,
                        format!("{key} refuses {t:?}"),
                    ))
                } else {
                    Ok(vector(key, t))
                };
                (item, false)
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
        self.call(key, "embed_image", "")?;
        Ok((model, Ok(vector(key, &image.sha256)), false))
    }

    async fn record(&self, _image: &ValidImage, embedding: &Embedding) {
        self.recorded.lock().unwrap().push(embedding.clone());
    }
}

fn image() -> ValidImage {
    ValidImage {
        data: std::sync::Arc::from(vec![0u8; 4]),
        mime_type: "image/png",
        width: 1,
        height: 1,
        sha256: "c0ffee".to_string(),
    }
}

fn chain(steps: Vec<Step>) -> ChainConfig {
    ChainConfig {
        require_space: None,
        steps,
    }
}

fn describe_then_embed(describer: &str, embedder: &str) -> Step {
    Step::DescribeThenEmbed {
        describer: describer.to_string(),
        embedder: embedder.to_string(),
        prompt: None,
    }
}

fn hash(plugin: &str) -> Step {
    Step::Hash {
        plugin: plugin.to_string(),
    }
}

fn image_embed(plugin: &str) -> Step {
    Step::ImageEmbed {
        plugin: plugin.to_string(),
    }
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    futures::executor::block_on(f)
}

/// Each attempt as (step, plugin, kind).
fn attempts_of(e: &Embedding) -> Vec<(usize, Option<String>, FailureKind)> {
    e.provenance
        .attempts
        .iter()
        .map(|a| (a.step, a.plugin.clone(), a.kind))
        .collect()
}

#[test]
fn a_describer_that_timed_out_is_not_asked_again_in_the_same_walk() {
    let fake = Fake::default()
        .with(
            "ollama",
            FakePlugin::describer().failing("describe", FailureKind::Timeout),
        )
        .with("minilm", FakePlugin::text_embedder())
        .with("nomic", FakePlugin::text_embedder())
        .with("hash", FakePlugin::image_embedder(true));
    let chain = chain(vec![
        describe_then_embed("ollama", "minilm"),
        describe_then_embed("ollama", "nomic"),
        hash("hash"),
    ]);
    let e = run(Walk::new(&fake, &chain).image(&image(), None, true)).unwrap();
    assert_eq!(fake.count("describe ollama"), 1, "{:?}", fake.calls());
    assert_eq!(e.provenance.step, 2);
    assert_eq!(e.provenance.plugin.key, "hash");
    assert_eq!(
        attempts_of(&e),
        vec![
            (0, Some("ollama".into()), FailureKind::Timeout),
            (1, Some("ollama".into()), FailureKind::Timeout),
        ]
    );
    let skipped = &e.provenance.attempts[1].message;
    assert!(
        skipped.starts_with("skipped: plugin \"ollama\" already failed as a describer in step 0"),
        "{skipped}"
    );
    // The skipped step did not even ask its own embedder: nothing it could do would help.
    assert_eq!(fake.count("text_model nomic"), 0, "{:?}", fake.calls());
}

#[test]
fn a_failure_that_may_not_repeat_is_asked_again() {
    // A bad answer for one image is not the plugin being down: the next step tries it again.
    let fake = Fake::default()
        .with(
            "ollama",
            FakePlugin::describer().failing("describe", FailureKind::Malformed),
        )
        .with("minilm", FakePlugin::text_embedder())
        .with("hash", FakePlugin::image_embedder(false));
    let chain = chain(vec![
        describe_then_embed("ollama", "minilm"),
        describe_then_embed("ollama", "minilm"),
        hash("hash"),
    ]);
    let e = run(Walk::new(&fake, &chain).image(&image(), None, true)).unwrap();
    assert_eq!(fake.count("describe ollama"), 2, "{:?}", fake.calls());
    assert!(e
        .provenance
        .attempts
        .iter()
        .all(|a| !a.message.starts_with("skipped")));
}

#[test]
fn a_dead_role_leaves_the_plugins_other_roles_alive() {
    // CLIP's image side is unreachable; its text side can still embed a description.
    let fake = Fake::default()
        .with(
            "clip",
            FakePlugin::image_embedder(true).failing("embed_image", FailureKind::Unavailable),
        )
        .with("ollama", FakePlugin::describer());
    let chain = chain(vec![
        image_embed("clip"),
        describe_then_embed("ollama", "clip"),
    ]);
    let e = run(Walk::new(&fake, &chain).image(&image(), None, true)).unwrap();
    assert_eq!(e.provenance.step, 1);
    assert_eq!(e.provenance.plugin.key, "clip");
    assert_eq!(
        attempts_of(&e),
        vec![(0, Some("clip".into()), FailureKind::Unavailable)]
    );
}

#[test]
fn every_attempt_is_recorded_in_step_order_and_nothing_is_stored() {
    let fake = Fake::default()
        .with("minilm", FakePlugin::text_embedder())
        .with(
            "clip",
            FakePlugin::image_embedder(false).failing("embed_image", FailureKind::Trap),
        )
        .with(
            "hash",
            FakePlugin::image_embedder(false).failing("image_model", FailureKind::MemoryExceeded),
        );
    let chain = chain(vec![
        image_embed("missing"),
        Step::Description {
            embedder: "minilm".into(),
        },
        image_embed("clip"),
        hash("hash"),
    ]);
    let err = run(Walk::new(&fake, &chain).image(&image(), None, true)).unwrap_err();
    let Error::Exhausted { attempts } = &err else {
        panic!("expected every step to fail, got {err:?}");
    };
    let seen: Vec<_> = attempts
        .iter()
        .map(|a| (a.step, a.plugin.as_deref(), a.kind))
        .collect();
    assert_eq!(
        seen,
        vec![
            (0, Some("missing"), FailureKind::NotInstalled),
            (1, None, FailureKind::NotApplicable),
            (2, Some("clip"), FailureKind::Trap),
            (3, Some("hash"), FailureKind::MemoryExceeded),
        ]
    );
    assert!(fake.recorded.lock().unwrap().is_empty());
}

#[test]
fn a_batch_keeps_input_order_when_items_answer_at_different_steps() {
    let fake = Fake::default()
        .with("ollama", FakePlugin::describer())
        .with("minilm", FakePlugin::text_embedder().bad_text("bee"))
        .with("hash", FakePlugin::image_embedder(true));
    let chain = chain(vec![describe_then_embed("ollama", "minilm"), hash("hash")]);
    let texts: Vec<String> = ["ant", "bee", "  ", "cat"].map(String::from).to_vec();
    let out = run(Walk::new(&fake, &chain).texts(&texts, Purpose::Query));
    assert_eq!(out.len(), 4);
    let ant = out[0].as_ref().unwrap();
    assert_eq!((ant.provenance.step, ant.provenance.degraded), (0, false));
    assert_eq!(ant.vector, vector("minilm", "ant"));
    let bee = out[1].as_ref().unwrap();
    assert_eq!((bee.provenance.step, bee.provenance.degraded), (1, true));
    assert_eq!(bee.vector, vector("hash", "bee"));
    assert_eq!(
        attempts_of(bee),
        vec![(0, Some("minilm".into()), FailureKind::BadInput)]
    );
    assert!(matches!(out[2], Err(Error::Usage(_))), "{:?}", out[2]);
    let cat = out[3].as_ref().unwrap();
    assert_eq!(cat.vector, vector("minilm", "cat"));
    assert!(cat.provenance.attempts.is_empty());
    // One call per step, each with only the texts still unanswered; no one describes a query.
    assert_eq!(
        fake.calls()
            .into_iter()
            .filter(|c| c.starts_with("embed_texts") || c.starts_with("describe"))
            .collect::<Vec<_>>(),
        vec!["embed_texts minilm [ant|bee|cat]", "embed_texts hash [bee]"]
    );
}

#[test]
fn a_batch_whose_embedder_is_down_moves_every_item_on_and_skips_it_later() {
    let fake = Fake::default()
        .with("ollama", FakePlugin::describer())
        .with(
            "minilm",
            FakePlugin::text_embedder().failing("embed_texts", FailureKind::Timeout),
        )
        .with("hash", FakePlugin::image_embedder(true));
    let chain = chain(vec![
        describe_then_embed("ollama", "minilm"),
        Step::Description {
            embedder: "minilm".into(),
        },
        hash("hash"),
    ]);
    let texts: Vec<String> = ["ant", "bee"].map(String::from).to_vec();
    let out = run(Walk::new(&fake, &chain).texts(&texts, Purpose::Query));
    for (e, text) in out.iter().zip(&texts) {
        let e = e.as_ref().unwrap();
        assert_eq!(e.provenance.step, 2);
        assert_eq!(e.vector, vector("hash", text));
        assert_eq!(
            attempts_of(e),
            vec![
                (0, Some("minilm".into()), FailureKind::Timeout),
                (1, Some("minilm".into()), FailureKind::Timeout),
            ]
        );
        assert!(e.provenance.attempts[1].message.starts_with("skipped"));
    }
    assert_eq!(fake.count("embed_texts minilm"), 1, "{:?}", fake.calls());
}

#[test]
fn the_text_walk_embeds_the_query_and_the_image_walk_describes_first() {
    let fake = Fake::default()
        .with("ollama", FakePlugin::describer())
        .with("minilm", FakePlugin::text_embedder());
    let chain = chain(vec![describe_then_embed("ollama", "minilm")]);
    let walk = Walk::new(&fake, &chain);

    let q = run(walk.text("cats on a sofa", Purpose::Query)).unwrap();
    assert_eq!(fake.count("describe"), 0, "{:?}", fake.calls());
    assert_eq!(q.vector, vector("minilm", "cats on a sofa"));
    let d = q.provenance.description.as_ref().unwrap();
    assert_eq!(d.source, DescriptionSource::Query);
    assert!(
        fake.recorded.lock().unwrap().is_empty(),
        "queries are not stored"
    );

    let i = run(walk.image(&image(), None, true)).unwrap();
    let d = i.provenance.description.as_ref().unwrap();
    assert_eq!(d.source, DescriptionSource::Model);
    assert_eq!(d.plugin.as_ref().unwrap().key, "ollama");
    assert_eq!(i.vector, vector("minilm", "a cat, as ollama sees it"));
    assert_eq!(*fake.recorded.lock().unwrap(), vec![i.clone()]);

    // The work queue records the answer itself, with the job's completion.
    let unrecorded = run(walk.image(&image(), None, false)).unwrap();
    assert_eq!(unrecorded.vector, i.vector);
    assert_eq!(fake.recorded.lock().unwrap().len(), 1);
}

#[test]
fn the_text_walk_asks_an_image_step_for_its_text_side_only_when_it_has_one() {
    let fake = Fake::default()
        .with("pixels", FakePlugin::image_embedder(false))
        .with("hash", FakePlugin::image_embedder(true));
    let chain = chain(vec![image_embed("pixels"), hash("hash")]);
    let q = run(Walk::new(&fake, &chain).text("a dog", Purpose::Query)).unwrap();
    assert_eq!((q.provenance.step, q.provenance.degraded), (1, true));
    assert_eq!(q.provenance.attempts[0].kind, FailureKind::NotApplicable);
    assert_eq!(fake.count("embed_image"), 0, "{:?}", fake.calls());
    assert_eq!(fake.count("embed_texts hash"), 1, "{:?}", fake.calls());
}

#[test]
fn only_an_answer_from_the_first_step_is_not_degraded() {
    let fake = Fake::default()
        .with(
            "clip",
            FakePlugin::image_embedder(false).failing("image_model", FailureKind::Unavailable),
        )
        .with("hash", FakePlugin::image_embedder(false));
    let first = chain(vec![hash("hash")]);
    let e = run(Walk::new(&fake, &first).image(&image(), None, true)).unwrap();
    assert!(!e.provenance.degraded);
    let fallback = chain(vec![image_embed("clip"), hash("hash")]);
    let e = run(Walk::new(&fake, &fallback).image(&image(), None, true)).unwrap();
    assert!(e.provenance.degraded);
    assert_eq!(e.provenance.step, 1);
}

#[test]
fn a_required_space_refuses_a_step_before_anything_is_described() {
    let fake = Fake::default()
        .with("ollama", FakePlugin::describer())
        .with("minilm", FakePlugin::text_embedder())
        .with("nomic", FakePlugin::text_embedder());
    let mut chain = chain(vec![
        describe_then_embed("ollama", "minilm"),
        describe_then_embed("ollama", "nomic"),
    ]);
    chain.require_space = Some(SpaceId::new("nomic"));
    let e = run(Walk::new(&fake, &chain).image(&image(), None, true)).unwrap();
    assert_eq!(e.provenance.space, SpaceId::new("nomic"));
    assert_eq!(
        attempts_of(&e),
        vec![(0, Some("minilm".into()), FailureKind::SpaceMismatch)]
    );
    assert_eq!(fake.count("describe ollama"), 1, "{:?}", fake.calls());
}
