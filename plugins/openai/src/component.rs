//! The component glue, on the guest SDK: settings from the host, HTTP through the host with
//! bounded retries, errors into the contract.

use std::time::Duration;

use imbed_plugin_sdk::http::{HttpError, Request, Response};
use imbed_plugin_sdk::prelude::*;
use serde_json::Value;

use crate::protocol::{self, Adaptations, Failure, Role, Settings};

/// One plugin instance. It answers one call at a time and lives for many, so it keeps what it
/// learns: request changes a server forced on it, and the vector length of the embed model.
#[derive(Default)]
struct OpenAi {
    adapt: Adaptations,
    dims: Option<usize>,
}

impl Plugin for OpenAi {
    const NAME: &'static str = "openai";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    /// Checks the server, the key and the embed model with one embedding. The vision model is
    /// not exercised: on OpenAI that would cost a paid generation at every start.
    fn warm(&mut self) -> Result<(), Error> {
        let s = settings()?;
        self.probe(&s).map(|_| ()).map_err(to_error)
    }

    /// One embedding of the embed model (as `warm`): says whether the server answers, the key
    /// is accepted and the model exists. The vision model is not tried, for the same reason.
    fn health(&mut self) -> Result<Vec<HealthCheck>, Error> {
        let s = settings()?;
        let server = s.server();
        // Not `probe`: it answers from what the instance learned, and health must ask now.
        let fresh = self
            .embed_chunk(&s, &["health check"])
            .and_then(|mut items| {
                items
                    .pop()
                    .unwrap_or_else(|| Err(Failure::Other("no answer for the health check".into())))
            });
        Ok(vec![match fresh.map(|v| v.len()) {
            Ok(dims) => HealthCheck::ok(
                format!("embed model {}", s.embed_model),
                format!("{server} embeds with it ({dims} dimensions)"),
            ),
            Err(f) => {
                let e = to_error(f);
                let name = match e {
                    Error::Unavailable(_) | Error::Timeout(_) => "server".to_string(),
                    _ => format!("embed model {}", s.embed_model),
                };
                HealthCheck::failing(name, e.message(), "see the message: it says what to change")
            }
        }])
    }
}

fn task_prefixes_of(s: &Settings) -> TaskPrefixes {
    let mut p = imbed_plugin_sdk::prefixes::known(&s.embed_model);
    if let Some(d) = &s.document_prefix {
        p = p.with(Purpose::Document, d.clone());
    }
    if let Some(q) = &s.query_prefix {
        p = p.with(Purpose::Query, q.clone());
    }
    p
}

impl Embedder for OpenAi {
    fn text_model(&mut self) -> Result<ModelInfo, Error> {
        let s = settings()?;
        // The vector length is whatever the server actually returns: ask it once per instance.
        let dims = self.probe(&s).map_err(to_error)?;
        let tag = task_prefixes_of(&s).space_tag();
        Ok(
            ModelInfo::new(s.embed_model.clone(), s.space_id_tagged(tag.as_deref()))
                .with_dimensions(dims as u32),
        )
    }

    fn task_prefixes(&mut self) -> Result<TaskPrefixes, Error> {
        Ok(task_prefixes_of(&settings()?))
    }

    fn embed_text(&mut self, text: &str) -> Result<Vector, Error> {
        imbed_plugin_sdk::single(self.embed_texts(vec![text.to_string()], Purpose::None))
    }

    fn embed_texts(&mut self, texts: Vec<String>, _purpose: Purpose) -> Batch {
        let s = settings()?;
        embed_non_blank(&texts, |wanted| {
            let mut answers = Vec::with_capacity(wanted.len());
            for (i, chunk) in wanted.chunks(s.batch_size).enumerate() {
                match self.embed_chunk(&s, chunk) {
                    Ok(items) => answers.extend(items),
                    // Nothing done yet and the server is down, the model missing or the key
                    // wrong: the whole batch fails, and the host moves every item on at once.
                    Err(f) if i == 0 => return Err(to_error(f)),
                    // Later chunks keep what the earlier ones got.
                    Err(f) => answers.extend(chunk.iter().map(|_| Err(f.clone()))),
                }
            }
            Ok(answers.into_iter().map(|a| a.map_err(to_error)).collect())
        })
    }
}

impl Describer for OpenAi {
    fn describe(&mut self, image: Image, prompt: Option<String>) -> Result<Description, Error> {
        let s = settings()?;
        self.describe_with(&s, &image, prompt).map_err(to_error)
    }

    /// The model, where it runs (a local server's model name is only its own label), the prompt
    /// and the sampling options; not the key, timeouts or retries.
    fn cache_identity(&mut self) -> Result<Vec<(String, String)>, Error> {
        let s = settings()?;
        let mut pairs = vec![
            ("vision_model".to_string(), s.vision_model.clone()),
            ("prompt".to_string(), s.prompt.clone()),
            ("max_tokens".to_string(), s.max_tokens.to_string()),
            ("temperature".to_string(), format!("{:?}", s.temperature)),
            ("seed".to_string(), format!("{:?}", s.seed)),
            ("detail".to_string(), format!("{:?}", s.detail)),
        ];
        if !s.is_openai() {
            pairs.push(("server".to_string(), protocol::host_of(&s.base_url)));
        }
        Ok(pairs)
    }
}

export_plugin!(OpenAi: describer, embedder);

fn settings() -> Result<Settings, Error> {
    Settings::from_lookup(imbed_plugin_sdk::settings::get).map_err(to_error)
}

fn to_error(f: Failure) -> Error {
    match f {
        Failure::Unavailable(m) => Error::Unavailable(m),
        Failure::ModelNotFound(m) => Error::ModelNotFound(m),
        Failure::BadInput(m) => Error::BadInput(m),
        Failure::Timeout(m) => Error::Timeout(m),
        Failure::Other(m) => Error::Other(m),
    }
}

type Item = Result<Vec<f32>, Failure>;

impl OpenAi {
    /// The embed model's vector length, asked once per instance.
    fn probe(&mut self, s: &Settings) -> Result<usize, Failure> {
        if let Some(d) = self.dims {
            return Ok(d);
        }
        let v = self
            .embed_chunk(s, &["dimension probe"])?
            .pop()
            .unwrap_or_else(|| Err(Failure::Other("no answer for the probe".into())))?;
        Ok(v.len())
    }

    /// Embed up to `batch_size` texts in one request. When the server refuses the batch because
    /// of one input (too long, say), each text is sent alone so the others still count.
    fn embed_chunk(&mut self, s: &Settings, texts: &[&str]) -> Result<Vec<Item>, Failure> {
        let answer = match post(s, Role::Embed, &s.embed_body(texts)) {
            Ok(answer) => answer,
            Err(Failure::BadInput(_)) if texts.len() > 1 => {
                return Ok(texts
                    .iter()
                    .map(|t| single(self.embed_chunk(s, &[t])))
                    .collect())
            }
            Err(f) => return Err(f),
        };
        let embedded = protocol::parse_embeddings(s, texts.len(), &answer)?;
        Ok(embedded
            .vectors
            .into_iter()
            .map(|v| match protocol::vector_problem(s, &v, self.dims) {
                Some(problem) => Err(Failure::Other(problem)),
                None => {
                    self.dims.get_or_insert(v.len());
                    Ok(v)
                }
            })
            .collect())
    }

    fn describe_with(
        &mut self,
        s: &Settings,
        image: &Image,
        prompt: Option<String>,
    ) -> Result<Description, Failure> {
        let prompt = prompt.unwrap_or_else(|| s.prompt.clone());
        // A server may refuse a parameter the model does not take (OpenAI's reasoning models:
        // `max_tokens`, a temperature of 0): learn it and ask again, at most once per parameter.
        for _ in 0..4 {
            let body = s.describe_body(&prompt, &image.mime_type, &image.data, &self.adapt);
            let response = send_with_retries(s, Role::Describe, &body)?;
            if !response.is_success() {
                if self.adapt.learn(response.status, &response.body) {
                    log::info(format!(
                        "model \"{}\" refused a parameter; asking again without it ({})",
                        s.vision_model,
                        protocol::ApiError::parse(&response.body).message
                    ));
                    continue;
                }
                return Err(protocol::map_status(
                    s,
                    Role::Describe,
                    response.status,
                    &response.headers,
                    &response.body,
                ));
            }
            let answer = if s.stream {
                protocol::parse_stream(s, &response.body)?
            } else {
                protocol::parse_chat(s, &response.body)?
            };
            if answer.finish_reason.as_deref() == Some("length") {
                log::warn(format!(
                    "the description of model \"{}\" was cut at max_tokens = {}",
                    s.vision_model, s.max_tokens
                ));
            }
            let text = protocol::description(s, &answer)?;
            return Ok(Description::new(text, s.vision_model.clone()));
        }
        Err(Failure::Other(format!(
            "{} kept refusing the request's parameters for model \"{}\"",
            s.server(),
            s.vision_model
        )))
    }
}

fn single(batch: Result<Vec<Item>, Failure>) -> Item {
    batch.and_then(|mut items| {
        items
            .pop()
            .unwrap_or_else(|| Err(Failure::Other("no answer for the text".into())))
    })
}

/// POST `body` for `role`; the body of a 2xx answer, or the mapped failure.
fn post(s: &Settings, role: Role, body: &Value) -> Result<Vec<u8>, Failure> {
    let r = send_with_retries(s, role, body)?;
    if r.is_success() {
        Ok(r.body)
    } else {
        Err(protocol::map_status(s, role, r.status, &r.headers, &r.body))
    }
}

/// Send, and send again while the server says when (429/503 with a short `Retry-After`).
fn send_with_retries(s: &Settings, role: Role, body: &Value) -> Result<Response, Failure> {
    let mut attempt = 0;
    loop {
        let r = send(s, role, body)?;
        match protocol::retry_delay(s, attempt, r.status, &r.headers, &r.body) {
            Some(ms) => {
                log::info(format!(
                    "{} answered {} to {}; retrying in {ms} ms as it asked",
                    s.server(),
                    r.status,
                    role.path()
                ));
                // The host's deadline for the call still bounds the whole loop.
                std::thread::sleep(Duration::from_millis(ms));
                attempt += 1;
            }
            None => return Ok(r),
        }
    }
}

fn send(s: &Settings, role: Role, body: &Value) -> Result<Response, Failure> {
    let mut request = Request::post(format!("{}{}", s.base_url, role.path()))
        .body(serde_json::to_vec(body).unwrap_or_default())
        .timeout_ms(s.request_timeout_ms);
    request.headers = s.request_headers();
    let base = &s.base_url;
    request.send().map_err(|e| match e {
        HttpError::Unreachable(m) => Failure::Unavailable(format!(
            "cannot reach {} ({m}): is the server running at {base}? start it, or point base_url at it",
            s.server()
        )),
        HttpError::Timeout(m) => Failure::Timeout(format!(
            "{} did not answer POST {} within {} ms ({m}): raise request_timeout_ms (and the plugin's limits.timeout_ms) if the model is slow",
            s.server(),
            role.path(),
            s.request_timeout_ms
        )),
        HttpError::Denied(m) => Failure::Other(m),
        HttpError::TooLarge(m) => Failure::Other(format!("{}'s answer is too large: {m}", s.server())),
        HttpError::Invalid(m) | HttpError::Other(m) => {
            Failure::Other(format!("request to {} failed: {m}", s.server()))
        }
    })
}
