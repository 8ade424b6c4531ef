
/// Colour names and the colour each stands for.
const COLOURS: [(&str, [u8; 3]); 9] = [
    ("black", [0, 0, 0]),
    ("white", [255, 255, 255]),
    ("grey", [128, 128, 128]),
    ("red", [200, 30, 30]),
    ("green", [40, 160, 60]),
    ("blue", [30, 70, 200]),
    ("yellow", [230, 210, 40]),
    ("orange", [240, 140, 20]),
    ("purple", [130, 50, 160]),
];

/// A sentence about the image from its pixels: shape, size, and the named colour nearest to
/// its mean colour.
pub fn describe_pixels(image: &Image) -> Result<String, Error> {
    let rgb = image.decode()?.to_rgb8();
    let (w, h) = rgb.dimensions();
    let count = (u64::from(w) * u64::from(h)).max(1);
    let mut sum = [0u64; 3];
    for pixel in rgb.pixels() {
        for (s, c) in sum.iter_mut().zip(pixel.0) {
            *s += u64::from(c);
        }
    }
    let mean = sum.map(|s| (s / count) as i64);
    let colour = COLOURS
        .iter()
        .min_by_key(|(_, c)| (0..3).map(|i| (mean[i] - i64::from(c[i])).pow(2)).sum::<i64>())
        .map_or("grey", |(name, _)| *name);
    let shape = if u64::from(w) * 5 > u64::from(h) * 6 {
        "landscape"
    } else if u64::from(h) * 5 > u64::from(w) * 6 {
        "portrait"
    } else {
        "square"
    };
    let format = match image.format()? {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
    };
    Ok(format!("a {shape} {format} picture of {w} by {h} pixels, mostly {colour}"))
}

impl Describer for {{Type}} {
    fn describe(&mut self, image: Image, _prompt: Option<String>) -> Result<Description, Error> {
        // This describer reads pixels and cannot follow a prompt; a vision model would get it.
        Ok(Description::new(describe_pixels(&image)?, "mean-colour-v1"))
    }

    /// What decides a description besides the image: only the method here. A model-backed
    /// describer lists its model (and weights' digest), prompt and sampling options, so the
    /// host's description cache is reused exactly when a description would come out the same.
    fn cache_identity(&mut self) -> Result<Vec<(String, String)>, Error> {
        Ok(vec![("method".into(), "mean-colour-v1".into())])
    }
}

#[cfg(test)]
mod describer_tests {
    use super::*;

    #[test]
    fn the_description_names_shape_size_and_colour() {
        let d = {{Type}}.describe(png(40, 20, [20, 60, 210]), None).unwrap();
        assert_eq!(d.text, "a landscape PNG picture of 40 by 20 pixels, mostly blue");
    }
}
