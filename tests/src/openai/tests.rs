use super::*;

#[test]
fn keys_are_redacted_as_openai_does() {
    assert_eq!(redact("sk-test-wrong-key"), "sk-**********-key");
    assert_eq!(redact("short"), "*****");
}

#[test]
fn embeddings_share_words_and_shorten_by_dimensions() {
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
    let a = embed_text("m", 1536, "a red bicycle leaning on a wall", None);
    let b = embed_text("m", 1536, "a red bicycle in the street", None);
    let c = embed_text("m", 1536, "quarterly tax report spreadsheet", None);
    assert!((dot(&a, &a) - 1.0).abs() < 1e-5);
    assert!(dot(&a, &b) > dot(&a, &c) + 0.2);
    let short = embed_text("m", 1536, "a red bicycle leaning on a wall", Some(256));
    assert_eq!(short.len(), 256);
    assert!((dot(&short, &short) - 1.0).abs() < 1e-5);
    assert_ne!(
        embed_text("other", 1536, "a red bicycle", None),
        embed_text("m", 1536, "a red bicycle", None)
    );
}

#[test]
fn inputs_take_every_documented_shape() {
    assert_eq!(embed_inputs(&json!("hi")), Some(vec!["hi".to_string()]));
    assert_eq!(embed_inputs(&json!(["a", "b"])).map(|v| v.len()), Some(2));
    assert_eq!(
        embed_inputs(&json!([1, 2, 3])),
        Some(vec!["1 2 3".to_string()])
    );
    assert_eq!(
        embed_inputs(&json!([[1, 2], [3]])).map(|v| v.len()),
        Some(2)
    );
    assert_eq!(embed_inputs(&json!("")), None);
    assert_eq!(embed_inputs(&json!([])), None);
    assert_eq!(embed_inputs(&json!(["a", 1.5])), None);
    assert_eq!(embed_inputs(&json!({ "a": 1 })), None);
}
