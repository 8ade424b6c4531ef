//! `/api/generate` and `/api/chat`: descriptions computed from the decoded image.

use super::*;

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Generate,
    Chat,
}

pub(super) struct Job {
    pub(super) kind: Kind,
    /// The model as the request named it: responses echo it.
    pub(super) model: String,
    pub(super) spec: ModelSpec,
    pub(super) prompt: String,
    pub(super) prompt_tokens: usize,
    pub(super) images: Vec<Vec<u8>>,
    pub(super) format: Option<Value>,
    pub(super) stream: bool,
    pub(super) num_predict: Option<i64>,
    pub(super) start: Instant,
}

pub(super) async fn generate(
    shared: &Arc<Shared>,
    parsed: Result<Value, String>,
    start: Instant,
) -> Response {
    let v = match bind_checked(parsed, "GenerateRequest", go::GENERATE) {
        Ok(v) => v,
        Err(e) => return error_resp(400, e),
    };
    let name = str_of(&v, "model");
    // An invalid name is reported as not found here, as the real handler does.
    let Some(spec) = canonical(&name).and_then(|k| shared.model(&k)) else {
        return error_resp(404, format!("model '{name}' not found"));
    };
    let prompt = str_of(&v, "prompt");
    if prompt.is_empty() && keep_alive_is_zero(&v) {
        shared.unload(&spec);
        return json_resp(
            200,
            &json!({
                "model": name, "created_at": now_rfc3339(), "response": "", "done": true, "done_reason": "unload",
            }),
        );
    }
    if !spec.has(Capability::Completion) {
        return error_resp(
            400,
            format!("{} does not support generate", go::quote(&name)),
        );
    }
    let ticket = match shared.schedule(&spec).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    if prompt.is_empty() {
        // Loading is answered as one JSON object even when streaming was asked for.
        return json_resp(
            200,
            &json!({
                "model": name, "created_at": now_rfc3339(), "response": "", "done": true, "done_reason": "load",
            }),
        );
    }
    let images = images_of(&v);
    let system = str_of(&v, "system");
    let job = Job {
        kind: Kind::Generate,
        model: name,
        spec,
        prompt_tokens: words(&prompt) + words(&system) + IMAGE_TOKENS * images.len(),
        prompt,
        images,
        format: field(&v, "format").cloned(),
        stream: field(&v, "stream").and_then(Value::as_bool).unwrap_or(true),
        num_predict: option_i64(&v, "num_predict"),
        start,
    };
    run(shared, job, ticket).await
}

pub(super) async fn chat(
    shared: &Arc<Shared>,
    parsed: Result<Value, String>,
    start: Instant,
) -> Response {
    let v = match bind_checked(parsed, "ChatRequest", go::CHAT) {
        Ok(v) => v,
        Err(e) => return error_resp(400, e),
    };
    let name = str_of(&v, "model");
    let Some(key) = canonical(&name) else {
        return error_resp(400, "model is required");
    };
    let Some(spec) = shared.model(&key) else {
        return error_resp(404, format!("model '{name}' not found"));
    };
    let messages: Vec<&Value> = field(&v, "messages")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter(|m| m.is_object()).collect())
        .unwrap_or_default();
    let done = |reason: &str| {
        json_resp(
            200,
            &json!({
                "model": name, "created_at": now_rfc3339(),
                "message": { "role": "assistant", "content": "" },
                "done": true, "done_reason": reason,
            }),
        )
    };
    if messages.is_empty() && keep_alive_is_zero(&v) {
        shared.unload(&spec);
        return done("unload");
    }
    if !spec.has(Capability::Completion) {
        return error_resp(400, format!("{} does not support chat", go::quote(&name)));
    }
    let ticket = match shared.schedule(&spec).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    if messages.is_empty() {
        return done("load");
    }
    let prompt = messages
        .iter()
        .rev()
        .find(|m| str_of(m, "role") == "user")
        .or(messages.last())
        .map(|m| str_of(m, "content"))
        .unwrap_or_default();
    let images: Vec<Vec<u8>> = messages.iter().flat_map(|m| images_of(m)).collect();
    let job = Job {
        kind: Kind::Chat,
        model: name.clone(),
        spec,
        prompt_tokens: messages
            .iter()
            .map(|m| words(&str_of(m, "content")))
            .sum::<usize>()
            + IMAGE_TOKENS * images.len(),
        prompt,
        images,
        format: field(&v, "format").cloned(),
        stream: field(&v, "stream").and_then(Value::as_bool).unwrap_or(true),
        num_predict: option_i64(&v, "num_predict"),
        start,
    };
    run(shared, job, ticket).await
}

/// What the runner does once the model is loaded.
pub(super) async fn run(shared: &Arc<Shared>, job: Job, ticket: Ticket) -> Response {
    if !job.images.is_empty() && !job.spec.has(Capability::Vision) {
        // The runner's own JSON error, passed through as the error text.
        let runner = json!({ "error": {
            "code": 400, "message": MULTIMODAL_UNSUPPORTED, "type": "invalid_request_error",
        }});
        return error_resp(400, runner.to_string());
    }
    let json_mode = match &job.format {
        None => false,
        Some(Value::String(s)) if s.is_empty() => false,
        Some(Value::String(s)) if s == "json" => true,
        Some(Value::Object(_)) => true,
        Some(other) => {
            return error_resp(
                500,
                format!(
                    "invalid format: {}; expected \"json\" or a valid JSON Schema object",
                    go::quote(&other.to_string())
                ),
            )
        }
    };
    let images = job.images.clone();
    // Decoding a large image takes a while: keep it off the threads that serve other requests.
    let summaries = tokio::task::spawn_blocking(move || {
        images
            .iter()
            .map(|i| summarise(i))
            .collect::<Vec<Result<ImageSummary, String>>>()
    })
    .await;
    let summaries = match summaries {
        Ok(s) => s,
        Err(e) => return error_resp(500, format!("failed to process inputs: {e}")),
    };
    let mut ok = Vec::new();
    for (i, s) in summaries.into_iter().enumerate() {
        match s {
            Ok(s) => ok.push(s),
            Err(e) => {
                return error_resp(
                    500,
                    format!("failed to process inputs: image {i} could not be decoded: {e}"),
                )
            }
        }
    }
    let text = compose(&job.prompt, &ok, json_mode);
    let mut pieces: Vec<&str> = text.split_inclusive(' ').collect();
    let mut done_reason = "stop";
    if let Some(n) = job.num_predict.filter(|n| *n > 0) {
        if pieces.len() > n as usize {
            pieces.truncate(n as usize);
            done_reason = "length";
        }
    }
    let (token_delay, mid_stream) = {
        let k = lock(&shared.knobs);
        (k.token_delay, k.error_mid_stream)
    };
    let now = Instant::now();
    let streamed = if job.stream {
        token_delay * pieces.len().saturating_sub(1) as u32
    } else {
        Duration::ZERO
    };
    let processing = now.duration_since(ticket.loaded_at);
    let created = now_rfc3339();
    let mut last = json!({ "model": job.model, "created_at": created });
    match job.kind {
        Kind::Generate => last["response"] = json!(""),
        Kind::Chat => last["message"] = json!({ "role": "assistant", "content": "" }),
    }
    last["done"] = json!(true);
    last["done_reason"] = json!(done_reason);
    if job.kind == Kind::Generate {
        let context: Vec<u64> = job
            .prompt
            .split_whitespace()
            .chain(pieces.iter().copied())
            .map(|w| mix(fnv(&[w.trim().as_bytes()])) % 32_000)
            .collect();
        last["context"] = json!(context);
    }
    last["total_duration"] = json!(nanos(now.duration_since(job.start) + streamed));
    last["load_duration"] = json!(nanos(ticket.loaded_at.duration_since(job.start)));
    last["prompt_eval_count"] = json!(job.prompt_tokens.max(1));
    last["prompt_eval_duration"] = json!(nanos(processing / 3));
    last["eval_count"] = json!(pieces.len());
    last["eval_duration"] = json!(nanos(processing - processing / 3 + streamed));

    if !job.stream {
        if mid_stream {
            return error_resp(500, MID_STREAM_ERROR);
        }
        let whole: String = pieces.concat();
        match job.kind {
            Kind::Generate => last["response"] = json!(whole),
            Kind::Chat => last["message"]["content"] = json!(whole),
        }
        return json_resp(200, &last);
    }
    let line = |piece: &str| {
        let mut l = json!({ "model": job.model, "created_at": created });
        match job.kind {
            Kind::Generate => l["response"] = json!(piece),
            Kind::Chat => l["message"] = json!({ "role": "assistant", "content": piece }),
        }
        l["done"] = json!(false);
        l
    };
    let mut lines: Vec<Value> = pieces.iter().map(|p| line(p)).collect();
    if mid_stream {
        lines.truncate(1);
        lines.push(json!({ "error": MID_STREAM_ERROR }));
    } else {
        lines.push(last);
    }
    ndjson(lines, token_delay, ticket)
}

pub(super) fn compose(prompt: &str, images: &[ImageSummary], json_mode: bool) -> String {
    let mut description = match images {
        [] => "No image was provided.".to_string(),
        [one] => one.sentence(),
        many => many
            .iter()
            .enumerate()
            .map(|(i, s)| format!("Image {}: {}", i + 1, s.sentence()))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let echo: Vec<&str> = prompt.split_whitespace().take(8).collect();
    if !echo.is_empty() {
        description.push_str(&format!(" Prompt: \"{}\".", echo.join(" ")));
    }
    if !json_mode {
        return description;
    }
    let mut objects: Vec<String> = Vec::new();
    let mut tags: Vec<String> = Vec::new();
    for s in images {
        for (name, share) in &s.colours {
            if *share >= 0.1 {
                let object = format!("a {name} region");
                if !objects.contains(&object) {
                    objects.push(object);
                }
                if !tags.iter().any(|t| t == name) {
                    tags.push(name.to_string());
                }
            }
        }
        let orientation = match s.width.cmp(&s.height) {
            std::cmp::Ordering::Greater => "landscape",
            std::cmp::Ordering::Less => "portrait",
            std::cmp::Ordering::Equal => "square",
        };
        for t in [orientation.to_string(), format!("{}x{}", s.width, s.height)] {
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
    }
    json!({
        "description": description,
        "objects": objects,
        "visible_text": "",
        "tags": tags,
    })
    .to_string()
}

pub(super) struct ImageSummary {
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) hash: String,
    /// Colour names with their share of the pixels, largest first.
    pub(super) colours: Vec<(&'static str, f32)>,
}

impl ImageSummary {
    pub(super) fn sentence(&self) -> String {
        let colour = self.colours.first().map(|c| c.0).unwrap_or("gray");
        format!(
            "A {}x{} image, mostly {colour}, sha256 {}.",
            self.width, self.height, self.hash
        )
    }
}

pub(super) const COLOURS: [&str; 12] = [
    "black", "white", "gray", "red", "orange", "brown", "yellow", "green", "cyan", "blue",
    "purple", "pink",
];

pub(super) fn summarise(bytes: &[u8]) -> Result<ImageSummary, String> {
    use image::GenericImageView;
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    // A decompression bomb must fail here, not take the test machine's memory.
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(16_384);
    limits.max_image_height = Some(16_384);
    limits.max_alloc = Some(256 << 20);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| e.to_string())?;
    let (w, h) = img.dimensions();
    // Sampling a grid of at most ~64k pixels names the colour as well as reading them all.
    let step = (((w as u64 * h as u64) / 65_536) as f64)
        .sqrt()
        .ceil()
        .max(1.0) as usize;
    let mut counts = [0usize; COLOURS.len()];
    let mut total = 0usize;
    for y in (0..h).step_by(step) {
        for x in (0..w).step_by(step) {
            let p = img.get_pixel(x, y).0;
            counts[colour_index(p[0], p[1], p[2])] += 1;
            total += 1;
        }
    }
    let mut colours: Vec<(&'static str, f32)> = COLOURS
        .iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| (*name, n as f32 / total.max(1) as f32))
        .collect();
    // Stable: ties keep the fixed order of COLOURS.
    colours.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(ImageSummary {
        width: w,
        height: h,
        hash: short_sha256(bytes),
        colours,
    })
}

pub(super) fn colour_index(r: u8, g: u8, b: u8) -> usize {
    let (r, g, b) = (r as f32 / 255.0, g as f32 / 255.0, b as f32 / 255.0);
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    let s = if max > 0.0 { d / max } else { 0.0 };
    if max < 0.2 {
        return 0;
    }
    if s < 0.2 {
        return if max > 0.8 { 1 } else { 2 };
    }
    let h = if max == r {
        60.0 * ((g - b) / d).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / d + 2.0)
    } else {
        60.0 * ((r - g) / d + 4.0)
    };
    let name = match h {
        h if !(15.0..345.0).contains(&h) => "red",
        h if h < 45.0 => {
            if max < 0.6 {
                "brown"
            } else {
                "orange"
            }
        }
        h if h < 70.0 => "yellow",
        h if h < 165.0 => "green",
        h if h < 195.0 => "cyan",
        h if h < 255.0 => "blue",
        h if h < 290.0 => "purple",
        _ => "pink",
    };
    COLOURS.iter().position(|c| *c == name).unwrap_or(2)
}
