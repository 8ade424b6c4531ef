//! Where the tests find real model files.
//!
//! `scripts/setup --test` leaves the verified files of each model the tests need under
//! `<repo>/target/models/<name>/`; a test that needs them fails with a pointer to that command
//! rather than skipping.

use std::path::PathBuf;

use crate::repo_root;

/// The files a MiniLM model directory must hold.
pub const MINILM_FILES: &[&str] = &[
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "sentence_bert_config.json",
];

/// The real all-MiniLM-L6-v2 files (`target/models/all-minilm-l6-v2`).
#[track_caller]
pub fn minilm_dir() -> PathBuf {
    let dir = repo_root().join("target/models/all-minilm-l6-v2");
    let missing: Vec<&str> = MINILM_FILES
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "the all-MiniLM-L6-v2 files {missing:?} are missing from {}: run scripts/setup --test",
        dir.display()
    );
    dir
}
