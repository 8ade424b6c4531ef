//! Ollama's HTTP API as this plugin uses it: settings, request bodies, response parsing and the
//! mapping of Ollama's answers to the contract's error cases, with messages that say what to do.

use imbed_plugin_sdk::settings::Settings as SdkSettings;
use imbed_plugin_sdk::{prefixes, Error, Purpose, TaskPrefixes};
use serde_json::{json, Value};

/// The seed's default prompt.
pub const DEFAULT_PROMPT: &str = "Describe this image in detail, including objects, colors, scene, context, and any text visible.";

/// Appended to the prompt when structured output is asked for.
pub const STRUCTURED_SUFFIX: &str = " Answer with a JSON object with exactly these keys: \"description\" (a detailed description, as prose), \"objects\" (a list of the objects seen), \"visible_text\" (all text visible in the image, or null), \"tags\" (a list of short keywords).";

/// Settings, read from the config's `[plugins.<name>.settings]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `http://host:port` without a trailing slash.
    pub base_url: String,
    /// The vision model for descriptions.
    pub vision_model: String,
    /// The embedding model.
    pub embed_model: String,
    /// The default prompt.
    pub prompt: String,
    /// Prompts by image type and size class (see [`Settings::prompt_for`]).
    pub prompts: Vec<(String, String)>,
    /// Ask for JSON with description, objects, visible text and tags.
    pub structured: bool,
    /// `generate` or `chat`.
    pub endpoint: Endpoint,
    /// Read the NDJSON stream instead of asking for one object.
    pub stream: bool,
    /// Ollama's `keep_alive` (a duration string such as `5m`, or seconds).
    pub keep_alive: Value,
    /// Sampling temperature; 0 makes descriptions repeatable.
    pub temperature: f64,
    /// Sampling seed.
    pub seed: i64,
    /// Let Ollama truncate inputs longer than the model's context.
    pub truncate: bool,
    /// Ask Ollama to shorten vectors to this many dimensions.
    pub dimensions: Option<u32>,
    /// Deadline of one request once the model is loaded.
    pub request_timeout_ms: u32,
    /// Deadline of the first request to a model, which may have to load it.
    pub load_timeout_ms: u32,
    /// Apply task prefixes at all (`task_prefixes = false`: every text bare, as before
    /// contract 0.2.0, and the space id without a prefix tag).
    pub task_prefixes: bool,
    /// Overrides the known prefix for documents (`""`: none).
    pub document_prefix: Option<String>,
    /// Overrides the known prefix for queries (`""`: none).
    pub query_prefix: Option<String>,
}

/// Which route describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/api/generate`
    Generate,
    /// `/api/chat`
    Chat,
}

impl Settings {
    /// Read and validate the settings; every error names the setting and what would do.
    pub fn from_settings(settings: &SdkSettings) -> Result<Settings, Error> {
        let get = |key: &str| settings.get(key);
        let bad = |key: &str, value: &str, want: &str| {
            Error::BadSetting(format!("setting `{key}` is {value:?}: {want}"))
        };
        let base_url = get("base_url").unwrap_or_else(|| "http://localhost:11434".into());
        let base_url = base_url.trim().trim_end_matches('/').to_string();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(bad("base_url", &base_url, "use an http:// or https:// URL"));
        }
        let endpoint = match settings.choice("endpoint", "generate", &["generate", "chat"])? {
            "chat" => Endpoint::Chat,
            _ => Endpoint::Generate,
        };
        let prompts = match get("prompts") {
            None => Vec::new(),
            Some(raw) => match serde_json::from_str::<Value>(&raw) {
                Ok(Value::Object(map)) => map
                    .into_iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => Ok((k, s)),
                        _ => Err(bad("prompts", &raw, "every value must be a prompt string")),
                    })
                    .collect::<Result<_, _>>()?,
                _ => return Err(bad("prompts", &raw, "use a table of selector = \"prompt\"")),
            },
        };
        let keep_alive = match get("keep_alive") {
            None => json!("5m"),
            Some(v) => match v.trim().parse::<i64>() {
                Ok(n) => json!(n),
                Err(_) => json!(v.trim()),
            },
        };
        let temperature = settings.parse("temperature", 0.0)?;
        let seed = settings.parse("seed", 42)?;
        let dimensions = settings.optional("dimensions")?;
        let model = |key: &str, default: &str| {
            let m = get(key)
                .unwrap_or_else(|| default.into())
                .trim()
                .to_string();
            if m.is_empty() {
                Err(bad(key, &m, "name a model, e.g. llava or nomic-embed-text"))
            } else {
                Ok(m)
            }
        };
        Ok(Settings {
            base_url,
            vision_model: model("vision_model", "llava")?,
            embed_model: model("embed_model", "nomic-embed-text")?,
            prompt: get("prompt").unwrap_or_else(|| DEFAULT_PROMPT.into()),
            prompts,
            structured: settings.flag("structured", false)?,
            endpoint,
            stream: settings.flag("stream", false)?,
            keep_alive,
            temperature,
            seed,
            truncate: settings.flag("truncate", true)?,
            dimensions,
            request_timeout_ms: settings.parse("request_timeout_ms", 60_000)?,
            load_timeout_ms: settings.parse("load_timeout_ms", 120_000)?,
            task_prefixes: settings.flag("task_prefixes", true)?,
            document_prefix: get("document_prefix"),
            query_prefix: get("query_prefix"),
        })
    }

    /// The task prefixes of `embed_model`: the model card's when the model is a known one,
    /// with `document_prefix` / `query_prefix` taking precedence (an empty one removes it).
    pub fn task_prefixes(&self) -> TaskPrefixes {
        if !self.task_prefixes {
            return TaskPrefixes::none();
        }
        let mut p = prefixes::known(&self.embed_model);
        if let Some(d) = &self.document_prefix {
            p = p.with(Purpose::Document, d.clone());
        }
        if let Some(q) = &self.query_prefix {
            p = p.with(Purpose::Query, q.clone());
        }
        p
    }

    /// The prompt for an image: the first of `"<mime>:<size>"`, `"<mime>"`, `"<size>"` found in
    /// `prompts`, else `prompt`. Size classes: `small` (longest side under 512 px), `medium`
    /// (under 2048 px), `large`.
    pub fn prompt_for(&self, mime: &str, width: u32, height: u32) -> &str {
        let size = match width.max(height) {
            0..=511 => "small",
            512..=2047 => "medium",
            _ => "large",
        };
        let wanted = [format!("{mime}:{size}"), mime.to_string(), size.to_string()];
        wanted
            .iter()
            .find_map(|w| {
                self.prompts
                    .iter()
                    .find(|(k, _)| k == w)
                    .map(|(_, p)| p.as_str())
            })
            .unwrap_or(&self.prompt)
    }

    /// The embedding space of `embed_model`: Ollama names `x` and `x:latest` the same model.
    /// `revision` is the first 12 hex digits of the model's digest (see [`model_revision`]): a
    /// name is only a tag, and `ollama pull` can move it to other weights (tags such as `latest`
    /// are mutable), whose vectors must not be mixed with the old ones. Task prefixes add
    /// `+<tag>` to the revision (see [`TaskPrefixes::space_tag`]): a prefixed text's vector is
    /// another vector than the bare text's, so collections embedded before the prefixes are
    /// re-embedded rather than compared with them.
    pub fn space_id(&self, revision: Option<&str>) -> String {
        let model = self
            .embed_model
            .strip_suffix(":latest")
            .unwrap_or(&self.embed_model);
        let revision = match (revision, self.task_prefixes().space_tag()) {
            (Some(r), Some(t)) => format!("@{r}+{t}"),
            (Some(r), None) => format!("@{r}"),
            (None, Some(t)) => format!("@{t}"),
            (None, None) => String::new(),
        };
        match self.dimensions {
            Some(d) => format!("ollama/{model}{revision}:{d}"),
            None => format!("ollama/{model}{revision}"),
        }
    }

    fn options(&self) -> Value {
        json!({ "temperature": self.temperature, "seed": self.seed })
    }

    /// Body of a describe request.
    pub fn describe_body(&self, prompt: &str, image_base64: String) -> Value {
        let prompt = if self.structured {
            format!("{prompt}{STRUCTURED_SUFFIX}")
        } else {
            prompt.to_string()
        };
        let mut body = match self.endpoint {
            Endpoint::Generate => json!({
                "model": self.vision_model,
                "prompt": prompt,
                "images": [image_base64],
            }),
            Endpoint::Chat => json!({
                "model": self.vision_model,
                "messages": [{ "role": "user", "content": prompt, "images": [image_base64] }],
            }),
        };
        body["stream"] = json!(self.stream);
        body["options"] = self.options();
        body["keep_alive"] = self.keep_alive.clone();
        if self.structured {
            body["format"] = json!("json");
        }
        body
    }

    /// Body of an `/api/embed` request.
    pub fn embed_body(&self, texts: &[&str]) -> Value {
        let mut body = json!({
            "model": self.embed_model,
            "input": texts,
            "truncate": self.truncate,
            "keep_alive": self.keep_alive,
        });
        if let Some(d) = self.dimensions {
            body["dimensions"] = json!(d);
        }
        body
    }

    /// Body of a legacy `/api/embeddings` request.
    pub fn legacy_embed_body(&self, text: &str) -> Value {
        json!({ "model": self.embed_model, "prompt": text, "keep_alive": self.keep_alive })
    }

    /// Body that loads a model without generating (`done_reason: "load"`).
    pub fn load_body(&self, model: &str) -> Value {
        json!({ "model": model, "prompt": "", "keep_alive": self.keep_alive })
    }
}

/// The `error` text of an Ollama error body, or the body itself when it is not JSON.
pub fn error_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| text.trim().to_string())
}

/// True when a 404 means "this route does not exist" (plain text) rather than "model not found"
/// (a JSON error body): an older Ollama without `/api/embed` answers like this.
pub fn is_missing_route(status: u16, body: &[u8]) -> bool {
    status == 404 && serde_json::from_slice::<Value>(body).is_err()
}

/// What went wrong, from a non-2xx answer about `model`.
pub fn map_status(base: &str, model: &str, status: u16, body: &[u8]) -> Error {
    let text = error_text(body);
    let lower = text.to_lowercase();
    match status {
        404 if lower.contains("not found") => Error::ModelNotFound(format!(
            "model \"{model}\" not found on {base}: run `ollama pull {model}`"
        )),
        404 => Error::Other(format!("{base} answered 404 ({text}): is it an Ollama server, and recent enough?")),
        400 if lower.contains("does not support generate") || lower.contains("does not support chat") => {
            Error::Other(format!(
                "model \"{model}\" cannot describe images (it is an embedding model): set vision_model to a vision model such as llava"
            ))
        }
        400 if lower.contains("multimodal") => Error::Other(format!(
            "model \"{model}\" cannot see images: set vision_model to a vision model such as llava, llama3.2-vision, minicpm-v or bakllava"
        )),
        400 if lower.contains("exceeds the context length") => Error::BadInput(format!(
            "the text is longer than the context of model \"{model}\": shorten it or set truncate = true"
        )),
        400 if lower.contains("illegal base64") => Error::BadInput(format!("Ollama could not read the image: {text}")),
        400 if lower.contains("model is required") || lower.contains("invalid model name") => {
            Error::Other(format!("model name {model:?} is not valid for Ollama ({text}): fix the model setting"))
        }
        501 => Error::Other(format!(
            "model \"{model}\" is not an embedding model ({text}): set embed_model to an embedding model such as nomic-embed-text"
        )),
        500 if lower.contains("does not support embeddings") => Error::Other(format!(
            "model \"{model}\" is not an embedding model ({text}): set embed_model to an embedding model such as nomic-embed-text"
        )),
        503 => Error::Unavailable(format!("Ollama at {base} is busy ({text}): try again later")),
        429 => Error::Unavailable(format!("Ollama at {base} is rate-limiting ({text}): try again later")),
        _ => Error::Other(format!("Ollama at {base} answered {status}: {text}")),
    }
}

/// The text of a describe answer: one JSON object, or an NDJSON stream read to the end. An
/// `error` on any line fails the whole answer (Ollama reports mid-stream errors that way, in a
/// 200 response).
pub fn parse_generation(endpoint: Endpoint, body: &[u8]) -> Result<String, Error> {
    let text = std::str::from_utf8(body)
        .map_err(|_| Error::Other("Ollama's answer is not UTF-8".into()))?;
    let mut out = String::new();
    let mut done = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).map_err(|e| {
            Error::Other(format!(
                "Ollama's answer is not JSON ({e}): {}",
                truncate(line, 200)
            ))
        })?;
        if let Some(err) = v.get("error").and_then(Value::as_str) {
            return Err(Error::Other(format!(
                "Ollama failed while answering: {err}"
            )));
        }
        let piece = match endpoint {
            Endpoint::Generate => v.get("response").and_then(Value::as_str),
            Endpoint::Chat => v.pointer("/message/content").and_then(Value::as_str),
        };
        out.push_str(piece.unwrap_or(""));
        if v.get("done").and_then(Value::as_bool) == Some(true) {
            done = true;
        }
    }
    if !done {
        return Err(Error::Other(
            "Ollama's answer ended before it was done: try again".into(),
        ));
    }
    Ok(out)
}

/// Structured fields parsed from a JSON answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Structured {
    /// The prose description.
    pub description: String,
    /// Objects seen.
    pub objects: Vec<String>,
    /// Visible text.
    pub visible_text: Option<String>,
    /// Keywords.
    pub tags: Vec<String>,
}

/// Parse a structured answer; `None` when it is not the JSON asked for (the raw text is used then).
pub fn parse_structured(text: &str) -> Option<Structured> {
    let v: Value = serde_json::from_str(text.trim()).ok()?;
    let description = v.get("description")?.as_str()?.trim().to_string();
    if description.is_empty() {
        return None;
    }
    let list = |key: &str| -> Vec<String> {
        v.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let visible_text = v
        .get("visible_text")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    Some(Structured {
        description,
        objects: list("objects"),
        visible_text,
        tags: list("tags"),
    })
}

/// The first 12 hex digits of `model`'s digest in an `/api/tags` answer, or `None` when the
/// answer does not list it with a digest.
pub fn model_revision(tags_answer: &[u8], model: &str) -> Option<String> {
    let v: Value = serde_json::from_slice(tags_answer).ok()?;
    let digest = listed_entry(&v, model)?.get("digest")?.as_str()?;
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    (hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex[..12].to_ascii_lowercase())
}

/// `model`'s entry in a parsed `/api/tags` answer. `x` and `x:latest` are one model. Case is
/// ignored: Ollama refuses a second model whose name differs only in case, so this never picks
/// another model, and a name typed in other case is not reported as not pulled.
fn listed_entry<'a>(tags: &'a Value, model: &str) -> Option<&'a Value> {
    let full = |name: &str| {
        let name = name.to_ascii_lowercase();
        if name.contains(':') {
            name
        } else {
            format!("{name}:latest")
        }
    };
    let wanted = full(model);
    tags.get("models")?.as_array()?.iter().find(|m| {
        ["name", "model"]
            .iter()
            .any(|k| m.get(*k).and_then(Value::as_str).map(full).as_deref() == Some(&wanted))
    })
}

/// The version in a `/api/version` answer.
pub fn version(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("version")?
        .as_str()
        .map(str::to_string)
}

/// Whether an `/api/tags` answer is a model list, so that a model missing from it is not pulled.
pub fn lists_models(tags_answer: &[u8]) -> bool {
    serde_json::from_slice::<Value>(tags_answer)
        .ok()
        .is_some_and(|v| v.get("models").is_some_and(Value::is_array))
}

/// The capabilities `/api/tags` lists for `model` (empty when the server does not say), or
/// `None` when the model is not listed at all (not pulled).
pub fn listed_capabilities(tags_answer: &[u8], model: &str) -> Option<Vec<String>> {
    let v: Value = serde_json::from_slice(tags_answer).ok()?;
    Some(
        listed_entry(&v, model)?
            .get("capabilities")
            .and_then(|c| serde_json::from_value::<Vec<String>>(c.clone()).ok())
            .unwrap_or_default(),
    )
}

/// The vectors of an `/api/embed` answer.
pub fn parse_embed(body: &[u8]) -> Result<Vec<Vec<f32>>, Error> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Error::Other(format!("Ollama's /api/embed answer is not JSON: {e}")))?;
    let list = v
        .get("embeddings")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            Error::Other("Ollama's /api/embed answer has no `embeddings` list".into())
        })?;
    list.iter().map(parse_vector).collect()
}

/// The vector of a legacy `/api/embeddings` answer, L2-normalised (that route does not
/// normalise for every model).
pub fn parse_legacy_embed(body: &[u8]) -> Result<Vec<f32>, Error> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Error::Other(format!("Ollama's /api/embeddings answer is not JSON: {e}")))?;
    let mut vector = v
        .get("embedding")
        .ok_or_else(|| Error::Other("Ollama's /api/embeddings answer has no `embedding`".into()))
        .and_then(parse_vector)?;
    let norm = vector
        .iter()
        .map(|x| f64::from(*x).powi(2))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 && norm.is_finite() {
        vector
            .iter_mut()
            .for_each(|x| *x = (f64::from(*x) / norm) as f32);
    }
    Ok(vector)
}

fn parse_vector(v: &Value) -> Result<Vec<f32>, Error> {
    let items = v
        .as_array()
        .ok_or_else(|| Error::Other("an embedding is not a list of numbers".into()))?;
    items
        .iter()
        .map(|x| match x.as_f64() {
            Some(f) => Ok(f as f32),
            // JSON has no NaN; a null or string where a number belongs is the same failure.
            None => Ok(f32::NAN),
        })
        .collect()
}

/// Why a vector is unusable, if it is.
pub fn vector_problem(v: &[f32], dims: Option<usize>) -> Option<String> {
    if v.is_empty() {
        return Some("Ollama returned an empty vector".into());
    }
    if let Some(d) = dims {
        if v.len() != d {
            return Some(format!(
                "Ollama returned a vector of length {} where {d} were expected",
                v.len()
            ));
        }
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Some("Ollama returned a vector containing NaN or infinity".into());
    }
    None
}

/// Whether `/api/show` or `/api/tags` says a model can see images / embed.
pub fn capabilities(show_body: &[u8]) -> Vec<String> {
    serde_json::from_slice::<Value>(show_body)
        .ok()
        .and_then(|v| v.get("capabilities").cloned())
        .and_then(|c| serde_json::from_value::<Vec<String>>(c).ok())
        .unwrap_or_default()
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
        Settings::from_settings(&SdkSettings::from_pairs(pairs.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_follow_the_seed() {
        let s = settings(&[]);
        assert_eq!(s.base_url, "http://localhost:11434");
        assert_eq!(
            (s.vision_model.as_str(), s.embed_model.as_str()),
            ("llava", "nomic-embed-text")
        );
        assert_eq!(s.prompt, DEFAULT_PROMPT);
        // nomic-embed-text takes task prefixes: its space says which.
        let tag = s.task_prefixes().space_tag().unwrap();
        assert_eq!(s.space_id(None), format!("ollama/nomic-embed-text@{tag}"));
        assert_eq!(
            s.space_id(Some("0a109f422b47")),
            format!("ollama/nomic-embed-text@0a109f422b47+{tag}")
        );
        let minilm = settings(&[("embed_model", "all-minilm")]);
        assert_eq!(minilm.space_id(None), "ollama/all-minilm");
        assert_eq!(
            minilm.space_id(Some("0a109f422b47")),
            "ollama/all-minilm@0a109f422b47"
        );
        let body = s.describe_body("p", "AAAA".into());
        assert_eq!(body["stream"], false);
        assert_eq!(body["options"]["temperature"], 0.0);
        assert_eq!(body["images"][0], "AAAA");
    }

    #[test]
    fn prefix_settings_override_the_known_table() {
        let s = settings(&[]);
        assert_eq!(
            s.task_prefixes().get(Purpose::Query),
            Some("search_query: ")
        );
        let custom = settings(&[("embed_model", "my-embedder"), ("query_prefix", "Q: ")]);
        assert_eq!(custom.task_prefixes().get(Purpose::Query), Some("Q: "));
        assert_eq!(custom.task_prefixes().get(Purpose::Document), None);
        let off = settings(&[("document_prefix", ""), ("query_prefix", "")]);
        assert_eq!(off.task_prefixes().get(Purpose::Query), None);
        assert_eq!(off.task_prefixes().get(Purpose::Document), None);
        let bare = settings(&[("task_prefixes", "false")]);
        assert!(bare.task_prefixes().is_empty());
        assert_eq!(
            bare.space_id(Some("0a109f422b47")),
            "ollama/nomic-embed-text@0a109f422b47"
        );
    }

    #[test]
    fn prompts_are_chosen_by_type_then_size() {
        let s = settings(&[(
            "prompts",
            r#"{"image/png": "png prompt", "large": "large prompt", "image/jpeg:small": "tiny jpeg"}"#,
        )]);
        assert_eq!(s.prompt_for("image/png", 4000, 3000), "png prompt");
        assert_eq!(s.prompt_for("image/jpeg", 4000, 3000), "large prompt");
        assert_eq!(s.prompt_for("image/jpeg", 100, 80), "tiny jpeg");
        assert_eq!(s.prompt_for("image/jpeg", 800, 600), DEFAULT_PROMPT);
    }

    #[test]
    fn errors_map_to_actionable_cases() {
        let b = "http://localhost:11434";
        assert_eq!(
            map_status(b, "llava", 404, br#"{"error":"model 'llava' not found"}"#),
            Error::ModelNotFound(format!(
                "model \"llava\" not found on {b}: run `ollama pull llava`"
            ))
        );
        assert!(
            matches!(map_status(b, "nomic-embed-text", 400, br#"{"error":"\"nomic-embed-text\" does not support generate"}"#), Error::Other(m) if m.contains("cannot describe images"))
        );
        assert!(
            matches!(map_status(b, "llama3.2", 400, br#"{"error":"{\"error\":\"Multimodal data provided, but model does not support multimodal requests.\"}"}"#), Error::Other(m) if m.contains("llama3.2\" cannot see images"))
        );
        assert!(
            matches!(map_status(b, "llava", 501, br#"{"error":"This server does not support embeddings."}"#), Error::Other(m) if m.contains("not an embedding model"))
        );
        assert!(matches!(
            map_status(b, "llava", 503, br#"{"error":"server busy"}"#),
            Error::Unavailable(_)
        ));
        assert!(is_missing_route(404, b"404 page not found"));
        assert!(!is_missing_route(
            404,
            br#"{"error":"model \"x\" not found, try pulling it first"}"#
        ));
    }

    #[test]
    fn streams_are_read_to_the_end_and_mid_stream_errors_fail() {
        let ok = b"{\"response\":\"a \",\"done\":false}\n{\"response\":\"cat\",\"done\":false}\n{\"response\":\"\",\"done\":true,\"done_reason\":\"stop\"}\n";
        assert_eq!(parse_generation(Endpoint::Generate, ok).unwrap(), "a cat");
        let broken = b"{\"response\":\"a \",\"done\":false}\n{\"error\":\"runner crashed\"}\n";
        assert!(parse_generation(Endpoint::Generate, broken).is_err());
        let cut = b"{\"response\":\"a \",\"done\":false}\n";
        assert!(parse_generation(Endpoint::Generate, cut).is_err());
        let chat = br#"{"message":{"role":"assistant","content":"hi"},"done":true}"#;
        assert_eq!(parse_generation(Endpoint::Chat, chat).unwrap(), "hi");
    }

    #[test]
    fn structured_answers_parse_and_anything_else_is_none() {
        let s = parse_structured(
            r#"{"description":"a cat","objects":["cat"],"visible_text":"EXIT","tags":["pet"]}"#,
        )
        .unwrap();
        assert_eq!(
            (
                s.description.as_str(),
                s.objects.len(),
                s.visible_text.as_deref()
            ),
            ("a cat", 1, Some("EXIT"))
        );
        assert!(parse_structured("A cat on a mat.").is_none());
        assert!(parse_structured(r#"{"objects":[]}"#).is_none());
    }

    #[test]
    fn legacy_vectors_are_normalised() {
        let v = parse_legacy_embed(br#"{"embedding":[3.0,4.0]}"#).unwrap();
        assert_eq!(v, vec![0.6, 0.8]);
        assert!(vector_problem(&[f32::NAN], None).is_some());
        assert!(vector_problem(&[1.0, 2.0], Some(3)).is_some());
    }

    #[test]
    fn the_revision_comes_from_the_tags_listing() {
        let tags = br#"{"models":[
            {"name":"llava:latest","model":"llava:latest","digest":"8dd30f6b0cb19f555f2c7a7ebda861449ea2cc76bf1f44e262931f45fc81d081"},
            {"name":"nomic-embed-text:latest","model":"nomic-embed-text:latest","digest":"0A109F422B47E3A30BA2B10ECA18548E944E8A23073EE3F3E947EFCF3C45E59F"},
            {"name":"all-minilm:l6-v2","model":"all-minilm:l6-v2","digest":"sha256:1b226e2802dbb772b5fc32a58f103ca1804ef7501331012de126ab22f67475ef"},
            {"name":"broken:latest","digest":"xyz"}]}"#;
        let rev = |m| model_revision(tags, m);
        assert_eq!(rev("nomic-embed-text").as_deref(), Some("0a109f422b47"));
        assert_eq!(
            rev("nomic-embed-text:latest").as_deref(),
            Some("0a109f422b47")
        );
        assert_eq!(rev("all-minilm:l6-v2").as_deref(), Some("1b226e2802db"));
        assert_eq!(rev("all-minilm"), None);
        assert_eq!(rev("broken"), None);
        assert_eq!(model_revision(b"not json", "llava"), None);
        assert_eq!(rev("LLaVA").as_deref(), Some("8dd30f6b0cb1"));
    }

    #[test]
    fn a_model_missing_from_a_model_list_is_not_pulled_but_a_proxys_page_says_nothing() {
        let tags = br#"{"models":[{"name":"llava:latest","digest":"8dd30f6b0cb19f555f2c7a7ebda861449ea2cc76bf1f44e262931f45fc81d081"}]}"#;
        assert!(lists_models(tags) && lists_models(br#"{"models":[]}"#));
        assert_eq!(listed_capabilities(tags, "bakllava"), None);
        assert_eq!(listed_capabilities(tags, "llava"), Some(vec![]));
        assert!(!lists_models(b"<html>404</html>"));
        assert!(!lists_models(br#"{"error":"not found"}"#));
    }
}
