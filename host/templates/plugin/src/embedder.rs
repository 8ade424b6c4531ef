
/// Text vector length unless the `dimensions` setting says otherwise.
const DEFAULT_TEXT_DIMENSIONS: usize = 64;

fn text_dimensions() -> Result<usize, Error> {
    settings::parse_in("dimensions", DEFAULT_TEXT_DIMENSIONS, 8..=4096)
}

/// The character bigrams of each word, hashed into `dims` buckets: texts that share spelling
/// land close together. `None` when the text has no letters or digits.
pub fn letter_bigrams(text: &str, dims: usize) -> Option<Vector> {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return None;
    }
    let mut v = vec![0.0f32; dims];
    for word in words {
        // Spaces around the word make its first and last letters bigrams of their own.
        let chars: Vec<char> = std::iter::once(' ')
            .chain(word.chars())
            .chain(std::iter::once(' '))
            .collect();
        for pair in chars.windows(2) {
            // FNV-1a: stable across runs and machines, so the vectors are too.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for c in pair {
                h = (h ^ u64::from(u32::from(*c))).wrapping_mul(0x0100_0000_01b3);
            }
            v[(h % dims as u64) as usize] += 1.0;
        }
    }
    Some(v)
}

impl Embedder for {{Type}} {
    fn text_model(&mut self) -> Result<ModelInfo, Error> {
        let dims = text_dimensions()?;
        // The space id changes with anything that changes the numbers: here, the dimensions.
        Ok(ModelInfo::new("letter-bigrams-v1", format!("{{name}}/letter-bigrams@v1:{dims}"))
            .with_dimensions(dims as u32))
    }

    fn embed_text(&mut self, text: &str) -> Result<Vector, Error> {
        letter_bigrams(text, text_dimensions()?)
            .ok_or_else(|| Error::bad_input("the text has no letters or digits to embed"))
    }
}

#[cfg(test)]
mod embedder_tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (norm(a) * norm(b))
    }

    #[test]
    fn similar_spellings_land_closer_than_unrelated_texts() {
        let cat = letter_bigrams("a cat sat on the mat", 64).unwrap();
        let cats = letter_bigrams("the cats sat on a mat", 64).unwrap();
        let other = letter_bigrams("quantum chromodynamics", 64).unwrap();
        assert!(cosine(&cat, &cats) > cosine(&cat, &other) + 0.2);
    }

    #[test]
    fn text_without_letters_is_bad_input() {
        let mut plugin = {{Type}};
        assert!(matches!(plugin.embed_text("?!"), Err(Error::BadInput(_))));
        assert_eq!(plugin.embed_text("hello").unwrap().len(), DEFAULT_TEXT_DIMENSIONS);
    }
}
