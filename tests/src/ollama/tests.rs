use super::*;

fn bind_err(body: &str) -> String {
    go::bind(body.as_bytes()).unwrap_err()
}

#[test]
fn go_scanner_texts() {
    assert_eq!(bind_err(""), "missing request body");
    assert_eq!(bind_err(" \n\t"), "missing request body");
    assert_eq!(bind_err("{\"model\":"), "unexpected EOF");
    assert_eq!(bind_err("{\"model\":\"x"), "unexpected EOF");
    assert_eq!(
        bind_err("hello"),
        "invalid character 'h' looking for beginning of value"
    );
    assert_eq!(
        bind_err("{model:1}"),
        "invalid character 'm' looking for beginning of object key string"
    );
    assert_eq!(
        bind_err("{\"a\" 1}"),
        "invalid character '1' after object key"
    );
    assert_eq!(
        bind_err("{\"a\":1 \"b\"}"),
        "invalid character '\"' after object key:value pair"
    );
    assert_eq!(
        bind_err("[1 2]"),
        "invalid character '2' after array element"
    );
    assert_eq!(
        bind_err("{\"a\":tru}"),
        "invalid character '}' in literal true (expecting 'e')"
    );
    assert_eq!(
        bind_err("{\"a\":\"\n\"}"),
        "invalid character '\\n' in string literal"
    );
    assert_eq!(
        bind_err("{\"a\":-x}"),
        "invalid character 'x' in numeric literal"
    );
    assert_eq!(
        bind_err("{\"a\":1.}"),
        "invalid character '}' after decimal point in numeric literal"
    );
    assert_eq!(
        bind_err("{\"a\":'x'}"),
        "invalid character '\\'' looking for beginning of value"
    );
    // Go's decoder reads one value and ignores what follows.
    assert_eq!(go::bind(b"{\"a\":1} trailing").unwrap(), json!({ "a": 1 }));
    assert_eq!(go::bind(b"12").unwrap(), json!(12));
    let deep = "[".repeat(10_001);
    assert_eq!(bind_err(&deep), "invalid character '[' exceeded max depth");
}

#[test]
fn go_type_errors() {
    let check = |body: Value, fields| go::check(&body, "GenerateRequest", fields);
    assert_eq!(
        check(json!({ "model": "x", "stream": "yes" }), go::GENERATE).unwrap_err(),
        "json: cannot unmarshal string into Go struct field GenerateRequest.stream of type bool"
    );
    assert_eq!(
        check(json!({ "prompt": 5 }), go::GENERATE).unwrap_err(),
        "json: cannot unmarshal number into Go struct field GenerateRequest.prompt of type string"
    );
    assert_eq!(
        check(json!({ "images": "QQ==" }), go::GENERATE).unwrap_err(),
        "json: cannot unmarshal string into Go struct field GenerateRequest.images of type []api.ImageData"
    );
    assert_eq!(
        check(json!({ "keep_alive": "5x" }), go::GENERATE).unwrap_err(),
        "time: unknown unit \"x\" in duration \"5x\""
    );
    assert_eq!(
        check(json!({ "keep_alive": true }), go::GENERATE).unwrap_err(),
        "invalid duration"
    );
    assert_eq!(
        go::check(&json!([]), "ChatRequest", go::CHAT).unwrap_err(),
        "json: cannot unmarshal array into Go value of type api.ChatRequest"
    );
    assert_eq!(
        go::check(
            &json!({ "messages": [{ "role": "user", "content": 1 }] }),
            "ChatRequest",
            go::CHAT
        )
        .unwrap_err(),
        "json: cannot unmarshal number into Go struct field Message.messages.content of type string"
    );
    assert_eq!(
        go::check(&json!({ "dimensions": 1.5 }), "EmbedRequest", go::EMBED).unwrap_err(),
        "json: cannot unmarshal number 1.5 into Go struct field EmbedRequest.dimensions of type int"
    );
    // Keys match case-insensitively, as Go's decoder matches fields.
    assert!(check(json!({ "MODEL": "x", "Stream": false }), go::GENERATE).is_ok());
}

#[test]
fn go_base64_offsets() {
    assert_eq!(go::base64(b"QUJD").unwrap(), b"ABC");
    assert_eq!(go::base64(b"QUI=").unwrap(), b"AB");
    assert_eq!(go::base64(b"QQ==").unwrap(), b"A");
    assert_eq!(go::base64(b"QU\r\nJD\n").unwrap(), b"ABC");
    assert_eq!(go::base64(b"").unwrap(), b"");
    assert_eq!(go::base64(b"QQ"), Err(0));
    assert_eq!(go::base64(b"QUJDQQ"), Err(4));
    assert_eq!(go::base64(b"QUJDQUI"), Err(4));
    assert_eq!(go::base64(b"data:image/png;base64,QUJD"), Err(4));
    assert_eq!(go::base64(b"QUJD-_"), Err(4));
    assert_eq!(go::base64(b"QU JD"), Err(2));
    assert_eq!(go::base64(b"QQ=="[..3].as_ref()), Err(3));
    assert_eq!(go::base64(b"QQ==QUJD"), Err(4));
    assert_eq!(go::base64(b"Q==="), Err(1));
}

#[test]
fn go_durations() {
    assert_eq!(go::parse_duration("5m").unwrap(), 300e9);
    assert_eq!(go::parse_duration("1h30m").unwrap(), 5400e9);
    assert_eq!(go::parse_duration("0").unwrap(), 0.0);
    assert_eq!(go::parse_duration("0s").unwrap(), 0.0);
    assert_eq!(go::parse_duration("1.5s").unwrap(), 1.5e9);
    assert_eq!(go::parse_duration("-1s").unwrap(), -1e9);
    assert_eq!(
        go::parse_duration("5").unwrap_err(),
        "time: missing unit in duration \"5\""
    );
    assert_eq!(
        go::parse_duration("abc").unwrap_err(),
        "time: invalid duration \"abc\""
    );
}

#[test]
fn model_names() {
    let llava = canonical("llava");
    assert_eq!(
        llava.as_deref(),
        Some("registry.ollama.ai/library/llava:latest")
    );
    assert_eq!(canonical("llava:latest"), llava);
    assert_eq!(canonical("LLaVA"), llava);
    assert_eq!(canonical("library/llava"), llava);
    assert_eq!(canonical("registry.ollama.ai/library/llava:latest"), llava);
    assert_ne!(canonical("llava:7b"), llava);
    assert_eq!(canonical(""), None);
    assert_eq!(canonical("bad name!"), None);
    assert_eq!(canonical("a/b/c/d"), None);
    assert_eq!(with_tag("llava"), "llava:latest");
    assert_eq!(with_tag("llava:7b"), "llava:7b");
}

#[test]
fn times_format_as_go_does() {
    assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400, 500_000_000), "2000-02-29T00:00:00.5Z");
    assert_eq!(
        rfc3339(1_735_689_599, 123),
        "2024-12-31T23:59:59.000000123Z"
    );
}

#[test]
fn embeddings_share_words() {
    let spec = ModelSpec::embedding("e", 768);
    let a = embed_text(&spec, "a red bicycle leaning on a wall");
    let b = embed_text(&spec, "a red bicycle in the street");
    let c = embed_text(&spec, "quarterly tax report spreadsheet");
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
    assert!((dot(&a, &a) - 1.0).abs() < 1e-5);
    assert!(dot(&a, &b) > dot(&a, &c) + 0.2);
    assert_eq!(embed_text(&spec, "!!!").len(), 768);
    assert!((dot(&embed_text(&spec, "!!!"), &embed_text(&spec, "!!!")) - 1.0).abs() < 1e-5);
}
