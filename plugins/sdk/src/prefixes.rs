//! The task prefixes of well-known asymmetric embedding models, by the name a server (Ollama,
//! an OpenAI-compatible server) gives them. Each entry follows the model's own card.

use crate::{Purpose, TaskPrefixes};

/// The query instruction of mxbai-embed-large, bge (English v1.5) and snowflake-arctic-embed
/// (v1): on queries only, documents go bare.
pub const RETRIEVAL_QUERY_INSTRUCTION: &str =
    "Represent this sentence for searching relevant passages: ";

/// The prefixes the model named `model` was trained with, or none for a model this table does
/// not know (and for symmetric models such as all-minilm). `model` may carry a tag or a
/// namespace (`nomic-embed-text:v1.5`, `library/e5-large-v2`, `nomic-ai/nomic-embed-text-v1.5`,
/// `text-embedding-nomic-embed-text-v1.5` as LM Studio names it); case does not matter.
pub fn known(model: &str) -> TaskPrefixes {
    let name = base_name(model);
    let name = name.as_str();
    let has = |needle: &str| name.contains(needle);
    if has("nomic-embed-text") {
        // nomic-embed-text v1, v1.5 and v2: "requires" these (model card), all four tasks.
        TaskPrefixes::none()
            .with(Purpose::Document, "search_document: ")
            .with(Purpose::Query, "search_query: ")
            .with(Purpose::Classification, "classification: ")
            .with(Purpose::Clustering, "clustering: ")
    } else if has("mxbai-embed-large")
        || is_bge_en(name)
        || (has("snowflake-arctic-embed")
            && !has("arctic-embed2")
            && !has("embed-l-v2")
            && !has("embed-m-v2"))
    {
        TaskPrefixes::none().with(Purpose::Query, RETRIEVAL_QUERY_INSTRUCTION)
    } else if is_e5(name) {
        TaskPrefixes::none()
            .with(Purpose::Document, "passage: ")
            .with(Purpose::Query, "query: ")
    } else {
        TaskPrefixes::none()
    }
}

/// Lowercase, without the tag after `:` and without any namespace before the last `/`.
fn base_name(model: &str) -> String {
    let model = model.trim().to_ascii_lowercase();
    let model = model.rsplit('/').next().unwrap_or(&model).to_string();
    match model.split_once(':') {
        Some((name, _)) => name.to_string(),
        None => model,
    }
}

/// BAAI's English bge v1.5 models (Ollama's `bge-large`, `bge-base-en-v1.5`, ...), whose card
/// gives the query instruction; not bge-m3, which takes none.
fn is_bge_en(name: &str) -> bool {
    let name = name.strip_prefix("baai-").unwrap_or(name);
    name.starts_with("bge-")
        && !name.starts_with("bge-m3")
        && !name.contains("zh")
        && !name.contains("multilingual")
}

/// intfloat's e5 (v1, v2, multilingual): `query: ` / `passage: `. Not the `-instruct`
/// variants, which take an instruction on queries instead.
fn is_e5(name: &str) -> bool {
    let e5 = name.starts_with("e5-") || name.contains("-e5-") || name.ends_with("-e5");
    e5 && !name.contains("instruct") && !name.contains("mistral")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_follows_the_model_cards() {
        for name in [
            "nomic-embed-text",
            "nomic-embed-text:v1.5",
            "nomic-embed-text:latest",
            "nomic-ai/nomic-embed-text-v1.5",
            "text-embedding-nomic-embed-text-v1.5",
        ] {
            let p = known(name);
            assert_eq!(
                p.get(Purpose::Document),
                Some("search_document: "),
                "{name}"
            );
            assert_eq!(p.get(Purpose::Query), Some("search_query: "), "{name}");
        }
        for name in [
            "mxbai-embed-large",
            "mxbai-embed-large:335m",
            "snowflake-arctic-embed",
            "snowflake-arctic-embed:137m",
            "bge-large",
            "bge-base-en-v1.5",
        ] {
            let p = known(name);
            assert_eq!(
                p.get(Purpose::Query),
                Some(RETRIEVAL_QUERY_INSTRUCTION),
                "{name}"
            );
            assert_eq!(p.get(Purpose::Document), None, "{name}");
        }
        for name in ["e5-large-v2", "jeffh/intfloat-multilingual-e5-large:f16"] {
            let p = known(name);
            assert_eq!(p.get(Purpose::Query), Some("query: "), "{name}");
            assert_eq!(p.get(Purpose::Document), Some("passage: "), "{name}");
        }
        // Pinned: these tags are part of space ids stored in users' collections; changing the
        // table or the hash re-embeds every collection.
        assert_eq!(
            known("nomic-embed-text").space_tag().as_deref(),
            Some("tp09b78f89")
        );
        assert_eq!(
            known("mxbai-embed-large").space_tag().as_deref(),
            Some("tpdb383b17")
        );
        assert_eq!(
            known("e5-large-v2").space_tag().as_deref(),
            Some("tp4d36b7d4")
        );
        for name in [
            "all-minilm",
            "all-minilm:l6-v2",
            "bge-m3",
            "snowflake-arctic-embed2",
            "text-embedding-3-small",
            "e5-mistral-7b-instruct",
        ] {
            assert!(known(name).is_empty(), "{name}");
        }
    }
}
