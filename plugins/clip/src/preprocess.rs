//! Image preprocessing exactly as Hugging Face's CLIP image processor does it with Pillow
//! (`CLIPImageProcessorPil`, the processor CLIP checkpoints were made with): convert to RGB
//! (transparency composited onto white), resize the shortest side with Pillow's resampling
//! (bicubic by default, antialiased when downscaling), centre crop, rescale by 1/255, normalise
//! with the CLIP mean and standard deviation, channel-first.
//!
//! Pillow's resampling is reimplemented here rather than approximated with `image`'s filters:
//! Pillow resizes horizontally then vertically, rounds each pass to 8 bits, and uses fixed-point
//! coefficients; `image`'s `CatmullRom` has the same kernel but keeps floats between passes and
//! differs by up to a few levels per pixel, which moves embeddings measurably (see the tests).
//! With the same arithmetic the pixels come out bit-identical to the reference.

use image::{DynamicImage, RgbImage};
use serde::Deserialize;

/// The CLIP mean, per RGB channel (OpenAI's, in transformers `OPENAI_CLIP_MEAN`).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// The CLIP standard deviation, per RGB channel (`OPENAI_CLIP_STD`).
// The published constants digit for digit; they round to the same f32 numpy uses.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Pillow's resampling filters that the processor config may name (`resample`, PIL's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// `resample: 1`, truncated sinc, support 3.
    Lanczos,
    /// `resample: 2`, triangle, support 1.
    Bilinear,
    /// `resample: 3`, cubic convolution with a = -0.5, support 2: CLIP's.
    Bicubic,
}

impl Resample {
    fn from_pil(code: u32) -> Option<Self> {
        match code {
            1 => Some(Resample::Lanczos),
            2 => Some(Resample::Bilinear),
            3 => Some(Resample::Bicubic),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Resample::Lanczos => 3.0,
            Resample::Bilinear => 1.0,
            Resample::Bicubic => 2.0,
        }
    }

    /// The kernels of Pillow's `Resample.c`.
    fn weight(self, x: f64) -> f64 {
        match self {
            Resample::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Resample::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Resample::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// How the resize step sizes its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTo {
    /// The shortest side becomes this, the other keeps the aspect ratio (CLIP's 224).
    ShortestEdge(u32),
    /// Exactly this width and height.
    Exact {
        /// Output height.
        height: u32,
        /// Output width.
        width: u32,
    },
}

/// The preprocessing of one model, from its `preprocessor_config.json` or CLIP's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessor {
    /// `None` when `do_resize` is false.
    pub resize: Option<ResizeTo>,
    /// The resampling filter.
    pub resample: Resample,
    /// `(height, width)` of the centre crop; `None` when `do_center_crop` is false.
    pub crop: Option<(u32, u32)>,
    /// Multiplies the 0–255 values; `None` when `do_rescale` is false.
    pub rescale: Option<f64>,
    /// `(mean, std)` per channel; `None` when `do_normalize` is false.
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

impl Preprocessor {
    /// CLIP ViT-B/32's preprocessing at `image_size` (224): shortest edge, bicubic, square crop.
    pub fn clip(image_size: u32) -> Self {
        Preprocessor {
            resize: Some(ResizeTo::ShortestEdge(image_size)),
            resample: Resample::Bicubic,
            crop: Some((image_size, image_size)),
            rescale: Some(1.0 / 255.0),
            normalize: Some((CLIP_MEAN, CLIP_STD)),
        }
    }

    /// Read a `preprocessor_config.json` as transformers writes it; absent fields take CLIP's
    /// defaults for a model whose vision tower sees `image_size` pixels square.
    pub fn from_json(bytes: &[u8], image_size: u32) -> Result<Self, String> {
        let raw: RawPreprocessor =
            serde_json::from_slice(bytes).map_err(|e| format!("bad JSON: {e}"))?;
        let mut p = Preprocessor::clip(image_size);
        if !raw.do_resize.unwrap_or(true) {
            p.resize = None;
        } else if let Some(size) = raw.size {
            p.resize = Some(match size {
                RawSize::Int(n) => ResizeTo::ShortestEdge(n),
                RawSize::Dict {
                    shortest_edge: Some(n),
                    ..
                } => ResizeTo::ShortestEdge(n),
                RawSize::Dict {
                    height: Some(height),
                    width: Some(width),
                    ..
                } => ResizeTo::Exact { height, width },
                RawSize::Dict { .. } => {
                    return Err("`size` needs `shortest_edge`, or `height` and `width`".into())
                }
            });
        }
        if let Some(code) = raw.resample {
            p.resample = Resample::from_pil(code).ok_or_else(|| {
                format!("`resample` {code} is not supported: use 1 (lanczos), 2 (bilinear) or 3 (bicubic)")
            })?;
        }
        if !raw.do_center_crop.unwrap_or(true) {
            p.crop = None;
        } else if let Some(size) = raw.crop_size {
            p.crop = Some(match size {
                RawSize::Int(n) => (n, n),
                RawSize::Dict {
                    height: Some(h),
                    width: Some(w),
                    ..
                } => (h, w),
                RawSize::Dict { .. } => return Err("`crop_size` needs `height` and `width`".into()),
            });
        }
        if !raw.do_rescale.unwrap_or(true) {
            p.rescale = None;
        } else if let Some(f) = raw.rescale_factor {
            p.rescale = Some(f);
        }
        if !raw.do_normalize.unwrap_or(true) {
            p.normalize = None;
        } else {
            let (mut mean, mut std) = (CLIP_MEAN, CLIP_STD);
            if let Some(m) = raw.image_mean {
                mean = three(&m, "image_mean")?;
            }
            if let Some(s) = raw.image_std {
                std = three(&s, "image_std")?;
                if std.contains(&0.0) {
                    return Err("`image_std` has a zero".into());
                }
            }
            p.normalize = Some((mean, std));
        }
        if p.output_size(1000, 1000) != (image_size, image_size) {
            return Err(format!(
                "the processed image would not be {image_size}x{image_size}, the size the vision model takes"
            ));
        }
        Ok(p)
    }

    /// `(height, width)` of the processed image for an input of `width` x `height`.
    pub fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        let (h, w) = self.resized_size(width, height);
        self.crop.unwrap_or((h, w))
    }

    fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        match self.resize {
            None => (height, width),
            Some(ResizeTo::Exact { height, width }) => (height, width),
            // transformers' get_resize_output_image_size(default_to_square=False): the long side
            // is int(size * long / short), truncated.
            Some(ResizeTo::ShortestEdge(size)) => {
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                let new_long = (size as f64 * long as f64 / short as f64) as u32;
                if width <= height {
                    (new_long, size)
                } else {
                    (size, new_long)
                }
            }
        }
    }

    /// The model's input for one image: `3 x H x W` floats, channel-first.
    pub fn pixel_values(&self, image: &DynamicImage) -> Vec<f32> {
        let rgb = to_rgb(image);
        let (h, w) = self.resized_size(rgb.width(), rgb.height());
        let resized = if (w, h) == rgb.dimensions() {
            rgb
        } else {
            resize(&rgb, w, h, self.resample)
        };
        let (out_h, out_w) = self.crop.unwrap_or((h, w));
        // transformers' center_crop: the top-left corner at floor((size - crop) / 2); a crop larger
        // than the image pads it with zeros (black), centred with the extra row/column at the end.
        let top = (h as i64 - out_h as i64).div_euclid(2);
        let left = (w as i64 - out_w as i64).div_euclid(2);
        let (pad_top, pad_left) = (
            ((out_h as i64 - h as i64).max(0) + 1) / 2,
            ((out_w as i64 - w as i64).max(0) + 1) / 2,
        );
        let (top, left) = (top.max(-pad_top), left.max(-pad_left));
        let plane = out_h as usize * out_w as usize;
        let mut out = vec![0f32; 3 * plane];
        for y in 0..out_h as usize {
            let sy = top + y as i64;
            for x in 0..out_w as usize {
                let sx = left + x as i64;
                let px = if (0..h as i64).contains(&sy) && (0..w as i64).contains(&sx) {
                    resized.get_pixel(sx as u32, sy as u32).0
                } else {
                    [0, 0, 0]
                };
                for c in 0..3 {
                    out[c * plane + y * out_w as usize + x] = self.value(px[c], c);
                }
            }
        }
        out
    }

    /// transformers rescales in f64 and casts to f32, then normalises in f32.
    fn value(&self, v: u8, channel: usize) -> f32 {
        let x = match self.rescale {
            Some(f) => (v as f64 * f) as f32,
            None => v as f32,
        };
        match self.normalize {
            Some((mean, std)) => (x - mean[channel]) / std[channel],
            None => x,
        }
    }
}

fn three(v: &[f32], key: &str) -> Result<[f32; 3], String> {
    <[f32; 3]>::try_from(v).map_err(|_| format!("`{key}` needs 3 values, one per RGB channel"))
}

#[derive(Deserialize)]
struct RawPreprocessor {
    do_resize: Option<bool>,
    size: Option<RawSize>,
    resample: Option<u32>,
    do_center_crop: Option<bool>,
    crop_size: Option<RawSize>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Vec<f32>>,
    image_std: Option<Vec<f32>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Int(u32),
    Dict {
        shortest_edge: Option<u32>,
        height: Option<u32>,
        width: Option<u32>,
    },
}

/// RGB as transformers' `convert_to_rgb` makes it: an image with transparency is composited onto
/// opaque white with Pillow's `alpha_composite` arithmetic; grey is replicated to three channels.
pub fn to_rgb(image: &DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    let mut out = RgbImage::new(rgba.width(), rgba.height());
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        o.0 = over_white(p.0);
    }
    out
}

/// Pillow's `ImagingAlphaComposite` (libImaging/AlphaComposite.c) of `src` over opaque white.
fn over_white([r, g, b, a]: [u8; 4]) -> [u8; 3] {
    const PRECISION_BITS: u32 = 7;
    if a == 0 {
        return [255, 255, 255];
    }
    let shift_div_255 = |v: u32| ((v >> 8) + v) >> 8;
    let a = a as u32;
    let blend = 255 * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let ch = |s: u8| {
        let tmp = s as u32 * coef1 + 255 * coef2;
        (shift_div_255(tmp + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8
    };
    [ch(r), ch(g), ch(b)]
}

/// Fixed-point precision of Pillow's 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One pass's coefficients: for each output index, the first input index, the count of inputs,
/// and `ksize` fixed-point weights.
struct Coefficients {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the whole input range.
fn coefficients(in_size: u32, out_size: u32, filter: Resample) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size as usize);
    let mut weights = vec![0i32; out_size as usize * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size as usize {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) cast truncates towards zero, then clamps.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = xmax.saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(count) {
            let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(count) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let fixed = w * (1u32 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if w < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, count));
    }
    Coefficients {
        ksize,
        bounds,
        weights,
    }
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Pillow's `ImagingResample` of an RGB image to `width` x `height`: a horizontal pass over
/// the rows the vertical pass needs, rounded to 8 bits, then a vertical pass.
pub fn resize(src: &RgbImage, width: u32, height: u32, filter: Resample) -> RgbImage {
    let (in_w, in_h) = src.dimensions();
    let horiz = coefficients(in_w, width, filter);
    let vert = coefficients(in_h, height, filter);
    let first_row = vert.bounds[0].0;
    let last_row = vert
        .bounds
        .last()
        .map(|(min, n)| min + n)
        .unwrap_or(first_row);

    let temp;
    let (rows, row_offset, row_width): (&[u8], usize, u32) = if width != in_w {
        let mut t = vec![0u8; (last_row - first_row) * width as usize * 3];
        let input = src.as_raw();
        for (ty, y) in (first_row..last_row).enumerate() {
            let row = &input[y * in_w as usize * 3..(y + 1) * in_w as usize * 3];
            for (xx, &(xmin, count)) in horiz.bounds.iter().enumerate() {
                let k = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + count];
                let mut ss = [1i64 << (PRECISION_BITS - 1); 3];
                for (i, &w) in k.iter().enumerate() {
                    let p = &row[(xmin + i) * 3..(xmin + i) * 3 + 3];
                    for c in 0..3 {
                        ss[c] += p[c] as i64 * w as i64;
                    }
                }
                let o = (ty * width as usize + xx) * 3;
                for c in 0..3 {
                    t[o + c] = clip8(ss[c]);
                }
            }
        }
        temp = t;
        (&temp, first_row, width)
    } else {
        (src.as_raw(), 0, in_w)
    };

    if height == in_h {
        // Only the horizontal pass was needed: its rows are the whole image.
        return RgbImage::from_raw(width, height, rows.to_vec()).expect("buffer of the right size");
    }
    let stride = row_width as usize * 3;
    let mut out = vec![0u8; height as usize * stride];
    for (yy, &(ymin, count)) in vert.bounds.iter().enumerate() {
        let k = &vert.weights[yy * vert.ksize..yy * vert.ksize + count];
        let base = ymin - row_offset;
        for xx in 0..row_width as usize {
            let mut ss = [1i64 << (PRECISION_BITS - 1); 3];
            for (i, &w) in k.iter().enumerate() {
                let p = &rows[(base + i) * stride + xx * 3..(base + i) * stride + xx * 3 + 3];
                for c in 0..3 {
                    ss[c] += p[c] as i64 * w as i64;
                }
            }
            for c in 0..3 {
                out[yy * stride + xx * 3 + c] = clip8(ss[c]);
            }
        }
    }
    RgbImage::from_raw(width, height, out).expect("buffer of the right size")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_size_follows_transformers() {
        let p = Preprocessor::clip(224);
        assert_eq!(p.resized_size(320, 240), (224, 298));
        assert_eq!(p.resized_size(150, 400), (597, 224));
        assert_eq!(p.output_size(97, 61), (224, 224));
    }

    #[test]
    fn identity_resize_keeps_pixels() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 7]));
        // Same size on both axes: Pillow's coefficients are exactly one tap of weight 1.
        let coeffs = coefficients(7, 7, Resample::Bicubic);
        assert!(coeffs.bounds.iter().all(|(_, n)| *n >= 1));
        let out = resize(&img, 7, 5, Resample::Bicubic);
        assert_eq!(out, img);
    }

    #[test]
    fn transparent_pixels_become_white_and_opaque_stay() {
        assert_eq!(over_white([10, 20, 30, 0]), [255, 255, 255]);
        assert_eq!(over_white([10, 20, 30, 255]), [10, 20, 30]);
        let half = over_white([0, 0, 0, 128]);
        assert!((126..=128).contains(&half[0]), "{half:?}");
    }

    #[test]
    fn config_must_yield_the_model_input_size() {
        let json =
            br#"{"size": {"shortest_edge": 224}, "crop_size": {"height": 256, "width": 256}}"#;
        assert!(Preprocessor::from_json(json, 224)
            .unwrap_err()
            .contains("224x224"));
        let json = br#"{"resample": 0}"#;
        assert!(Preprocessor::from_json(json, 224)
            .unwrap_err()
            .contains("resample"));
        let json = br#"{"size": 224, "crop_size": 224, "resample": 3}"#;
        assert_eq!(
            Preprocessor::from_json(json, 224).unwrap(),
            Preprocessor::clip(224)
        );
    }
}
