//! `/v1/embeddings`: feature-hash vectors of the texts received, float or base64.

use super::*;

/// The inputs as texts (token-id lists become their ids as words); `None` when `input` is not a
/// string, a list of strings, a list of token ids or a list of such lists, or is empty.
pub(super) fn embed_inputs(v: &Value) -> Option<Vec<String>> {
    let tokens = |items: &[Value]| -> Option<String> {
        let ids: Option<Vec<String>> = items
            .iter()
            .map(|t| t.as_u64().map(|n| n.to_string()))
            .collect();
        ids.map(|ids| ids.join(" ")).filter(|s| !s.is_empty())
    };
    let inputs = match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if items.iter().all(Value::is_u64) => vec![tokens(items)?],
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Some(s.clone()),
                Value::Array(t) => tokens(t),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?,
        _ => return None,
    };
    let ok = !inputs.is_empty()
        && inputs.len() <= MAX_EMBED_INPUTS
        && inputs.iter().all(|s| !s.is_empty());
    ok.then_some(inputs)
}

pub(super) async fn embeddings(shared: &Arc<Shared>, parsed: Option<Value>) -> Response {
    let Some(v) = parsed.filter(Value::is_object) else {
        return invalid(BAD_JSON, None, None);
    };
    let Some(model) = v
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
    else {
        return invalid("you must provide a model parameter", None, None);
    };
    let Some(input) = v.get("input").filter(|i| !i.is_null()) else {
        return invalid(
            "Missing required parameter: 'input'.",
            Some("input"),
            Some("missing_required_parameter"),
        );
    };
    let Some(inputs) = embed_inputs(input) else {
        return invalid(BAD_INPUT, None, None);
    };
    let base64 = match v.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(other) => {
            return invalid(
                &format!("Invalid value: {other}. Supported values are: 'float' and 'base64'."),
                Some("encoding_format"),
                Some("invalid_value"),
            )
        }
    };
    let Some(spec) = shared.model(model) else {
        return model_not_found(model);
    };
    let ModelKind::Embedding {
        dims,
        flexible,
        context,
    } = spec.kind
    else {
        // OpenAI's own wording for this case is not documented; the envelope is.
        return invalid(
            &format!("The model `{model}` does not support embeddings."),
            Some("model"),
            None,
        );
    };
    let dimensions = match v.get("dimensions").filter(|d| !d.is_null()) {
        None => None,
        Some(_) if !flexible => return invalid("This model does not support specifying dimensions.", None, None),
        Some(d) => match d.as_i64() {
            Some(d) if d < 1 => return invalid(&format!("Invalid 'dimensions': integer below minimum value. Expected a value >= 1, but got {d} instead."), Some("dimensions"), Some("integer_below_min_value")),
            Some(d) if d as usize > dims => return invalid(&format!("Invalid 'dimensions': integer above maximum value. Expected a value <= {dims}, but got {d} instead."), Some("dimensions"), Some("integer_above_max_value")),
            Some(d) => Some(d as usize),
            None => return invalid(&format!("Invalid type for 'dimensions': expected an integer, but got {} instead.", type_name(d)), Some("dimensions"), Some("invalid_type")),
        },
    };
    if let Some(long) = inputs.iter().map(|t| words(t)).find(|n| *n > context) {
        return invalid(
            &format!("This model's maximum context length is {context} tokens, however you requested {long} tokens ({long} in your prompt; 0 for the completion). Please reduce your prompt; or completion length."),
            None,
            None,
        );
    }
    let _ticket = match shared.schedule(model).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let tokens: usize = inputs.iter().map(|t| words(t).max(1)).sum();
    let mut data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let e = embed_text(&spec.id, dims, text, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = e.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(e)
            };
            json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
        .collect();
    if lock(&shared.knobs).shuffle {
        data.reverse();
    }
    json_resp(
        200,
        &json!({
            "object": "list", "data": data, "model": model,
            "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
        }),
    )
}

/// A feature hash of the words: each word adds ±1 at one place and ±0.5 at another, seeded by
/// the model so that models have different spaces; a shared direction keeps a wordless text from
/// being the zero vector. `dimensions` keeps the first components and renormalises, as the
/// Matryoshka-trained `text-embedding-3-*` models do.
pub(super) fn embed_text(
    model: &str,
    dims: usize,
    text: &str,
    dimensions: Option<usize>,
) -> Vec<f32> {
    let mut v = vec![0f32; dims.max(1)];
    let n = v.len() as u64;
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let h = mix(fnv(&[model.as_bytes(), word.to_lowercase().as_bytes()]));
        v[(h % n) as usize] += if h >> 63 == 1 { -1.0 } else { 1.0 };
        let h2 = mix(h ^ 0x2545_f491_4f6c_dd1d);
        v[(h2 % n) as usize] += if h2 >> 63 == 1 { -0.5 } else { 0.5 };
    }
    v[(mix(fnv(&[model.as_bytes(), b"\0shared"])) % n) as usize] += 0.5;
    if let Some(d) = dimensions.filter(|d| *d < v.len()) {
        v.truncate(d);
        if v.iter().all(|x| *x == 0.0) {
            v[0] = 1.0;
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
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
