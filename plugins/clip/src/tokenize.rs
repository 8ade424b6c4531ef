//! CLIP's byte-level BPE tokeniser, from the model's `tokenizer.json` (the file Hugging Face
//! publishes with every CLIP checkpoint), with truncation at the text tower's context length.

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// A loaded tokenizer that truncates to the model's context (77 for CLIP, including
/// `<|startoftext|>` and `<|endoftext|>`).
pub struct ClipTokenizer {
    inner: Tokenizer,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer").finish_non_exhaustive()
    }
}

impl ClipTokenizer {
    /// Parse a `tokenizer.json`. Padding is turned off (batches are padded by the model code),
    /// truncation set to `max_len` tokens including the special tokens, as transformers does with
    /// `truncation=True, max_length=77`.
    pub fn from_json(json: &str, max_len: usize) -> Result<Self, String> {
        let mut inner: Tokenizer = json
            .parse()
            .map_err(|e| format!("not a tokenizer.json: {e}"))?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| format!("cannot truncate at {max_len} tokens: {e}"))?;
        Ok(ClipTokenizer { inner })
    }

    /// Token ids of one text, with the start and end tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| format!("cannot tokenise the text: {e}"))
    }
}
