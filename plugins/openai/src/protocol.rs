//! The OpenAI API as this plugin uses it: settings, request bodies, response parsing, the mapping
//! of a server's answers to the contract's error cases (with messages that say what to do), and
//! the retry decisions. Nothing here touches the host: the glue in `component.rs` sends what this
//! module builds and hands back what it receives.
//!
//! One module serves several servers that speak the same API with small differences:
//!
//! - OpenAI: errors are `{"error": {"message", "type", "param", "code"}}` with string codes
//!   (`invalid_api_key`, `model_not_found`, `rate_limit_exceeded`, `insufficient_quota`); newer
//!   models refuse `max_tokens` (they want `max_completion_tokens`) and any temperature but 1.
//! - vLLM, llama.cpp's server, LocalAI: the same envelope, but `code` may be the HTTP status as a
//!   number, and vLLM has sent the fields at the top level (`{"object": "error", "message", ...}`).
//! - LM Studio and others sometimes send `{"error": "text"}`.

use base64::Engine as _;
use serde_json::{json, Value};

/// The default describe prompt (the same as the Ollama plugin's, so backends are comparable).
pub const DEFAULT_PROMPT: &str = "Describe this image in detail, including objects, colors, scene, context, and any text visible.";

/// The default base URL: OpenAI itself.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// The host whose model names are global, so its space ids need no host part.
pub const OPENAI_HOST: &str = "api.openai.com";

/// The contract's error cases, independent of the generated bindings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Server unreachable, rate-limiting or failing; later may work.
    Unavailable(String),
    /// The model is not served.
    ModelNotFound(String),
    /// This input cannot be processed.
    BadInput(String),
    /// No answer in time.
    Timeout(String),
    /// Anything else (bad key, bad settings, a model that cannot do the job).
    Other(String),
}

impl Failure {
    /// The message, whatever the case.
    pub fn message(&self) -> &str {
        match self {
            Failure::Unavailable(m)
            | Failure::ModelNotFound(m)
            | Failure::BadInput(m)
            | Failure::Timeout(m)
            | Failure::Other(m) => m,
        }
    }
}

/// Which request field carries the completion length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenField {
    /// `max_tokens`: what every local server understands.
    MaxTokens,
    /// `max_completion_tokens`: what OpenAI's newer models require.
    MaxCompletionTokens,
}

impl TokenField {
    /// The JSON field name.
    pub fn name(self) -> &'static str {
        match self {
            TokenField::MaxTokens => "max_tokens",
            TokenField::MaxCompletionTokens => "max_completion_tokens",
        }
    }
}

/// Settings, read from the config's `[plugins.<name>.settings]`.
#[derive(Clone, PartialEq)]
pub struct Settings {
    /// Everything before `/chat/completions`, e.g. `http://localhost:1234/v1`; no trailing slash.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>`; `None` for servers without keys.
    pub api_key: Option<String>,
    /// The model that describes images.
    pub vision_model: String,
    /// The model that embeds text.
    pub embed_model: String,
    /// The default prompt.
    pub prompt: String,
    /// Longest description, in tokens.
    pub max_tokens: u32,
    /// Which field carries `max_tokens`.
    pub token_field: TokenField,
    /// Sampling temperature (0: repeatable); `None` leaves the server's default.
    pub temperature: Option<f64>,
    /// Sampling seed; `None` sends none.
    pub seed: Option<i64>,
    /// The image part's `detail` (`low`, `high`, `auto`); `None` sends none.
    pub detail: Option<String>,
    /// Ask for shorter vectors (`dimensions`, for models trained to allow it).
    pub dimensions: Option<u32>,
    /// Texts per `/embeddings` request.
    pub batch_size: usize,
    /// Ask for the description as server-sent events.
    pub stream: bool,
    /// Deadline of one request.
    pub request_timeout_ms: u32,
    /// How many times a request refused with 429 or 503 and a `Retry-After` is sent again.
    pub max_retries: u32,
    /// A `Retry-After` longer than this is not waited for: the chain moves on instead.
    pub retry_max_wait_ms: u32,
    /// Extra request headers (e.g. `OpenAI-Organization`, a proxy's own headers).
    pub headers: Vec<(String, String)>,
    /// Overrides the space id (for servers known to serve the very same weights).
    pub space: Option<String>,
    /// Overrides the known task prefix for documents.
    pub document_prefix: Option<String>,
    /// Overrides the known task prefix for queries.
    pub query_prefix: Option<String>,
}

// The key must never reach a log line: Debug shows only whether there is one.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("vision_model", &self.vision_model)
            .field("embed_model", &self.embed_model)
            .field("dimensions", &self.dimensions)
            .finish_non_exhaustive()
    }
}

fn bad(key: &str, value: &str, want: &str) -> Failure {
    Failure::Other(format!("setting `{key}` is {value:?}: {want}"))
}

fn header_safe(s: &str) -> bool {
    !s.chars().any(|c| c.is_control())
}

impl Settings {
    /// Read settings through `get`, validating each.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Settings, Failure> {
        // Prefixes are taken verbatim: their trailing space is part of them.
        let prefix = |key: &str| get(key).filter(|v| !v.is_empty());
        let document_prefix = prefix("document_prefix");
        let query_prefix = prefix("query_prefix");
        // An unset `${VAR:-}` arrives as an empty string: treat it as absent.
        let get = |key: &str| {
            get(key)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let number = |key: &str, default: u32| -> Result<u32, Failure> {
            match get(key) {
                None => Ok(default),
                Some(v) => v.parse().map_err(|_| bad(key, &v, "use a whole number")),
            }
        };
        let flag = |key: &str, default: bool| -> Result<bool, Failure> {
            match get(key).as_deref() {
                None => Ok(default),
                Some("true") => Ok(true),
                Some("false") => Ok(false),
                Some(v) => Err(bad(key, v, "use true or false")),
            }
        };
        let base_url = get("base_url").unwrap_or_else(|| OPENAI_BASE_URL.into());
        let base_url = base_url.trim_end_matches('/').to_string();
        let rest = base_url
            .strip_prefix("http://")
            .or_else(|| base_url.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
            return Err(bad(
                "base_url",
                &base_url,
                "use an http:// or https:// URL ending in /v1, e.g. http://localhost:1234/v1",
            ));
        }
        for suffix in ["/chat/completions", "/embeddings"] {
            if base_url.ends_with(suffix) {
                return Err(bad(
                    "base_url",
                    &base_url,
                    &format!("leave out {suffix}: the plugin adds it"),
                ));
            }
        }
        let api_key = get("api_key");
        if let Some(key) = &api_key {
            if !header_safe(key) || key.contains(' ') {
                // Never echo the key itself.
                return Err(Failure::Other(
                    "setting `api_key` contains spaces or control characters: check the key".into(),
                ));
            }
        }
        let model = |key: &str, default: &str| get(key).unwrap_or_else(|| default.into());
        let is_openai = host_of(&base_url) == OPENAI_HOST;
        let token_field = match get("max_tokens_field").as_deref() {
            // OpenAI's newer models refuse `max_tokens`; servers that predate
            // `max_completion_tokens` ignore it silently, so they get the old name.
            None if is_openai => TokenField::MaxCompletionTokens,
            None | Some("max_tokens") => TokenField::MaxTokens,
            Some("max_completion_tokens") => TokenField::MaxCompletionTokens,
            Some(v) => {
                return Err(bad(
                    "max_tokens_field",
                    v,
                    "use max_tokens or max_completion_tokens",
                ))
            }
        };
        let temperature = match get("temperature").as_deref() {
            None => Some(0.0),
            Some("default") => None,
            Some(v) => Some(
                v.parse::<f64>()
                    .ok()
                    .filter(|t| (0.0..=2.0).contains(t))
                    .ok_or_else(|| {
                        bad("temperature", v, "use a number from 0 to 2, or \"default\"")
                    })?,
            ),
        };
        let seed = match get("seed").as_deref() {
            None => Some(42),
            Some("none") => None,
            Some(v) => Some(
                v.parse()
                    .map_err(|_| bad("seed", v, "use a whole number, or \"none\""))?,
            ),
        };
        let detail = match get("detail") {
            None => None,
            Some(d) if matches!(d.as_str(), "low" | "high" | "auto") => Some(d),
            Some(d) => return Err(bad("detail", &d, "use low, high or auto")),
        };
        let dimensions = match get("dimensions") {
            None => None,
            Some(v) => Some(
                v.parse::<u32>()
                    .ok()
                    .filter(|d| *d > 0)
                    .ok_or_else(|| bad("dimensions", &v, "use a whole number above 0"))?,
            ),
        };
        let batch_size = number("batch_size", 64)?;
        if batch_size == 0 || batch_size > 2048 {
            return Err(bad(
                "batch_size",
                &batch_size.to_string(),
                "use 1 to 2048 (OpenAI's limit per request)",
            ));
        }
        let max_tokens = number("max_tokens", 300)?;
        if max_tokens == 0 {
            return Err(bad("max_tokens", "0", "use a positive number of tokens"));
        }
        let headers = match get("headers") {
            None => Vec::new(),
            Some(raw) => match serde_json::from_str::<Value>(&raw) {
                Ok(Value::Object(map)) => map
                    .into_iter()
                    .map(|(k, v)| match v {
                        Value::String(s) if header_safe(&k) && header_safe(&s) => {
                            Ok((k.to_ascii_lowercase(), s))
                        }
                        _ => Err(bad("headers", &k, "every value must be a one-line string")),
                    })
                    .collect::<Result<_, _>>()?,
                _ => return Err(bad("headers", &raw, "use a table of header = \"value\"")),
            },
        };
        if headers.iter().any(|(k, _)| k == "authorization") {
            return Err(Failure::Other(
                "setting `headers` sets authorization: put the key in api_key instead".into(),
            ));
        }
        Ok(Settings {
            api_key,
            vision_model: model("vision_model", "gpt-4o-mini"),
            embed_model: model("embed_model", "text-embedding-3-small"),
            prompt: get("prompt").unwrap_or_else(|| DEFAULT_PROMPT.into()),
            max_tokens,
            token_field,
            temperature,
            seed,
            detail,
            dimensions,
            batch_size: batch_size as usize,
            stream: flag("stream", false)?,
            request_timeout_ms: number("request_timeout_ms", 60_000)?,
            max_retries: number("max_retries", 2)?,
            retry_max_wait_ms: number("retry_max_wait_ms", 5_000)?,
            headers,
            space: get("space"),
            document_prefix,
            query_prefix,
            base_url,
        })
    }

    /// Whether this is OpenAI itself.
    pub fn is_openai(&self) -> bool {
        host_of(&self.base_url) == OPENAI_HOST
    }

    /// The server, as messages name it.
    pub fn server(&self) -> String {
        if self.is_openai() {
            "OpenAI".into()
        } else {
            format!("the server at {}", self.base_url)
        }
    }

    /// The embedding space of `embed_model`.
    ///
    /// OpenAI's model names are global: `text-embedding-3-small` is the same weights for every
    /// caller, so `openai/<model>`. Elsewhere a name is only what one server calls what it loaded
    /// (llama.cpp answers under any name with the one model it was started with; two LM Studio
    /// machines may hold different quantisations under one name), so the server's host is part
    /// of the id: `openai-compat/<host[:port]>/<model>`. `dimensions` adds `:<n>`, since a
    /// shortened vector is a different space. The `space` setting overrides all of this for
    /// servers known to serve identical weights.
    pub fn space_id(&self) -> String {
        self.space_id_tagged(None)
    }

    /// [`Settings::space_id`] for vectors of texts with task prefixes named `tag` (after `@`,
    /// where a revision goes): prefixed and bare texts give different vectors. The `space`
    /// setting is taken as it is.
    pub fn space_id_tagged(&self, tag: Option<&str>) -> String {
        if let Some(space) = &self.space {
            return space.clone();
        }
        let tag = tag.map(|t| format!("@{t}")).unwrap_or_default();
        let base = if self.is_openai() {
            format!("openai/{}{tag}", self.embed_model)
        } else {
            format!(
                "openai-compat/{}/{}{tag}",
                host_of(&self.base_url),
                self.embed_model
            )
        };
        match self.dimensions {
            Some(d) => format!("{base}:{d}"),
            None => base,
        }
    }

    /// Headers of every request: JSON, the key when there is one, the configured extras.
    pub fn request_headers(&self) -> Vec<(String, String)> {
        let mut h = vec![("content-type".to_string(), "application/json".to_string())];
        if let Some(key) = &self.api_key {
            h.push(("authorization".into(), format!("Bearer {key}")));
        }
        h.extend(self.headers.iter().cloned());
        h
    }

    /// Body of a `/chat/completions` request describing one image.
    pub fn describe_body(
        &self,
        prompt: &str,
        mime: &str,
        data: &[u8],
        adapt: &Adaptations,
    ) -> Value {
        let url = format!(
            "data:{mime};base64,{}",
            base64::engine::general_purpose::STANDARD.encode(data)
        );
        let mut image_url = json!({ "url": url });
        if let Some(d) = &self.detail {
            image_url["detail"] = json!(d);
        }
        let mut body = json!({
            "model": self.vision_model,
            "messages": [{
                "role": "user",
                "content": [
                    { "type": "text", "text": prompt },
                    { "type": "image_url", "image_url": image_url },
                ],
            }],
            "n": 1,
            "stream": self.stream,
        });
        let field = adapt.token_field.unwrap_or(self.token_field);
        body[field.name()] = json!(self.max_tokens);
        if let (Some(t), false) = (self.temperature, adapt.omit_temperature) {
            body["temperature"] = json!(t);
        }
        if let (Some(s), false) = (self.seed, adapt.omit_seed) {
            body["seed"] = json!(s);
        }
        body
    }

    /// Body of an `/embeddings` request: always a list, always floats (base64 saves bytes on
    /// the wire but not every server implements it).
    pub fn embed_body(&self, texts: &[&str]) -> Value {
        let mut body = json!({
            "model": self.embed_model,
            "input": texts,
            "encoding_format": "float",
        });
        if let Some(d) = self.dimensions {
            body["dimensions"] = json!(d);
        }
        body
    }
}

/// `host[:port]` of a URL, lowercase, without user info and without the scheme's default port.
pub fn host_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority
        .rsplit('@')
        .next()
        .unwrap_or(authority)
        .to_ascii_lowercase();
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else {
        ":80"
    };
    authority
        .strip_suffix(default_port)
        .map(str::to_string)
        .unwrap_or(authority)
}

/// Changes to the describe request learnt from a server's refusals, kept per instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adaptations {
    /// Use this field instead of the configured one.
    pub token_field: Option<TokenField>,
    /// Send no temperature (the model accepts only its default).
    pub omit_temperature: bool,
    /// Send no seed.
    pub omit_seed: bool,
}

impl Adaptations {
    /// Learn from a 400; `true` when something changed and the request is worth sending again.
    pub fn learn(&mut self, status: u16, body: &[u8]) -> bool {
        if status != 400 {
            return false;
        }
        let e = ApiError::parse(body);
        let code = e.code.as_deref().unwrap_or("");
        if !matches!(code, "unsupported_parameter" | "unsupported_value") {
            return false;
        }
        let before = self.clone();
        match e.param.as_deref() {
            Some("max_tokens") => self.token_field = Some(TokenField::MaxCompletionTokens),
            Some("max_completion_tokens") => self.token_field = Some(TokenField::MaxTokens),
            Some("temperature") => self.omit_temperature = true,
            Some("seed") => self.omit_seed = true,
            _ => {}
        }
        *self != before
    }
}

/// An error answer, from whichever of the envelopes a server uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiError {
    /// The human-readable message (the raw body when it is not JSON).
    pub message: String,
    /// `type`, e.g. `invalid_request_error`.
    pub kind: Option<String>,
    /// `code`, as a string even when the server sent a number.
    pub code: Option<String>,
    /// `param`, the request field at fault.
    pub param: Option<String>,
}

impl ApiError {
    /// Parse an error body.
    pub fn parse(body: &[u8]) -> ApiError {
        let text = String::from_utf8_lossy(body);
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            return ApiError {
                message: truncate(text.trim(), 300),
                ..ApiError::default()
            };
        };
        let string = |v: Option<&Value>| match v {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let obj = match v.get("error") {
            Some(e @ Value::Object(_)) => e,
            Some(Value::String(s)) => {
                return ApiError {
                    message: s.clone(),
                    ..ApiError::default()
                }
            }
            // vLLM's older envelope puts the fields at the top level.
            _ => &v,
        };
        ApiError {
            message: string(obj.get("message"))
                .or_else(|| string(obj.get("detail")))
                .unwrap_or_else(|| truncate(text.trim(), 300)),
            kind: string(obj.get("type")),
            code: string(obj.get("code")),
            param: string(obj.get("param")),
        }
    }
}

/// What a request was for: it decides how a 404 or a 400 reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `/chat/completions` with an image.
    Describe,
    /// `/embeddings`.
    Embed,
}

impl Role {
    /// The path under the base URL.
    pub fn path(self) -> &'static str {
        match self {
            Role::Describe => "/chat/completions",
            Role::Embed => "/embeddings",
        }
    }
}

/// What went wrong, from a non-2xx answer to a request for `role`.
pub fn map_status(
    s: &Settings,
    role: Role,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> Failure {
    let e = ApiError::parse(body);
    let msg = &e.message;
    let lower = msg.to_lowercase();
    let code = e.code.as_deref().unwrap_or("");
    let server = s.server();
    let (model, setting) = match role {
        Role::Describe => (&s.vision_model, "vision_model"),
        Role::Embed => (&s.embed_model, "embed_model"),
    };
    let model_missing = code == "model_not_found"
        || (status == 404
            && lower.contains("model")
            && (lower.contains("does not exist") || lower.contains("not found")));
    if model_missing {
        return Failure::ModelNotFound(format!(
            "model \"{model}\" not found on {server} ({msg}): set {setting} to a model it serves (GET {}/models lists them)",
            s.base_url
        ));
    }
    match status {
        401 | 403 => {
            let fix = match &s.api_key {
                None => "no api_key is set: add api_key = \"${OPENAI_API_KEY}\" to the plugin's settings and set OPENAI_API_KEY".to_string(),
                Some(_) => "check api_key (the key was refused)".to_string(),
            };
            Failure::Other(format!("{server} refused the request ({status}: {msg}): {fix}"))
        }
        400 | 404 | 422
            if role == Role::Embed
                && (lower.contains("support embeddings")
                    || lower.contains("not an embedding model")
                    || lower.contains("embeddings are not supported")) =>
        {
            Failure::Other(format!(
                "model \"{model}\" cannot embed text ({msg}): set embed_model to an embedding model such as text-embedding-3-small (on local servers e.g. nomic-embed-text)"
            ))
        }
        404 if role == Role::Describe && lower.contains("not a chat model") => Failure::Other(format!(
            "model \"{model}\" cannot describe images (it is not a chat model): set vision_model to a vision model such as gpt-4o-mini"
        )),
        404 => Failure::Other(format!(
            "{server} has no {} ({status}: {msg}): base_url should be the API root, usually ending in /v1 (e.g. http://localhost:1234/v1)",
            role.path()
        )),
        400 | 422 if role == Role::Describe && cannot_see(&lower) => Failure::Other(format!(
            "model \"{model}\" cannot see images ({msg}): set vision_model to a vision model (gpt-4o-mini; on local servers a VLM such as qwen2.5-vl, llava or gemma-3)"
        )),
        400 | 413 | 422 if lower.contains("context length") || lower.contains("context_length") || code == "context_length_exceeded" || lower.contains("too long") => {
            Failure::BadInput(format!("the input is too long for model \"{model}\" ({msg}): shorten it"))
        }
        400 | 422 if role == Role::Describe && (code.starts_with("invalid_image") || lower.contains("image")) => {
            Failure::BadInput(format!("{server} could not use the image ({msg})"))
        }
        400 | 422 if role == Role::Embed && lower.contains("dimensions") => Failure::Other(format!(
            "model \"{model}\" does not accept `dimensions` ({msg}): remove the dimensions setting or use a model that allows it (text-embedding-3-*)"
        )),
        413 => Failure::BadInput(format!("{server} refused the request as too large ({msg})")),
        408 => Failure::Timeout(format!("{server} timed out the request ({msg}): try again, or raise request_timeout_ms")),
        429 if code == "insufficient_quota" || e.kind.as_deref() == Some("insufficient_quota") => Failure::Other(format!(
            "{server} refused: the account's quota is used up ({msg}): check the plan and billing"
        )),
        429 => Failure::Unavailable(format!(
            "{server} is rate-limiting ({msg}){}: try again later",
            match retry_after_ms(headers) {
                Some(ms) => format!("; it asked to wait {}", human_ms(ms)),
                None => String::new(),
            }
        )),
        500..=599 => Failure::Unavailable(format!("{server} failed ({status}: {msg}): try again later")),
        _ => Failure::Other(format!("{server} answered {status}: {msg}")),
    }
}

fn cannot_see(lower: &str) -> bool {
    // OpenAI: "Invalid content type. image_url is only supported by certain models."; vLLM and
    // llama.cpp say "multimodal"/"image input is not supported"; LM Studio "does not support images".
    (lower.contains("image_url") && lower.contains("only supported"))
        || lower.contains("multimodal")
        || lower.contains("image input is not supported")
        || lower.contains("does not support image")
        || lower.contains("not support vision")
        || lower.contains("mmproj")
}

fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// How long the server asked to wait: `retry-after-ms` (OpenAI's, in milliseconds) first, then
/// `retry-after` in seconds. An HTTP-date is not honoured (`None`).
pub fn retry_after_ms(headers: &[(String, String)]) -> Option<u64> {
    let parse = |v: &str, scale: f64| {
        v.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .map(|x| (x * scale).ceil() as u64)
    };
    header(headers, "retry-after-ms")
        .and_then(|v| parse(v, 1.0))
        .or_else(|| header(headers, "retry-after").and_then(|v| parse(v, 1000.0)))
}

/// Whether to send a refused request again, and after how long. Only a 429 (not a spent quota)
/// or a 503 that says how long to wait, only when that wait is short, and only `max_retries`
/// times: a longer or unspecified wait is better spent on the chain's next step.
pub fn retry_delay(
    s: &Settings,
    attempt: u32,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> Option<u64> {
    if attempt >= s.max_retries || !matches!(status, 429 | 503) {
        return None;
    }
    if ApiError::parse(body).code.as_deref() == Some("insufficient_quota") {
        return None;
    }
    retry_after_ms(headers).filter(|ms| *ms <= u64::from(s.retry_max_wait_ms))
}

/// A chat answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The text.
    pub text: String,
    /// `stop`, `length`, `content_filter`, ...
    pub finish_reason: Option<String>,
    /// The model that answered, as the server names it.
    pub model: Option<String>,
}

/// The text of a message's `content`: a string, or (some servers) a list of text parts.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// Parse a non-streamed `/chat/completions` answer.
pub fn parse_chat(s: &Settings, body: &[u8]) -> Result<Answer, Failure> {
    let server = s.server();
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        Failure::Other(format!(
            "{server} answered /chat/completions with something that is not JSON ({e}): {}",
            truncate(&String::from_utf8_lossy(body), 200)
        ))
    })?;
    let choice = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| {
            Failure::Other(format!(
                "{server}'s /chat/completions answer has no choices"
            ))
        })?;
    let message = choice.get("message");
    if let Some(refusal) = message
        .and_then(|m| m.get("refusal"))
        .and_then(Value::as_str)
    {
        return Err(Failure::Other(format!(
            "model \"{}\" refused to describe the image: {refusal}",
            s.vision_model
        )));
    }
    Ok(Answer {
        text: content_text(message.and_then(|m| m.get("content"))),
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
        model: v.get("model").and_then(Value::as_str).map(str::to_string),
    })
}

/// Parse a streamed answer: server-sent events, `data: {chunk}` lines ending with
/// `data: [DONE]`. An `error` event fails the whole answer; a stream cut before `[DONE]` or a
/// finish reason is an error too (the description would be silently incomplete).
pub fn parse_stream(s: &Settings, body: &[u8]) -> Result<Answer, Failure> {
    let server = s.server();
    let text = std::str::from_utf8(body)
        .map_err(|_| Failure::Other(format!("{server}'s event stream is not UTF-8")))?;
    let mut out = Answer {
        text: String::new(),
        finish_reason: None,
        model: None,
    };
    let mut done = false;
    let mut refusal = String::new();
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue; // comments (`: keep-alive`), `event:` and `id:` lines, blank separators
        };
        let data = data.trim();
        if data == "[DONE]" {
            done = true;
            break;
        }
        let v: Value = serde_json::from_str(data).map_err(|e| {
            Failure::Other(format!(
                "{server} sent an event that is not JSON ({e}): {}",
                truncate(data, 200)
            ))
        })?;
        if v.get("error").is_some() {
            let e = ApiError::parse(data.as_bytes());
            return Err(Failure::Other(format!(
                "{server} failed while answering: {}",
                e.message
            )));
        }
        if out.model.is_none() {
            out.model = v.get("model").and_then(Value::as_str).map(str::to_string);
        }
        for choice in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(delta) = choice.get("delta") {
                out.text.push_str(&content_text(delta.get("content")));
                if let Some(r) = delta.get("refusal").and_then(Value::as_str) {
                    refusal.push_str(r);
                }
            }
            if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
                out.finish_reason = Some(r.to_string());
            }
        }
    }
    if !refusal.is_empty() {
        return Err(Failure::Other(format!(
            "model \"{}\" refused to describe the image: {refusal}",
            s.vision_model
        )));
    }
    if !done && out.finish_reason.is_none() {
        return Err(Failure::Unavailable(format!(
            "{server}'s event stream ended before the answer was complete: try again"
        )));
    }
    Ok(out)
}

/// The description from an answer, or why there is none.
pub fn description(s: &Settings, answer: &Answer) -> Result<String, Failure> {
    let text = answer.text.trim();
    match answer.finish_reason.as_deref() {
        Some("content_filter") => Err(Failure::Other(format!(
            "model \"{}\" withheld the description (content filter)",
            s.vision_model
        ))),
        _ if text.is_empty() && answer.finish_reason.as_deref() == Some("length") => Err(Failure::Other(format!(
            "model \"{}\" used all {} tokens without writing a description (a reasoning model thinks first): raise max_tokens",
            s.vision_model, s.max_tokens
        ))),
        _ if text.is_empty() => Err(Failure::Other(format!("model \"{}\" returned an empty description", s.vision_model))),
        _ => Ok(text.to_string()),
    }
}

/// Vectors of an `/embeddings` answer, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// One vector per input, in the order of the inputs.
    pub vectors: Vec<Vec<f32>>,
    /// The model that answered, as the server names it.
    pub model: Option<String>,
}

/// Parse an `/embeddings` answer for `n` inputs. Items are placed by their `index`, not by their
/// position: the API does not promise the order. Floats or base64 (little-endian f32) both parse.
pub fn parse_embeddings(s: &Settings, n: usize, body: &[u8]) -> Result<Embedded, Failure> {
    let server = s.server();
    let fail = |what: String| Failure::Other(format!("{server}'s /embeddings answer {what}"));
    let v: Value = serde_json::from_slice(body).map_err(|e| fail(format!("is not JSON ({e})")))?;
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| fail("has no `data` list".into()))?;
    if data.len() != n {
        return Err(fail(format!(
            "has {} embeddings for {n} inputs",
            data.len()
        )));
    }
    let mut slots: Vec<Option<Vec<f32>>> = vec![None; n];
    for (position, item) in data.iter().enumerate() {
        let index = match item.get("index") {
            None => position,
            Some(i) => i
                .as_u64()
                .map(|i| i as usize)
                .filter(|i| *i < n)
                .ok_or_else(|| fail(format!("has an item with index {i} for {n} inputs")))?,
        };
        if slots[index].is_some() {
            return Err(fail(format!("has two items with index {index}")));
        }
        let vector = match item.get("embedding") {
            Some(Value::Array(xs)) => xs
                .iter()
                // JSON has no NaN: a null or a string where a number belongs becomes one, and
                // the vector is then refused as a whole.
                .map(|x| x.as_f64().map_or(f32::NAN, |f| f as f32))
                .collect(),
            Some(Value::String(b64)) => {
                decode_f32(b64).ok_or_else(|| fail(format!("has item {index} in bad base64")))?
            }
            _ => return Err(fail(format!("has item {index} without an embedding"))),
        };
        slots[index] = Some(vector);
    }
    Ok(Embedded {
        // Every slot is filled: n items, n distinct indices below n.
        vectors: slots.into_iter().map(Option::unwrap_or_default).collect(),
        model: v.get("model").and_then(Value::as_str).map(str::to_string),
    })
}

fn decode_f32(b64: &str) -> Option<Vec<f32>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    if bytes.len() % 4 != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Why a vector is unusable, if it is.
pub fn vector_problem(s: &Settings, v: &[f32], dims: Option<usize>) -> Option<String> {
    let server = s.server();
    if v.is_empty() {
        return Some(format!("{server} returned an empty vector"));
    }
    if let Some(d) = dims {
        if v.len() != d {
            return Some(format!(
                "{server} returned a vector of length {} where {d} were expected",
                v.len()
            ));
        }
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Some(format!(
            "{server} returned a vector containing NaN or infinity"
        ));
    }
    None
}

fn truncate(s: &str, n: usize) -> String {
    let mut t: String = s.chars().take(n).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned()).unwrap()
    }

    fn local() -> Settings {
        settings(&[
            ("base_url", "http://127.0.0.1:1234/v1/"),
            ("embed_model", "nomic-embed-text-v1.5"),
        ])
    }

    #[test]
    fn defaults_are_openai_and_deterministic() {
        let s = settings(&[]);
        assert_eq!(s.base_url, OPENAI_BASE_URL);
        assert!(s.is_openai());
        assert_eq!(s.api_key, None);
        assert_eq!(s.space_id(), "openai/text-embedding-3-small");
        let body = s.describe_body("p", "image/png", b"\x89PNG", &Adaptations::default());
        assert_eq!(body["temperature"], 0.0);
        assert_eq!(body["seed"], 42);
        assert_eq!(body["max_completion_tokens"], 300);
        assert!(body.get("max_tokens").is_none());
        assert_eq!(body["stream"], false);
        let parts = &body["messages"][0]["content"];
        assert_eq!(parts[0], json!({ "type": "text", "text": "p" }));
        assert_eq!(parts[1]["type"], "image_url");
        assert_eq!(
            parts[1]["image_url"]["url"],
            "data:image/png;base64,iVBORw=="
        );
        assert!(parts[1]["image_url"].get("detail").is_none());
    }

    #[test]
    fn local_servers_get_their_own_space_and_max_tokens() {
        let s = local();
        assert_eq!(s.base_url, "http://127.0.0.1:1234/v1");
        assert_eq!(
            s.space_id(),
            "openai-compat/127.0.0.1:1234/nomic-embed-text-v1.5"
        );
        assert_eq!(s.server(), "the server at http://127.0.0.1:1234/v1");
        let body = s.describe_body("p", "image/jpeg", b"x", &Adaptations::default());
        assert_eq!(body["max_tokens"], 300);
        let dims = settings(&[
            ("dimensions", "256"),
            ("embed_model", "text-embedding-3-large"),
        ]);
        assert_eq!(dims.space_id(), "openai/text-embedding-3-large:256");
        assert_eq!(
            dims.embed_body(&["a", "b"]),
            json!({
                "model": "text-embedding-3-large", "input": ["a", "b"], "encoding_format": "float", "dimensions": 256,
            })
        );
        let pinned = settings(&[
            ("base_url", "http://gpu-2:8000/v1"),
            ("space", "team/nomic-v1.5"),
        ]);
        assert_eq!(pinned.space_id(), "team/nomic-v1.5");
        assert_eq!(pinned.space_id_tagged(Some("tp1")), "team/nomic-v1.5");
        assert_eq!(
            s.space_id_tagged(Some("tp12345678")),
            "openai-compat/127.0.0.1:1234/nomic-embed-text-v1.5@tp12345678"
        );
        assert_eq!(
            dims.space_id_tagged(Some("tp1")),
            "openai/text-embedding-3-large@tp1:256"
        );
        assert_eq!(
            host_of("HTTPS://user:pw@Api.OpenAI.com:443/v1"),
            "api.openai.com"
        );
        assert_eq!(host_of("http://localhost:80/v1"), "localhost");
        assert_eq!(host_of("http://localhost:8080"), "localhost:8080");
    }

    #[test]
    fn the_key_goes_in_a_bearer_header_and_nowhere_else() {
        let s = settings(&[
            ("api_key", "sk-secret"),
            ("headers", r#"{"OpenAI-Organization": "org-1"}"#),
        ]);
        let h = s.request_headers();
        assert!(h.contains(&("authorization".into(), "Bearer sk-secret".into())));
        assert!(h.contains(&("openai-organization".into(), "org-1".into())));
        assert!(!format!("{s:?}").contains("sk-secret"));
        // An unset ${OPENAI_API_KEY:-} arrives empty: no header at all.
        let none = settings(&[("api_key", "  ")]);
        assert!(none
            .request_headers()
            .iter()
            .all(|(k, _)| k != "authorization"));
    }

    #[test]
    fn bad_settings_say_what_to_use() {
        let err = |pairs: &[(&str, &str)]| {
            let map: std::collections::HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Settings::from_lookup(|k| map.get(k).cloned())
                .unwrap_err()
                .message()
                .to_string()
        };
        assert!(err(&[("base_url", "localhost:1234")]).contains("http:// or https://"));
        assert!(err(&[("base_url", "http://x/v1/embeddings")]).contains("leave out /embeddings"));
        assert!(err(&[("temperature", "hot")]).contains("0 to 2"));
        assert!(err(&[("dimensions", "0")]).contains("above 0"));
        assert!(err(&[("detail", "max")]).contains("low, high or auto"));
        assert!(err(&[("headers", r#"{"Authorization": "x"}"#)]).contains("api_key"));
        let key = err(&[("api_key", "sk-a\nb")]);
        assert!(key.contains("check the key") && !key.contains("sk-a"));
    }

    #[test]
    fn openai_error_bodies_map_to_actionable_cases() {
        let s = settings(&[("api_key", "sk-x")]);
        let body = |message: &str, kind: &str, param: Value, code: Value| {
            serde_json::to_vec(&json!({ "error": { "message": message, "type": kind, "param": param, "code": code } })).unwrap()
        };
        let f = map_status(
            &s,
            Role::Describe,
            404,
            &[],
            &body(
                "The model `gpt-9` does not exist or you do not have access to it.",
                "invalid_request_error",
                Value::Null,
                json!("model_not_found"),
            ),
        );
        assert!(
            matches!(&f, Failure::ModelNotFound(m) if m.contains("model \"gpt-4o-mini\" not found on OpenAI") && m.contains("does not exist")),
            "{f:?}"
        );
        let f = map_status(&s, Role::Embed, 401, &[], &body(
            "Incorrect API key provided: sk-x. You can find your API key at https://platform.openai.com/account/api-keys.", "invalid_request_error", Value::Null, json!("invalid_api_key")));
        assert!(
            matches!(&f, Failure::Other(m) if m.contains("check api_key") && m.contains("Incorrect API key")),
            "{f:?}"
        );
        let f = map_status(
            &settings(&[]),
            Role::Embed,
            401,
            &[],
            &body(
                "You didn't provide an API key.",
                "invalid_request_error",
                Value::Null,
                Value::Null,
            ),
        );
        assert!(
            matches!(&f, Failure::Other(m) if m.contains("no api_key is set")),
            "{f:?}"
        );
        let f = map_status(
            &s,
            Role::Describe,
            400,
            &[],
            &body(
                "Invalid content type. image_url is only supported by certain models.",
                "invalid_request_error",
                json!("messages.[0].content.[1].type"),
                Value::Null,
            ),
        );
        assert!(
            matches!(&f, Failure::Other(m) if m.contains("cannot see images")),
            "{f:?}"
        );
        let headers = vec![("retry-after".to_string(), "2".to_string())];
        let f = map_status(
            &s,
            Role::Embed,
            429,
            &headers,
            &body(
                "Rate limit reached",
                "requests",
                Value::Null,
                json!("rate_limit_exceeded"),
            ),
        );
        assert!(
            matches!(&f, Failure::Unavailable(m) if m.contains("rate-limiting") && m.contains("2.0 s")),
            "{f:?}"
        );
        let f = map_status(
            &s,
            Role::Embed,
            429,
            &[],
            &body(
                "You exceeded your current quota",
                "insufficient_quota",
                Value::Null,
                json!("insufficient_quota"),
            ),
        );
        assert!(
            matches!(&f, Failure::Other(m) if m.contains("billing")),
            "{f:?}"
        );
        assert!(
            matches!(map_status(&s, Role::Embed, 503, &[], b"overloaded"), Failure::Unavailable(m) if m.contains("overloaded"))
        );
        let f = map_status(&s, Role::Embed, 400, &[], &body(
            "This model's maximum context length is 8192 tokens, however you requested 9000 tokens", "invalid_request_error", Value::Null, Value::Null));
        assert!(matches!(f, Failure::BadInput(_)));
        let f = map_status(
            &s,
            Role::Embed,
            404,
            &[],
            &body(
                "Invalid URL (POST /embeddings)",
                "invalid_request_error",
                Value::Null,
                Value::Null,
            ),
        );
        assert!(
            matches!(&f, Failure::Other(m) if m.contains("ending in /v1")),
            "{f:?}"
        );
    }

    #[test]
    fn other_servers_error_envelopes_parse() {
        let llama = ApiError::parse(br#"{"error":{"code":400,"message":"image input is not supported by this server","type":"invalid_request_error"}}"#);
        assert_eq!(
            (llama.code.as_deref(), llama.kind.as_deref()),
            (Some("400"), Some("invalid_request_error"))
        );
        let vllm = ApiError::parse(br#"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","param":null,"code":404}"#);
        assert_eq!(vllm.message, "The model `x` does not exist.");
        let lmstudio = ApiError::parse(br#"{"error":"Model does not support images"}"#);
        assert_eq!(lmstudio.message, "Model does not support images");
        assert_eq!(ApiError::parse(b"Bad Gateway").message, "Bad Gateway");
        let s = local();
        assert!(matches!(map_status(&s, Role::Embed, 404, &[], br#"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","param":null,"code":404}"#), Failure::ModelNotFound(_)));
        assert!(matches!(map_status(&s, Role::Describe, 500, &[], br#"{"error":{"code":500,"message":"image input is not supported by this server","type":"server_error"}}"#), Failure::Unavailable(_)));
        assert!(
            matches!(map_status(&s, Role::Describe, 400, &[], br#"{"error":{"code":400,"message":"image input is not supported - hint: if this is unexpected, you may need to provide the mmproj","type":"invalid_request_error"}}"#), Failure::Other(m) if m.contains("cannot see images"))
        );
    }

    #[test]
    fn retries_follow_retry_after_within_bounds() {
        let s = settings(&[("max_retries", "2"), ("retry_max_wait_ms", "1000")]);
        let h = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert_eq!(
            retry_delay(&s, 0, 429, &h("retry-after-ms", "250"), b"{}"),
            Some(250)
        );
        assert_eq!(
            retry_delay(&s, 0, 503, &h("Retry-After", "1"), b"{}"),
            Some(1000)
        );
        assert_eq!(
            retry_delay(&s, 0, 429, &h("retry-after", "0.2"), b"{}"),
            Some(200)
        );
        assert_eq!(
            retry_delay(&s, 0, 429, &h("retry-after", "30"), b"{}"),
            None,
            "too long to wait"
        );
        assert_eq!(
            retry_delay(&s, 2, 429, &h("retry-after", "1"), b"{}"),
            None,
            "out of retries"
        );
        assert_eq!(
            retry_delay(&s, 0, 429, &[], b"{}"),
            None,
            "no hint: move on"
        );
        assert_eq!(retry_delay(&s, 0, 500, &h("retry-after", "1"), b"{}"), None);
        let quota = br#"{"error":{"message":"quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        assert_eq!(retry_delay(&s, 0, 429, &h("retry-after", "1"), quota), None);
        assert_eq!(
            retry_after_ms(&h("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
    }

    #[test]
    fn refusals_of_parameters_are_learnt_once() {
        let mut a = Adaptations::default();
        let refuse = |param: &str, code: &str| {
            serde_json::to_vec(&json!({ "error": { "message": "Unsupported", "type": "invalid_request_error", "param": param, "code": code } })).unwrap()
        };
        assert!(a.learn(400, &refuse("max_tokens", "unsupported_parameter")));
        assert!(
            !a.learn(400, &refuse("max_tokens", "unsupported_parameter")),
            "nothing new"
        );
        assert!(a.learn(400, &refuse("temperature", "unsupported_value")));
        assert!(!a.learn(400, &refuse("messages", "invalid_value")));
        assert!(!a.learn(404, &refuse("seed", "unsupported_parameter")));
        let body = local().describe_body("p", "image/png", b"x", &a);
        assert_eq!(body["max_completion_tokens"], 300);
        assert!(body.get("max_tokens").is_none() && body.get("temperature").is_none());
        assert_eq!(body["seed"], 42);
    }

    #[test]
    fn chat_answers_and_streams_parse() {
        let s = local();
        let a = parse_chat(&s, br#"{"id":"c","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"A cat.","refusal":null},"finish_reason":"stop"}]}"#).unwrap();
        assert_eq!(
            (a.text.as_str(), a.finish_reason.as_deref()),
            ("A cat.", Some("stop"))
        );
        let refused = parse_chat(&s, br#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"I can't help with that."},"finish_reason":"stop"}]}"#);
        assert!(matches!(refused, Err(Failure::Other(m)) if m.contains("refused")));
        assert!(parse_chat(&s, b"{}").is_err());
        let empty = Answer {
            text: String::new(),
            finish_reason: Some("length".into()),
            model: None,
        };
        assert!(description(&s, &empty)
            .unwrap_err()
            .message()
            .contains("raise max_tokens"));

        let sse = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n: keep-alive\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"A \"},\"finish_reason\":null}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"cat.\"},\"finish_reason\":null}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\ndata: [DONE]\n\n";
        let a = parse_stream(&s, sse).unwrap();
        assert_eq!(
            (a.text.as_str(), a.finish_reason.as_deref()),
            ("A cat.", Some("stop"))
        );
        let cut = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"A \"},\"finish_reason\":null}]}\n\n";
        assert!(matches!(
            parse_stream(&s, cut),
            Err(Failure::Unavailable(_))
        ));
        let failed = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"A \"}}]}\n\ndata: {\"error\":{\"message\":\"model crashed\"}}\n\n";
        assert!(parse_stream(&s, failed)
            .unwrap_err()
            .message()
            .contains("model crashed"));
    }

    #[test]
    fn embeddings_are_placed_by_index() {
        let s = local();
        let body = br#"{"object":"list","model":"m","data":[{"object":"embedding","index":1,"embedding":[0.0,1.0]},{"object":"embedding","index":0,"embedding":[1.0,0.0]}]}"#;
        let e = parse_embeddings(&s, 2, body).unwrap();
        assert_eq!(e.vectors, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
        assert_eq!(e.model.as_deref(), Some("m"));
        // base64: little-endian f32 1.0 and -2.0
        let b64 = base64::engine::general_purpose::STANDARD
            .encode([1.0f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat());
        let body = format!(r#"{{"data":[{{"index":0,"embedding":"{b64}"}}]}}"#);
        assert_eq!(
            parse_embeddings(&s, 1, body.as_bytes()).unwrap().vectors,
            vec![vec![1.0, -2.0]]
        );
        assert!(
            parse_embeddings(&s, 3, br#"{"data":[{"index":0,"embedding":[1]}]}"#)
                .unwrap_err()
                .message()
                .contains("1 embeddings for 3 inputs")
        );
        assert!(parse_embeddings(
            &s,
            2,
            br#"{"data":[{"index":0,"embedding":[1]},{"index":0,"embedding":[1]}]}"#
        )
        .unwrap_err()
        .message()
        .contains("two items with index 0"));
        assert!(parse_embeddings(&s, 1, br#"{"data":[{"index":5,"embedding":[1]}]}"#).is_err());
        let nan =
            parse_embeddings(&s, 1, br#"{"data":[{"index":0,"embedding":[1.0,null]}]}"#).unwrap();
        assert!(vector_problem(&s, &nan.vectors[0], None)
            .unwrap()
            .contains("NaN"));
        assert!(vector_problem(&s, &[1.0, 2.0], Some(3)).is_some());
    }
}
