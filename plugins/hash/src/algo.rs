//! The hashing algorithms, free of any plugin plumbing so they can be unit-tested natively.

use image::{imageops::FilterType, DynamicImage};

/// FNV-1a, 64 bit: stable across platforms and releases, unlike `std`'s hasher.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits mix poorly; a final avalanche (from splitmix64) spreads them.
    splitmix(h)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn add_feature(v: &mut [f32], kind: &[u8], feature: &[u8], weight: f32) {
    let h = fnv1a(&[kind, feature]);
    let index = (h % v.len() as u64) as usize;
    let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
    v[index] += sign * weight;
}

fn normalise(v: &mut [f32]) -> bool {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !(norm > 0.0 && norm.is_finite()) {
        return false;
    }
    v.iter_mut().for_each(|x| *x /= norm);
    true
}

/// Feature-hashed text vector, L2-normalised; `None` when the text has no word characters.
pub fn embed_text(text: &str, dims: usize) -> Option<Vec<f32>> {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return None;
    }
    let mut v = vec![0.0f32; dims];
    for word in &words {
        add_feature(&mut v, b"w", word.as_bytes(), 1.0);
        // Trigrams with boundary marks make "cats" close to "cat" and survive typos.
        let marked: Vec<char> = std::iter::once('<')
            .chain(word.chars())
            .chain(std::iter::once('>'))
            .collect();
        let grams = marked.len().saturating_sub(2).max(1);
        let weight = 0.6 / (grams as f32).sqrt();
        for gram in marked.windows(3) {
            let s: String = gram.iter().collect();
            add_feature(&mut v, b"g", s.as_bytes(), weight);
        }
    }
    for pair in words.windows(2) {
        add_feature(
            &mut v,
            b"b",
            format!("{} {}", pair[0], pair[1]).as_bytes(),
            0.5,
        );
    }
    normalise(&mut v).then_some(v)
}

const THUMB: usize = 32;
const DCT_KEEP: usize = 8;
const BINS_PER_CHANNEL: usize = 4;
const FEATURES: usize = DCT_KEEP * DCT_KEEP - 1 + BINS_PER_CHANNEL.pow(3);

/// Perceptual image vector, L2-normalised.
pub fn embed_image(img: &DynamicImage, dims: usize) -> Vec<f32> {
    // Downscale first with the cheap filter, then smooth to the thumbnail: a large photo costs
    // little more than a small one.
    let small = if img.width() > 256 || img.height() > 256 {
        img.thumbnail_exact(256, 256)
    } else {
        img.clone()
    };
    let thumb = small
        .resize_exact(THUMB as u32, THUMB as u32, FilterType::Triangle)
        .to_rgb8();

    let mut luma = [0.0f32; THUMB * THUMB];
    let mut hist = [0.0f32; BINS_PER_CHANNEL * BINS_PER_CHANNEL * BINS_PER_CHANNEL];
    for (i, p) in thumb.pixels().enumerate() {
        let [r, g, b] = p.0;
        luma[i] = (0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b)) / 255.0;
        let q = |c: u8| usize::from(c) * BINS_PER_CHANNEL / 256;
        hist[(q(r) * BINS_PER_CHANNEL + q(g)) * BINS_PER_CHANNEL + q(b)] += 1.0;
    }

    let mut features = Vec::with_capacity(FEATURES);
    let dct = dct2_low(&luma);
    let mut shape: Vec<f32> = dct.into_iter().skip(1).collect(); // drop DC: overall brightness
    normalise(&mut shape);
    features.extend(shape.iter().map(|x| x * 0.8));
    // Centre the histogram so that "both images have some colour" does not count as similarity.
    let total = (THUMB * THUMB) as f32;
    let uniform = 1.0 / hist.len() as f32;
    let mut colour: Vec<f32> = hist.iter().map(|c| c / total - uniform).collect();
    normalise(&mut colour);
    features.extend(colour.iter().map(|x| x * 0.6));

    let mut v = project(&features, dims);
    if !normalise(&mut v) {
        // Only reachable for a degenerate projection; fall back to a fixed unit vector.
        v = vec![0.0; dims];
        v[0] = 1.0;
    }
    v
}

/// The DCT-II coefficients with both frequencies below `DCT_KEEP`, row-major.
fn dct2_low(pixels: &[f32; THUMB * THUMB]) -> Vec<f32> {
    let n = THUMB as f32;
    let basis: Vec<f32> = (0..DCT_KEEP)
        .flat_map(|u| {
            (0..THUMB).map(move |x| {
                (std::f32::consts::PI * (2.0 * x as f32 + 1.0) * u as f32 / (2.0 * n)).cos()
            })
        })
        .collect();
    let mut rows = vec![0.0f32; THUMB * DCT_KEEP]; // [y][u]
    for y in 0..THUMB {
        for u in 0..DCT_KEEP {
            rows[y * DCT_KEEP + u] = (0..THUMB)
                .map(|x| pixels[y * THUMB + x] * basis[u * THUMB + x])
                .sum();
        }
    }
    let mut out = vec![0.0f32; DCT_KEEP * DCT_KEEP];
    for v in 0..DCT_KEEP {
        for u in 0..DCT_KEEP {
            out[v * DCT_KEEP + u] = (0..THUMB)
                .map(|y| rows[y * DCT_KEEP + u] * basis[v * THUMB + y])
                .sum();
        }
    }
    out
}

/// A fixed Gaussian random projection; distances are preserved in expectation
/// (Johnson–Lindenstrauss), and the seed is part of the algorithm version.
fn project(features: &[f32], dims: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; dims];
    for (j, o) in out.iter_mut().enumerate() {
        let mut acc = 0.0f32;
        for (i, f) in features.iter().enumerate() {
            acc += f * gaussian((j * FEATURES + i) as u64);
        }
        *o = acc;
    }
    out
}

fn gaussian(index: u64) -> f32 {
    // Box–Muller on two uniforms drawn from a counter-based generator: no state, any order.
    let a = splitmix(index.wrapping_mul(2).wrapping_add(0x1f2e_3d4c));
    let b = splitmix(index.wrapping_mul(2).wrapping_add(0x1f2e_3d4d));
    let u1 = ((a >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let u2 = (b >> 11) as f64 / (1u64 << 53) as f64;
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn similar_texts_are_closer_than_unrelated_ones() {
        let a = embed_text("a cat sleeping on a laptop", 256).unwrap();
        let b = embed_text("cats sleeping on laptops", 256).unwrap();
        let c = embed_text("stock market report for the third quarter", 256).unwrap();
        assert!(
            cos(&a, &b) > cos(&a, &c) + 0.3,
            "{} vs {}",
            cos(&a, &b),
            cos(&a, &c)
        );
    }

    #[test]
    fn empty_text_has_no_vector() {
        assert!(embed_text("  ?! ", 64).is_none());
    }
}
