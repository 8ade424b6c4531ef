//! `/api/embed` and `/api/embeddings`: feature-hash vectors of the texts received.

use super::*;

/// The inputs; `None` when `input` is neither a string nor a list of strings.
pub(super) fn embed_inputs(v: &Value) -> Option<Vec<String>> {
    match field(v, "input") {
        None => Some(vec![]),
        Some(Value::String(s)) if s.is_empty() => Some(vec![]),
        Some(Value::String(s)) => Some(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect(),
        Some(_) => None,
    }
}

pub(super) async fn embed(
    shared: &Arc<Shared>,
    parsed: Result<Value, String>,
    start: Instant,
) -> Response {
    let v = match bind_checked(parsed, "EmbedRequest", go::EMBED) {
        Ok(v) => v,
        Err(e) => return error_resp(400, e),
    };
    // The input's type is checked before the model, as the real handler does.
    let Some(inputs) = embed_inputs(&v) else {
        return error_resp(400, "invalid input type");
    };
    let name = str_of(&v, "model");
    let Some(key) = canonical(&name) else {
        return error_resp(404, format!("model '{name}' not found"));
    };
    let Some(spec) = shared.model(&key) else {
        return error_resp(
            404,
            format!("model {} not found, try pulling it first", go::quote(&name)),
        );
    };
    let ticket = match shared.schedule(&spec).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    if inputs.is_empty() {
        return json_resp(200, &json!({ "model": name, "embeddings": [] }));
    }
    if !spec.has(Capability::Embedding) {
        return error_resp(501, NO_EMBEDDINGS);
    }
    let context = option_i64(&v, "num_ctx")
        .filter(|n| *n > 0)
        .map(|n| n as usize)
        .unwrap_or(spec.context_length);
    let truncate = field(&v, "truncate")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let nan_mode = lock(&shared.knobs).nan_mode;
    let mut vectors = Vec::with_capacity(inputs.len());
    let mut tokens = 0;
    for input in &inputs {
        let n = words(input);
        let text = if n > context {
            if !truncate {
                return error_resp(400, CONTEXT_EXCEEDED);
            }
            input
                .split_whitespace()
                .take(context)
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            input.clone()
        };
        tokens += words(&text).max(1);
        let mut e = embed_text(&spec, &text);
        if let Some(d) = field(&v, "dimensions").and_then(Value::as_i64) {
            if d > 0 && (d as usize) < e.len() {
                e.truncate(d as usize);
                normalise(&mut e);
            }
        }
        if text.contains(NAN_TOKEN) {
            if nan_mode == NanMode::Reject {
                return error_resp(500, NAN_ERROR);
            }
            if let Some(x) = e.first_mut() {
                *x = f32::NAN;
            }
        }
        vectors.push(e);
    }
    let total = nanos(start.elapsed());
    let load = nanos(ticket.loaded_at.duration_since(start));
    let list = |v: &[f32]| format_floats(v.iter().map(|x| *x as f64), nan_mode);
    let body = format!(
        "{{\"model\":{},\"embeddings\":[{}],\"total_duration\":{total},\"load_duration\":{load},\"prompt_eval_count\":{tokens}}}",
        Value::from(name),
        vectors.iter().map(|v| list(v)).collect::<Vec<_>>().join(",")
    );
    response(200, "application/json; charset=utf-8", Body::from(body))
}

pub(super) async fn embeddings(shared: &Arc<Shared>, parsed: Result<Value, String>) -> Response {
    let v = match bind_checked(parsed, "EmbeddingRequest", go::EMBEDDINGS) {
        Ok(v) => v,
        Err(e) => return error_resp(400, e),
    };
    let name = str_of(&v, "model");
    let Some(key) = canonical(&name) else {
        return error_resp(400, "model is required");
    };
    let Some(spec) = shared.model(&key) else {
        return error_resp(
            404,
            format!("model {} not found, try pulling it first", go::quote(&name)),
        );
    };
    let _ticket = match shared.schedule(&spec).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let prompt = str_of(&v, "prompt");
    if prompt.is_empty() {
        return json_resp(200, &json!({ "embedding": [] }));
    }
    // This route passes every runner error on as a 500.
    if !spec.has(Capability::Embedding) {
        return error_resp(500, NO_EMBEDDINGS);
    }
    let context = option_i64(&v, "num_ctx")
        .filter(|n| *n > 0)
        .map(|n| n as usize)
        .unwrap_or(spec.context_length);
    if words(&prompt) > context {
        return error_resp(500, CONTEXT_EXCEEDED);
    }
    let nan_mode = lock(&shared.knobs).nan_mode;
    let mut e = embed_text(&spec, &prompt);
    if !spec.legacy_normalised {
        // Raw model output: a length that differs from text to text, so a client that divides
        // by a constant instead of normalising is caught.
        let scale = 10.0 + (mix(fnv(&[prompt.as_bytes()])) % 1000) as f32 / 100.0;
        e.iter_mut().for_each(|x| *x *= scale);
    }
    if prompt.contains(NAN_TOKEN) {
        if nan_mode == NanMode::Reject {
            return error_resp(500, NAN_ERROR);
        }
        if let Some(x) = e.first_mut() {
            *x = f32::NAN;
        }
    }
    let body = format!(
        "{{\"embedding\":{}}}",
        format_floats(e.iter().map(|x| *x as f64), nan_mode)
    );
    response(200, "application/json; charset=utf-8", Body::from(body))
}

pub(super) fn format_floats(values: impl Iterator<Item = f64>, nan_mode: NanMode) -> String {
    let items: Vec<String> = values
        .map(|x| {
            if x.is_finite() {
                Value::from(x).to_string()
            } else if nan_mode == NanMode::Literal {
                "NaN".to_string()
            } else {
                "null".to_string()
            }
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// A feature hash of the words: each word adds ±1 at one place and ±0.5 at another (fewer
/// collisions), seeded by the model so that models have different spaces; a shared direction
/// makes unrelated texts slightly similar, as real embeddings are, and keeps a wordless text
/// from being the zero vector.
pub(super) fn embed_text(spec: &ModelSpec, text: &str) -> Vec<f32> {
    let dims = spec.embedding_length;
    if dims == 0 {
        return vec![];
    }
    let mut salt = canonical(&spec.name).unwrap_or_default();
    if !spec.revision.is_empty() {
        salt = format!("{salt}@{}", spec.revision);
    }
    let mut v = vec![0f32; dims];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let w = word.to_lowercase();
        let h = mix(fnv(&[salt.as_bytes(), w.as_bytes()]));
        let sign = if h >> 63 == 1 { -1.0 } else { 1.0 };
        v[(h % dims as u64) as usize] += sign;
        let h2 = mix(h ^ 0x2545_f491_4f6c_dd1d);
        let sign2 = if h2 >> 63 == 1 { -0.5 } else { 0.5 };
        v[(h2 % dims as u64) as usize] += sign2;
    }
    let bias = mix(fnv(&[salt.as_bytes(), b"\0shared"]));
    v[(bias % dims as u64) as usize] += 0.5;
    normalise(&mut v);
    v
}

pub(super) fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

pub(super) fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// SplitMix64's finaliser: spreads FNV's weak low bits.
pub(super) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
