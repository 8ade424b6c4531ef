//! OpenAI-compatible `POST /v1/embeddings`.

use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};

use super::errors::{parse_body, Api, Failure};
use super::items::{all_or_first_error, embed_items, image_source, input_type, Item};
use super::state::AppState;
use crate::chain::ImageRequest;
use crate::types::{Provenance, Purpose, SpaceId};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use serde_json::Value;

pub(super) async fn openai_embeddings(State(state): State<AppState>, body: Bytes) -> Response {
    openai(&state, body)
        .await
        .unwrap_or_else(|f| f.respond(Api::OpenAi))
}

/// `POST /v1/embeddings` as OpenAI's clients send it. Unknown fields (`user`, ...) are
/// accepted and ignored, as OpenAI-compatible servers do.
#[derive(Debug, Deserialize)]
pub(super) struct OpenAiRequest {
    input: Input,
    /// A space id here pins the space; anything else (`"imbed"`, a model name) is a label.
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: EncodingFormat,
    /// `query` or `document` (Cohere's and Voyage's field): OpenAI's own API has no such field,
    /// so without it the texts are embedded exactly as sent.
    #[serde(default)]
    input_type: Option<Value>,
}

/// `input`: one text, or a list of texts and images. Token arrays are recognised only to be
/// refused with a clear message.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Input {
    Single(String),
    Batch(Vec<InputItem>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum InputItem {
    Text(String),
    Image(ImageItem),
    Token(serde::de::IgnoredAny),
}

/// `{"image": url-or-base64, "text": optional description}`.
#[derive(Debug, Deserialize)]
struct ImageItem {
    image: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

#[derive(Serialize)]
struct OpenAiResponse<'a> {
    object: &'static str,
    data: Vec<EmbeddingData<'a>>,
    model: &'a str,
    usage: Usage,
}

#[derive(Serialize)]
struct EmbeddingData<'a> {
    object: &'static str,
    index: usize,
    embedding: EmbeddingValue<'a>,
    imbed: &'a Provenance,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingValue<'a> {
    Float(&'a [f32]),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u32,
    total_tokens: u32,
}

impl OpenAiRequest {
    /// The items to embed, or why the input cannot be embedded.
    fn items(self) -> Result<Vec<Item>, Failure> {
        match self.input {
            Input::Single(text) => Ok(vec![Item::Text(text)]),
            Input::Batch(list) if list.is_empty() => Err(Failure::bad("`input` must not be empty")),
            Input::Batch(list) => list
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    InputItem::Text(text) => Ok(Item::Text(text)),
                    InputItem::Image(ImageItem { image, text }) => {
                        let mut r = ImageRequest::new(image_source(&image));
                        r.description = text;
                        Ok(Item::Image(r))
                    }
                    InputItem::Token(_) => Err(Failure::bad(format!(
                        "input[{i}] must be a string or an {{\"image\": ...}} object (a URL or base64); token arrays are not supported: send the text itself as a string"
                    ))),
                })
                .collect(),
        }
    }
}

pub(super) async fn openai(state: &AppState, body: Bytes) -> Result<Response, Failure> {
    let req: OpenAiRequest = parse_body(
        &body,
        "an OpenAI embeddings request (`input`: a string, or a list of strings and {\"image\": ...} objects)",
    )?;
    let base64_out = req.encoding_format == EncodingFormat::Base64;
    let requested_model = req.model.clone().unwrap_or_default();
    let requested_space = SpaceId::new(requested_model.as_str());
    let purpose = input_type(req.input_type.as_ref(), Purpose::None)?;
    let items = req.items()?;
    let results = embed_items(state, items, purpose).await;
    let embeddings = all_or_first_error(results).map_err(|(i, mut f)| {
        f.message = format!("input[{i}]: {}", f.message);
        f
    })?;
    // A space id as `model` pins the space: answers from any other space are refused, never mixed.
    if requested_model.contains('/') {
        if let Some((i, e)) = embeddings
            .iter()
            .enumerate()
            .find(|(_, e)| !e.provenance.space.meets(&requested_space))
        {
            return Err(Failure {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "input[{i}] could only be embedded in space {:?}, not the requested {requested_model:?}",
                    e.provenance.space
                ),
                attempts: e.provenance.attempts.clone(),
            });
        }
    }
    let data = embeddings
        .iter()
        .enumerate()
        .map(|(index, e)| EmbeddingData {
            object: "embedding",
            index,
            embedding: if base64_out {
                let bytes: Vec<u8> = e.vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                EmbeddingValue::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingValue::Float(&e.vector)
            },
            imbed: &e.provenance,
        })
        .collect();
    let model = embeddings
        .first()
        .map(|e| e.provenance.space.as_str())
        .unwrap_or_default();
    Ok(axum::Json(OpenAiResponse {
        object: "list",
        data,
        model,
        usage: Usage {
            prompt_tokens: 0,
            total_tokens: 0,
        },
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use axum::body::Bytes;
    use axum::http::StatusCode;
    use serde_json::{json, Value};

    use super::{EncodingFormat, OpenAiRequest};
    use crate::input::ImageSource;
    use crate::server::errors::{parse_body, Failure};
    use crate::server::items::Item;

    fn parse(v: Value) -> Result<OpenAiRequest, Failure> {
        parse_body(&Bytes::from(v.to_string()), "an OpenAI embeddings request")
    }

    #[test]
    fn typed_request_reads_texts_and_images_and_refuses_tokens() {
        let req = parse(json!({
            "model": "imbed",
            "user": "someone",
            "input": ["a text", { "image": "https://example.com/cat.png", "text": "a cat" }],
        }))
        .unwrap();
        assert_eq!(req.encoding_format, EncodingFormat::Float);
        let items = req.items().unwrap();
        assert!(matches!(&items[0], Item::Text(t) if t == "a text"));
        assert!(matches!(&items[1], Item::Image(r)
            if r.description.as_deref() == Some("a cat")
                && r.source == ImageSource::Url("https://example.com/cat.png".into())));

        let single = parse(json!({ "input": "one", "encoding_format": "base64" })).unwrap();
        assert_eq!(single.encoding_format, EncodingFormat::Base64);
        assert_eq!(single.items().unwrap().len(), 1);

        let tokens = parse(json!({ "input": [1, 2, 3] })).unwrap().items();
        let f = tokens.err().unwrap();
        assert_eq!(f.status, StatusCode::BAD_REQUEST);
        assert!(
            f.message.contains("token arrays are not supported"),
            "{}",
            f.message
        );

        let empty = parse(json!({ "input": [] }))
            .unwrap()
            .items()
            .err()
            .unwrap();
        assert!(empty.message.contains("must not be empty"));

        let f = parse(json!({ "input": "x", "encoding_format": "hex" }))
            .err()
            .unwrap();
        assert!(f.message.contains("base64"), "{}", f.message);
        let f = parse(json!({ "model": "imbed" })).err().unwrap();
        assert!(f.message.contains("input"), "{}", f.message);
        let f = parse_body::<OpenAiRequest>(&Bytes::from_static(b"{not json"), "x")
            .err()
            .unwrap();
        assert!(f.message.contains("not valid JSON"), "{}", f.message);
    }
}
