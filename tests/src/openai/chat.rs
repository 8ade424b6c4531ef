//! `/v1/chat/completions`: descriptions computed from the decoded images, streamed or not.

use super::*;

/// The text part of a user message and its decoded images, or the 400 for a malformed part.
pub(super) fn read_content(
    messages: &[Value],
    vision: bool,
) -> Result<(String, Vec<Vec<u8>>), Box<Response>> {
    let mut prompt = String::new();
    let mut images = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let Some(role) = m.get("role").and_then(Value::as_str) else {
            return refuse(invalid(
                &format!("Missing required parameter: 'messages[{i}].role'."),
                Some(&format!("messages[{i}].role")),
                Some("missing_required_parameter"),
            ));
        };
        if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
            return refuse(invalid(
                &format!("Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."),
                Some(&format!("messages[{i}].role")),
                Some("invalid_value"),
            ));
        }
        match m.get("content") {
            Some(Value::String(s)) => {
                if role == "user" {
                    prompt = s.clone();
                }
            }
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    let at = format!("messages[{i}].content[{j}]");
                    match p.get("type").and_then(Value::as_str) {
                        Some("text") => match p.get("text").and_then(Value::as_str) {
                            Some(t) => text.push_str(t),
                            None => {
                                return refuse(invalid(
                                    &format!("Missing required parameter: '{at}.text'."),
                                    Some(&format!("{at}.text")),
                                    Some("missing_required_parameter"),
                                ))
                            }
                        },
                        Some("image_url") => {
                            if !vision || role != "user" {
                                return refuse(invalid(
                                    NO_VISION,
                                    Some(&format!("messages.[{i}].content.[{j}].type")),
                                    None,
                                ));
                            }
                            let Some(url) = p.pointer("/image_url/url").and_then(Value::as_str)
                            else {
                                return refuse(invalid(
                                    &format!("Missing required parameter: '{at}.image_url.url'."),
                                    Some(&format!("{at}.image_url.url")),
                                    Some("missing_required_parameter"),
                                ));
                            };
                            if let Some(d) = p.pointer("/image_url/detail") {
                                if !matches!(d.as_str(), Some("low" | "high" | "auto")) {
                                    return refuse(invalid(
                                        &format!("Invalid value: {d}. Supported values are: 'low', 'high', and 'auto'."),
                                        Some(&format!("{at}.image_url.detail")),
                                        Some("invalid_value"),
                                    ));
                                }
                            }
                            images.push(decode_image_url(url)?);
                        }
                        other => {
                            let shown = other
                                .map(|t| format!("'{t}'"))
                                .unwrap_or_else(|| "null".into());
                            return refuse(invalid(
                                &format!("Invalid value: {shown}. Supported values are: 'text', 'image_url', 'input_audio', 'refusal', 'audio', and 'file'."),
                                Some(&format!("{at}.type")),
                                Some("invalid_value"),
                            ));
                        }
                    }
                }
                if role == "user" {
                    prompt = text;
                }
            }
            _ => {
                return refuse(invalid(
                    &format!("Missing required parameter: 'messages[{i}].content'."),
                    Some(&format!("messages[{i}].content")),
                    Some("missing_required_parameter"),
                ));
            }
        }
    }
    Ok((prompt, images))
}

/// The bytes of a `data:image/...;base64,` URL; a remote URL is refused (the stand-in has no
/// network), as OpenAI refuses one it cannot download.
pub(super) fn decode_image_url(url: &str) -> Result<Vec<u8>, Box<Response>> {
    let unsupported = || {
        invalid(
            "You uploaded an unsupported image. Please make sure your image has of one the following formats: ['png', 'jpeg', 'gif', 'webp'].",
            None,
            Some("invalid_image_format"),
        )
    };
    let Some(rest) = url.strip_prefix("data:") else {
        return refuse(invalid(
            &format!("Error while downloading {url}."),
            None,
            Some("invalid_image_url"),
        ));
    };
    let Some((mime, data)) = rest.split_once(";base64,") else {
        return refuse(invalid("Invalid image URL. The URL must be a valid HTTP or HTTPS URL, or a data URL with base64 encoding.", None, Some("invalid_image_url")));
    };
    if !matches!(
        mime,
        "image/png" | "image/jpeg" | "image/jpg" | "image/gif" | "image/webp"
    ) {
        return refuse(unsupported());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .or_else(|_| {
            refuse(invalid(
                "Invalid base64 image_url.",
                None,
                Some("invalid_image_url"),
            ))
        })?;
    if describe_image(&bytes).is_none() {
        return refuse(unsupported());
    }
    Ok(bytes)
}

pub(super) fn compose(descriptions: &[String], prompt: &str) -> String {
    let mut text = match descriptions {
        [] => "No image was provided.".to_string(),
        [one] => one.clone(),
        many => many
            .iter()
            .enumerate()
            .map(|(i, d)| format!("Image {}: {d}", i + 1))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let echo: Vec<&str> = prompt.split_whitespace().take(8).collect();
    if !echo.is_empty() {
        text.push_str(&format!(" Prompt: \"{}\".", echo.join(" ")));
    }
    text
}

pub(super) async fn chat(shared: &Arc<Shared>, parsed: Option<Value>) -> Response {
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
    let messages = match v.get("messages") {
        None | Some(Value::Null) => return invalid("Missing required parameter: 'messages'.", Some("messages"), Some("missing_required_parameter")),
        Some(Value::Array(m)) if m.is_empty() => {
            return invalid("Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.", Some("messages"), Some("empty_array"))
        }
        Some(Value::Array(m)) => m.clone(),
        Some(_) => return invalid("Invalid type for 'messages': expected an array of objects.", Some("messages"), Some("invalid_type")),
    };
    let number = |key: &str| v.get(key).filter(|x| !x.is_null());
    for key in ["max_tokens", "max_completion_tokens", "n", "seed"] {
        if let Some(x) = number(key) {
            if !x.is_i64() {
                return invalid(
                    &format!(
                        "Invalid type for '{key}': expected an integer, but got {} instead.",
                        type_name(x)
                    ),
                    Some(key),
                    Some("invalid_type"),
                );
            }
        }
    }
    if let Some(t) = number("temperature") {
        match t.as_f64() {
            Some(t) if (0.0..=2.0).contains(&t) => {}
            Some(t) => return invalid(&format!("Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got {t} instead."), Some("temperature"), Some("decimal_above_max_value")),
            None => return invalid(&format!("Invalid type for 'temperature': expected a decimal, but got {} instead.", type_name(t)), Some("temperature"), Some("invalid_type")),
        }
    }
    let Some(spec) = shared.model(model) else {
        return model_not_found(model);
    };
    let ModelKind::Chat { vision, reasoning } = spec.kind else {
        return error_resp(
            404,
            "This is not a chat model and thus not supported in the v1/chat/completions endpoint. Did you mean to use v1/completions?",
            "invalid_request_error",
            Some("model"),
            None,
        );
    };
    if reasoning {
        if number("max_tokens").is_some() {
            return invalid("Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.", Some("max_tokens"), Some("unsupported_parameter"));
        }
        if let Some(t) = number("temperature")
            .and_then(Value::as_f64)
            .filter(|t| *t != 1.0)
        {
            return invalid(
                &format!("Unsupported value: 'temperature' does not support {t} with this model. Only the default (1) value is supported."),
                Some("temperature"),
                Some("unsupported_value"),
            );
        }
    }
    let (prompt, images) = match read_content(&messages, vision) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let limit = number("max_completion_tokens")
        .or(number("max_tokens"))
        .and_then(Value::as_i64)
        .filter(|n| *n > 0)
        .map(|n| n as usize);
    let n = number("n").and_then(Value::as_i64).unwrap_or(1).max(1) as usize;
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = v
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let ticket = match shared.schedule(model).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    // Decoding a large image takes a while: keep it off the threads that serve other requests.
    let descriptions = tokio::task::spawn_blocking(move || {
        images
            .iter()
            .filter_map(|i| describe_image(i))
            .collect::<Vec<_>>()
    })
    .await;
    let Ok(descriptions) = descriptions else {
        return error_resp(500, SERVER_ERROR, "server_error", None, None);
    };
    let text = compose(&descriptions, &prompt);
    let mut pieces: Vec<&str> = text.split_inclusive(' ').collect();
    let mut finish = "stop";
    if let Some(limit) = limit {
        if pieces.len() > limit {
            pieces.truncate(limit);
            finish = "length";
        }
    }
    let usage = json!({
        "prompt_tokens": words(&prompt) + IMAGE_TOKENS * descriptions.len(),
        "completion_tokens": pieces.len() * n,
        "total_tokens": words(&prompt) + IMAGE_TOKENS * descriptions.len() + pieces.len() * n,
        "prompt_tokens_details": { "cached_tokens": 0, "audio_tokens": 0 },
        "completion_tokens_details": { "reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0 },
    });
    let id = shared.next_id("chatcmpl-");
    let created = now_secs();
    if !stream {
        let content: String = pieces.concat();
        let choices: Vec<Value> = (0..n)
            .map(|i| json!({
                "index": i,
                "message": { "role": "assistant", "content": content, "refusal": null, "annotations": [] },
                "logprobs": null,
                "finish_reason": finish,
            }))
            .collect();
        return json_resp(
            200,
            &json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": choices, "usage": usage, "service_tier": "default", "system_fingerprint": FINGERPRINT,
            }),
        );
    }
    let cut = lock(&shared.knobs).cut_streams;
    let chunk = |choices: Value, usage_field: Option<Value>| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "service_tier": "default", "system_fingerprint": FINGERPRINT, "choices": choices,
        });
        if include_usage {
            c["usage"] = usage_field.unwrap_or(Value::Null);
        }
        format!("data: {}\n\n", c)
    };
    let mut events = Vec::new();
    for i in 0..n {
        events.push(chunk(json!([{ "index": i, "delta": { "role": "assistant", "content": "", "refusal": null }, "logprobs": null, "finish_reason": null }]), None));
    }
    for p in &pieces {
        for i in 0..n {
            events.push(chunk(json!([{ "index": i, "delta": { "content": p }, "logprobs": null, "finish_reason": null }]), None));
        }
        if cut {
            break;
        }
    }
    if !cut {
        for i in 0..n {
            events.push(chunk(
                json!([{ "index": i, "delta": {}, "logprobs": null, "finish_reason": finish }]),
                None,
            ));
        }
        if include_usage {
            events.push(chunk(json!([]), Some(usage)));
        }
        events.push("data: [DONE]\n\n".to_string());
    }
    let stream = futures::stream::iter(events.into_iter().map(move |e| {
        // The request stays in flight until its last event is sent.
        let _in_flight = &ticket;
        Ok::<_, std::convert::Infallible>(Bytes::from(e))
    }));
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    r
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a decimal",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
