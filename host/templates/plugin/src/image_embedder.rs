
/// Bins per colour channel of the histogram: 4 × 4 × 4 = 64 dimensions.
const BINS: usize = 4;

/// A colour histogram: every pixel counts in one of 4 × 4 × 4 RGB bins. Pictures with the same
/// colours land close together; it knows nothing of shapes.
pub fn colour_histogram(image: &Image) -> Result<Vector, Error> {
    let rgb = image.decode()?.to_rgb8();
    let mut v = vec![0.0f32; BINS * BINS * BINS];
    for pixel in rgb.pixels() {
        let [r, g, b] = pixel.0.map(|c| usize::from(c) * BINS / 256);
        v[(r * BINS + g) * BINS + b] += 1.0;
    }
    Ok(v)
}

impl ImageEmbedder for {{Type}} {
    fn image_model(&mut self) -> Result<ModelInfo, Error> {
        let dims = BINS * BINS * BINS;
        Ok(ModelInfo::new("rgb-histogram-v1", format!("{{name}}/rgb-histogram@v1:{dims}"))
            .with_dimensions(dims as u32))
    }

    fn embed_image(&mut self, image: &Image) -> Result<Vector, Error> {
        colour_histogram(image)
    }
}

#[cfg(test)]
mod image_embedder_tests {
    use super::*;

    #[test]
    fn every_pixel_counts_in_its_colour_bin() {
        let v = colour_histogram(&png(8, 4, [250, 10, 10])).unwrap();
        assert_eq!(v.len(), 64);
        assert_eq!(v[(3 * BINS) * BINS], 32.0);
        assert_eq!(v.iter().sum::<f32>(), 32.0);
    }

    #[test]
    fn bytes_that_do_not_decode_are_bad_input() {
        let mut broken = png(2, 2, [0, 0, 0]);
        broken.data.truncate(10);
        assert!(matches!({{Type}}.embed_image(&broken), Err(Error::BadInput(_))));
    }
}
