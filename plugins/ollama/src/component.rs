//! The plugin itself: settings from the host, HTTP through the host, Ollama's answers into the
//! contract's cases.

use std::collections::HashSet;

use base64::Engine as _;
use imbed_plugin_sdk::http::{HttpError, Request};
use imbed_plugin_sdk::settings::Settings as HostSettings;
use imbed_plugin_sdk::{
    embed_non_blank, export_plugin, log, single, Batch, Describer, Description, Embedder, Error,
    HealthCheck, Image, ModelInfo, Plugin, Purpose, Structured, TaskPrefixes, Vector,
};
use serde_json::Value;

use crate::protocol::{self, Endpoint, Settings};

/// The plugin. What one instance learns as it goes: an instance may be reused for many calls,
/// so this saves a round trip per call.
#[derive(Default)]
pub struct Ollama {
    /// Models that have answered once: their later requests use the steady-state deadline.
    warm: HashSet<String>,
    /// Vision models whose capabilities were checked.
    vision_checked: HashSet<String>,
    /// The server has no `/api/embed` (Ollama before 0.3): use `/api/embeddings`.
    legacy_embed: bool,
    /// Vector length of the embed model, once seen.
    dims: Option<usize>,
}

fn settings() -> Result<Settings, Error> {
    Settings::from_settings(&HostSettings::from_host())
}

impl Ollama {
    /// Which weights `model` names right now: the first 12 hex digits of its digest in
    /// `/api/tags`. The host learns what this feeds (a space id, a describer identity) once per
    /// endpoint and keys stored answers by it, so an answer made while Ollama cannot tell is an
    /// error, asked again next time, not `None` kept for good: unreachable, busy (429, 503), or
    /// the model not pulled yet (after `ollama pull` its answers would have stayed keyed without
    /// the digest). A server that lists no models (a proxy passing only the inference routes)
    /// leaves it without a revision.
    fn revision(&mut self, s: &Settings, model: &str) -> Result<Option<String>, Error> {
        let (status, answer) = self.send(s, "GET", "/api/tags", None, "")?;
        if matches!(status, 429 | 503) {
            return Err(protocol::map_status(&s.base_url, model, status, &answer));
        }
        let listed = (200..300).contains(&status) && protocol::lists_models(&answer);
        if listed && protocol::listed_capabilities(&answer, model).is_none() {
            return Err(Error::ModelNotFound(format!(
                "model \"{model}\" is not pulled on {}: run `ollama pull {model}`",
                s.base_url
            )));
        }
        let revision = listed
            .then(|| protocol::model_revision(&answer, model))
            .flatten();
        if revision.is_none() {
            log::warn(format!(
                "Ollama at {} did not list the digest of {model:?} (GET /api/tags answered {status}); its answers are keyed without a revision",
                s.base_url
            ));
        }
        Ok(revision)
    }

    /// Send a request to Ollama about `model`; the first request for a model may have to load
    /// it and gets the longer deadline.
    fn send(
        &mut self,
        s: &Settings,
        method: &str,
        path: &str,
        body: Option<&Value>,
        model: &str,
    ) -> Result<(u16, Vec<u8>), Error> {
        let cold = !self.warm.contains(model);
        let timeout = if cold {
            s.load_timeout_ms
        } else {
            s.request_timeout_ms
        };
        let mut request = Request::new(method, format!("{}{path}", s.base_url)).timeout_ms(timeout);
        if let Some(body) = body {
            request = request.json(body)?;
        } else {
            request = request.header("content-type", "application/json");
        }
        let base = &s.base_url;
        match request.send() {
            Ok(r) => {
                if r.is_success() {
                    self.warm.insert(model.to_string());
                }
                Ok((r.status, r.body))
            }
            Err(HttpError::Unreachable(m)) => Err(Error::Unavailable(format!(
                "cannot reach Ollama at {base} ({m}): is Ollama running? start it with `ollama serve`, or point OLLAMA_BASE_URL at it"
            ))),
            Err(HttpError::Timeout(m)) => Err(Error::Timeout(format!(
                "Ollama at {base} did not answer {method} {path} within {timeout} ms ({m}){}",
                if cold { "; loading a model can take long: raise load_timeout_ms" } else { "" }
            ))),
            Err(HttpError::Denied(m)) => Err(Error::Other(m)),
            Err(HttpError::Invalid(m) | HttpError::TooLarge(m) | HttpError::Other(m)) => Err(
                Error::Other(format!("request to Ollama at {base} failed: {m}")),
            ),
        }
    }
}

fn ok_or_mapped(
    s: &Settings,
    model: &str,
    (status, body): (u16, Vec<u8>),
) -> Result<Vec<u8>, Error> {
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(protocol::map_status(&s.base_url, model, status, &body))
    }
}

type Item = Result<Vector, Error>;

impl Ollama {
    /// Refuse a model that cannot see images before sending it one: Ollama before 0.30 ignored
    /// the images silently and described nothing.
    fn check_vision(&mut self, s: &Settings) -> Result<(), Error> {
        let model = &s.vision_model;
        if self.vision_checked.contains(model) {
            return Ok(());
        }
        let show = serde_json::json!({ "model": model });
        let (status, body) = self.send(s, "POST", "/api/show", Some(&show), "")?;
        match status {
            200 => {
                let caps = protocol::capabilities(&body);
                if !caps.is_empty() && !caps.iter().any(|c| c == "vision") {
                    return Err(Error::Other(format!(
                        "model \"{model}\" cannot see images (its capabilities: {}): set vision_model to a vision model such as llava, llama3.2-vision, minicpm-v or bakllava",
                        caps.join(", ")
                    )));
                }
            }
            404 if !protocol::is_missing_route(status, &body) => {
                return Err(protocol::map_status(&s.base_url, model, status, &body));
            }
            // An old server without /api/show, or a passing error: let the describe call decide.
            _ => log::debug(format!(
                "/api/show answered {status}; not checking capabilities"
            )),
        }
        self.vision_checked.insert(model.clone());
        Ok(())
    }

    /// Embed a batch; a failing item is retried alone so it does not sink the rest.
    fn embed_batch(&mut self, s: &Settings, texts: &[&str]) -> Result<Vec<Item>, Error> {
        if self.legacy_embed {
            return Ok(texts.iter().map(|t| self.embed_legacy(s, t)).collect());
        }
        let model = &s.embed_model;
        let body = s.embed_body(texts);
        let (status, answer) = self.send(s, "POST", "/api/embed", Some(&body), model)?;
        if protocol::is_missing_route(status, &answer) {
            log::info("this Ollama has no /api/embed; using the legacy /api/embeddings");
            self.legacy_embed = true;
            return Ok(texts.iter().map(|t| self.embed_legacy(s, t)).collect());
        }
        if !(200..300).contains(&status) {
            let failure = protocol::map_status(&s.base_url, model, status, &answer);
            // One bad item (too long, NaN from the model) fails Ollama's whole batch: find it.
            let per_item =
                matches!(status, 400 | 500) && !matches!(failure, Error::ModelNotFound(_));
            if texts.len() > 1 && per_item {
                return Ok(texts
                    .iter()
                    .map(|t| single(self.embed_batch(s, &[t])))
                    .collect());
            }
            return Err(failure);
        }
        let vectors = protocol::parse_embed(&answer)?;
        if vectors.len() != texts.len() {
            return Err(Error::Other(format!(
                "Ollama returned {} embeddings for {} inputs",
                vectors.len(),
                texts.len()
            )));
        }
        let dims = self.dims;
        Ok(vectors
            .into_iter()
            .zip(texts)
            .map(|(v, t)| match protocol::vector_problem(&v, dims) {
                None => {
                    self.dims.get_or_insert(v.len());
                    Ok(v)
                }
                Some(problem) if texts.len() > 1 => {
                    single(self.embed_batch(s, &[t])).map_err(|_| Error::Other(problem))
                }
                Some(problem) => Err(Error::Other(problem)),
            })
            .collect())
    }

    fn embed_legacy(&mut self, s: &Settings, text: &str) -> Item {
        let body = s.legacy_embed_body(text);
        let answer = self.send(s, "POST", "/api/embeddings", Some(&body), &s.embed_model)?;
        let answer = ok_or_mapped(s, &s.embed_model, answer)?;
        let v = protocol::parse_legacy_embed(&answer)?;
        match protocol::vector_problem(&v, self.dims) {
            Some(problem) => Err(Error::Other(problem)),
            None => Ok(v),
        }
    }
}

impl Plugin for Ollama {
    const NAME: &'static str = "ollama";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn warm(&mut self) -> Result<(), Error> {
        let s = settings()?;
        // An empty prompt loads the vision model without generating anything.
        let load = s.load_body(&s.vision_model);
        let answer = self.send(&s, "POST", "/api/generate", Some(&load), &s.vision_model)?;
        ok_or_mapped(&s, &s.vision_model, answer)?;
        single(self.embed_batch(&s, &["warm up"]))?;
        Ok(())
    }

    /// The server, then each configured model: pulled, and able to do its role. Lists the
    /// models once (`/api/tags`); loads nothing.
    fn health(&mut self) -> Result<Vec<HealthCheck>, Error> {
        let s = settings()?;
        let base = &s.base_url;
        let server = "server";
        let version = match self.send(&s, "GET", "/api/version", None, "") {
            Ok((200, body)) => protocol::version(&body),
            Ok((status, _)) => {
                return Ok(vec![HealthCheck::failing(
                    server,
                    format!(
                    "{base} answered GET /api/version with {status}: it does not look like Ollama"
                ),
                    "point base_url (or OLLAMA_BASE_URL) at an Ollama server",
                )])
            }
            Err(e) => {
                return Ok(vec![HealthCheck::failing(
                    server,
                    format!("cannot reach Ollama at {base}: {}", e.message()),
                    "start it with `ollama serve`, or set OLLAMA_BASE_URL to where it runs",
                )])
            }
        };
        let mut checks = vec![HealthCheck::ok(
            server,
            format!(
                "Ollama {} at {base}",
                version.as_deref().unwrap_or("(version unknown)")
            ),
        )];
        let tags = match self.send(&s, "GET", "/api/tags", None, "") {
            Ok((200, body)) => body,
            Ok((status, _)) => {
                checks.push(HealthCheck::unknown(
                    "models",
                    format!("cannot list models: GET /api/tags answered {status}"),
                ));
                return Ok(checks);
            }
            Err(e) => {
                checks.push(HealthCheck::unknown(
                    "models",
                    format!("cannot list models: {}", e.message()),
                ));
                return Ok(checks);
            }
        };
        for (role, key, model, needed) in [
            ("vision", "vision_model", &s.vision_model, "vision"),
            ("embed", "embed_model", &s.embed_model, "embedding"),
        ] {
            let name = format!("{role} model {model}");
            match protocol::listed_capabilities(&tags, model) {
                None => checks.push(HealthCheck::failing(
                    name,
                    format!("model \"{model}\" is not pulled on {base}"),
                    format!("run `ollama pull {model}`"),
                )),
                Some(caps) if !caps.is_empty() && !caps.iter().any(|c| c == needed) => {
                    checks.push(HealthCheck::failing(
                        name,
                        format!("\"{model}\" cannot do {role} (it can: {})", caps.join(", ")),
                        format!("set {key} to a {role} model"),
                    ))
                }
                Some(_) => checks.push(HealthCheck::ok(name, "present")),
            }
        }
        Ok(checks)
    }
}

impl Describer for Ollama {
    /// The vision model (and its digest, so an `ollama pull` that moves the tag writes new
    /// descriptions), the prompts and every option sent with them. Not the address, the
    /// timeouts or the embedding side: those do not change what the model writes.
    fn cache_identity(&mut self) -> Result<Vec<(String, String)>, Error> {
        let s = settings()?;
        // Not an identity without the digest while Ollama cannot tell it: learned once, it would
        // stay after Ollama is back (and in a pool differ from the other endpoints').
        let digest = self.revision(&s, &s.vision_model)?;
        let mut pairs = vec![
            ("vision_model".to_string(), s.vision_model.clone()),
            ("prompt".to_string(), s.prompt.clone()),
            ("structured".to_string(), s.structured.to_string()),
            ("endpoint".to_string(), format!("{:?}", s.endpoint)),
            ("temperature".to_string(), s.temperature.to_string()),
            ("seed".to_string(), s.seed.to_string()),
        ];
        if let Some(d) = digest {
            pairs.push(("vision_digest".to_string(), d));
        }
        pairs.extend(
            s.prompts
                .iter()
                .map(|(k, v)| (format!("prompts.{k}"), v.clone())),
        );
        Ok(pairs)
    }

    fn describe(&mut self, image: Image, prompt: Option<String>) -> Result<Description, Error> {
        let s = settings()?;
        self.check_vision(&s)?;
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
        let answer = self.send(&s, "POST", path, Some(&body), &s.vision_model)?;
        let answer = ok_or_mapped(&s, &s.vision_model, answer)?;
        let text = protocol::parse_generation(s.endpoint, &answer)?;
        let (text, structured) = match s
            .structured
            .then(|| protocol::parse_structured(&text))
            .flatten()
        {
            Some(st) => (
                st.description.clone(),
                Some(Structured {
                    objects: st.objects,
                    visible_text: st.visible_text,
                    tags: st.tags,
                }),
            ),
            // Invalid JSON is not an error: the raw answer is still a description.
            None => (text.trim().to_string(), None),
        };
        if text.is_empty() {
            return Err(Error::Other(format!(
                "model \"{}\" returned an empty description",
                s.vision_model
            )));
        }
        Ok(Description {
            text,
            model_id: s.vision_model.clone(),
            structured,
        })
    }
}

impl Embedder for Ollama {
    fn text_model(&mut self) -> Result<ModelInfo, Error> {
        let s = settings()?;
        // The vector length is whatever the model actually returns: ask it once.
        let probe = single(self.embed_batch(&s, &["dimension probe"]))?;
        let revision = self.revision(&s, &s.embed_model)?;
        Ok(
            ModelInfo::new(s.embed_model.clone(), s.space_id(revision.as_deref()))
                .with_dimensions(probe.len() as u32),
        )
    }

    fn task_prefixes(&mut self) -> Result<TaskPrefixes, Error> {
        Ok(settings()?.task_prefixes())
    }

    fn embed_text(&mut self, text: &str) -> Result<Vector, Error> {
        single(self.embed_texts(vec![text.to_string()], Purpose::None))
    }

    fn embed_texts(&mut self, texts: Vec<String>, _purpose: Purpose) -> Batch {
        let s = settings()?;
        embed_non_blank(&texts, |wanted| self.embed_batch(&s, wanted))
    }
}

export_plugin!(Ollama: describer, embedder);
