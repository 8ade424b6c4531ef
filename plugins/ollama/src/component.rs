//! The WIT glue: settings from the host, HTTP through the host, errors into the contract.

use std::cell::RefCell;
use std::collections::HashSet;

use base64::Engine as _;
use serde_json::Value;

use crate::protocol::{self, Endpoint, Failure, Settings};

wit_bindgen::generate!({
    world: "describer-embedder-plugin",
    path: "../../wit/0.1.0",
});

use exports::imbed::plugin::{describer, embedder, plugin};
use imbed::plugin::types::{Error, Image, ModelInfo, PluginInfo};
use imbed::plugin::{host, http};

struct Ollama;

/// What one instance learns as it goes. An instance is single-threaded and may be reused for
/// many calls, so this saves a round trip per call.
#[derive(Default)]
struct State {
    /// Models that have answered once: their later requests use the steady-state deadline.
    warm: HashSet<String>,
    /// Vision models whose capabilities were checked.
    vision_checked: HashSet<String>,
    /// The server has no `/api/embed` (Ollama before 0.3): use `/api/embeddings`.
    legacy_embed: bool,
    /// Vector length of the embed model, once seen.
    dims: Option<usize>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|s| f(&mut s.borrow_mut()))
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Unavailable(m) => Error::Unavailable(m),
            Failure::ModelNotFound(m) => Error::ModelNotFound(m),
            Failure::BadInput(m) => Error::BadInput(m),
            Failure::Timeout(m) => Error::Timeout(m),
            Failure::Other(m) => Error::Other(m),
        }
    }
}

fn settings() -> Result<Settings, Failure> {
    Settings::from_lookup(host::get_setting)
}

fn log(level: host::LogLevel, msg: &str) {
    host::log(level, msg);
}

/// Send a request to Ollama about `model`; the first request for a model may have to load it
/// and gets the longer deadline.
fn send(
    s: &Settings,
    method: &str,
    path: &str,
    body: Option<&Value>,
    model: &str,
) -> Result<(u16, Vec<u8>), Failure> {
    let cold = !state(|st| st.warm.contains(model));
    let timeout = if cold {
        s.load_timeout_ms
    } else {
        s.request_timeout_ms
    };
    let request = http::Request {
        method: method.into(),
        url: format!("{}{path}", s.base_url),
        headers: vec![("content-type".into(), "application/json".into())],
        body: body
            .map(|b| serde_json::to_vec(b).unwrap_or_default())
            .unwrap_or_default(),
        timeout_ms: Some(timeout),
    };
    let base = &s.base_url;
    match http::send(&request) {
        Ok(r) => {
            if (200..300).contains(&r.status) {
                state(|st| st.warm.insert(model.to_string()));
            }
            Ok((r.status, r.body))
        }
        Err(http::HttpError::Unreachable(m)) => Err(Failure::Unavailable(format!(
            "cannot reach Ollama at {base} ({m}): is Ollama running? start it with `ollama serve`, or point OLLAMA_BASE_URL at it"
        ))),
        Err(http::HttpError::Timeout(m)) => Err(Failure::Timeout(format!(
            "Ollama at {base} did not answer {method} {path} within {timeout} ms ({m}){}",
            if cold { "; loading a model can take long: raise load_timeout_ms" } else { "" }
        ))),
        Err(http::HttpError::Denied(m)) => Err(Failure::Other(m)),
        Err(
            http::HttpError::Invalid(m) | http::HttpError::TooLarge(m) | http::HttpError::Other(m),
        ) => Err(Failure::Other(format!("request to Ollama at {base} failed: {m}"))),
    }
}

fn ok_or_mapped(
    s: &Settings,
    model: &str,
    (status, body): (u16, Vec<u8>),
) -> Result<Vec<u8>, Failure> {
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(protocol::map_status(&s.base_url, model, status, &body))
    }
}

/// Refuse a model that cannot see images before sending it one: Ollama before 0.30 ignored
/// the images silently and described nothing.
fn check_vision(s: &Settings) -> Result<(), Failure> {
    let model = &s.vision_model;
    if state(|st| st.vision_checked.contains(model)) {
        return Ok(());
    }
    let show = serde_json::json!({ "model": model });
    let (status, body) = send(s, "POST", "/api/show", Some(&show), "")?;
    match status {
        200 => {
            let caps = protocol::capabilities(&body);
            if !caps.is_empty() && !caps.iter().any(|c| c == "vision") {
                return Err(Failure::Other(format!(
                    "model \"{model}\" cannot see images (its capabilities: {}): set vision_model to a vision model such as llava, llama3.2-vision, minicpm-v or bakllava",
                    caps.join(", ")
                )));
            }
        }
        404 if !protocol::is_missing_route(status, &body) => {
            return Err(protocol::map_status(&s.base_url, model, status, &body));
        }
        // An old server without /api/show, or a passing error: let the describe call decide.
        _ => log(
            host::LogLevel::Debug,
            &format!("/api/show answered {status}; not checking capabilities"),
        ),
    }
    state(|st| st.vision_checked.insert(model.clone()));
    Ok(())
}

fn describe(image: &Image, prompt: Option<String>) -> Result<describer::Description, Failure> {
    let s = settings()?;
    check_vision(&s)?;
    let prompt = prompt.unwrap_or_else(|| {
        s.prompt_for(&image.mime_type, image.width, image.height)
            .to_string()
    });
    // Ollama wants standard base64 with padding, not a data: URI.
    let encoded = base64::engine::general_purpose::STANDARD.encode(&image.data);
    let body = s.describe_body(&prompt, encoded);
    let path = match s.endpoint {
        Endpoint::Generate => "/api/generate",
        Endpoint::Chat => "/api/chat",
    };
    let answer = ok_or_mapped(
        &s,
        &s.vision_model,
        send(&s, "POST", path, Some(&body), &s.vision_model)?,
    )?;
    let text = protocol::parse_generation(s.endpoint, &answer)?;
    let (text, structured) = match s
        .structured
        .then(|| protocol::parse_structured(&text))
        .flatten()
    {
        Some(st) => (
            st.description.clone(),
            Some(describer::Structured {
                objects: st.objects,
                visible_text: st.visible_text,
                tags: st.tags,
            }),
        ),
        // Invalid JSON is not an error: the raw answer is still a description.
        None => (text.trim().to_string(), None),
    };
    if text.is_empty() {
        return Err(Failure::Other(format!(
            "model \"{}\" returned an empty description",
            s.vision_model
        )));
    }
    Ok(describer::Description {
        text,
        model_id: s.vision_model.clone(),
        structured,
    })
}

type Item = Result<Vec<f32>, Failure>;

/// Embed a batch; a failing item is retried alone so it does not sink the rest.
fn embed_batch(s: &Settings, texts: &[&str]) -> Result<Vec<Item>, Failure> {
    if state(|st| st.legacy_embed) {
        return Ok(texts.iter().map(|t| embed_legacy(s, t)).collect());
    }
    let model = &s.embed_model;
    let body = s.embed_body(texts);
    let (status, answer) = send(s, "POST", "/api/embed", Some(&body), model)?;
    if protocol::is_missing_route(status, &answer) {
        log(
            host::LogLevel::Info,
            "this Ollama has no /api/embed; using the legacy /api/embeddings",
        );
        state(|st| st.legacy_embed = true);
        return Ok(texts.iter().map(|t| embed_legacy(s, t)).collect());
    }
    if !(200..300).contains(&status) {
        let failure = protocol::map_status(&s.base_url, model, status, &answer);
        // One bad item (too long, NaN from the model) fails Ollama's whole batch: find it.
        let per_item = matches!(status, 400 | 500) && !matches!(failure, Failure::ModelNotFound(_));
        if texts.len() > 1 && per_item {
            return Ok(texts.iter().map(|t| single(embed_batch(s, &[t]))).collect());
        }
        return Err(failure);
    }
    let vectors = protocol::parse_embed(&answer)?;
    if vectors.len() != texts.len() {
        return Err(Failure::Other(format!(
            "Ollama returned {} embeddings for {} inputs",
            vectors.len(),
            texts.len()
        )));
    }
    let dims = state(|st| st.dims);
    Ok(vectors
        .into_iter()
        .zip(texts)
        .map(|(v, t)| match protocol::vector_problem(&v, dims) {
            None => {
                state(|st| st.dims.get_or_insert(v.len()).to_owned());
                Ok(v)
            }
            Some(problem) if texts.len() > 1 => {
                single(embed_batch(s, &[t])).map_err(|_| Failure::Other(problem))
            }
            Some(problem) => Err(Failure::Other(problem)),
        })
        .collect())
}

fn single(batch: Result<Vec<Item>, Failure>) -> Item {
    batch.and_then(|mut items| {
        items
            .pop()
            .unwrap_or_else(|| Err(Failure::Other("no answer for the item".into())))
    })
}

fn embed_legacy(s: &Settings, text: &str) -> Item {
    let body = s.legacy_embed_body(text);
    let answer = ok_or_mapped(
        s,
        &s.embed_model,
        send(s, "POST", "/api/embeddings", Some(&body), &s.embed_model)?,
    )?;
    let v = protocol::parse_legacy_embed(&answer)?;
    match protocol::vector_problem(&v, state(|st| st.dims)) {
        Some(problem) => Err(Failure::Other(problem)),
        None => Ok(v),
    }
}

impl plugin::Guest for Ollama {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "ollama".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn warm() -> Result<(), Error> {
        let s = settings()?;
        // An empty prompt loads the vision model without generating anything.
        let load = s.load_body(&s.vision_model);
        ok_or_mapped(
            &s,
            &s.vision_model,
            send(&s, "POST", "/api/generate", Some(&load), &s.vision_model)?,
        )?;
        single(embed_batch(&s, &["warm up"]))?;
        Ok(())
    }
}

impl describer::Guest for Ollama {
    fn describe(image: Image, prompt: Option<String>) -> Result<describer::Description, Error> {
        Ok(describe(&image, prompt)?)
    }
}

impl embedder::Guest for Ollama {
    fn text_model() -> Result<ModelInfo, Error> {
        let s = settings()?;
        // The vector length is whatever the model actually returns: ask it once.
        let probe = single(embed_batch(&s, &["dimension probe"]))?;
        Ok(ModelInfo {
            model_id: s.embed_model.clone(),
            dimensions: Some(probe.len() as u32),
            space_id: s.space_id(),
        })
    }

    fn embed_texts(texts: Vec<String>) -> Result<Vec<Result<Vec<f32>, Error>>, Error> {
        let s = settings()?;
        let wanted: Vec<&str> = texts
            .iter()
            .map(String::as_str)
            .filter(|t| !t.trim().is_empty())
            .collect();
        let mut answers = if wanted.is_empty() {
            Vec::new()
        } else {
            embed_batch(&s, &wanted)?
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
                        .unwrap_or_else(|| Err(Failure::Other("no answer for the item".into())))
                        .map_err(Error::from)
                }
            })
            .collect())
    }
}

export!(Ollama);
