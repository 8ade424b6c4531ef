//! Validating and decoding an image before any plugin sees it, and downsizing it for plugins
//! that want smaller images.

use std::io::Cursor;
use std::sync::Arc;

use image::{ImageDecoder as _, ImageFormat, ImageReader};
use sha2::{Digest, Sha256};

use super::complete;
use super::InputError;
use super::InputLimits;

/// An image that passed validation: what plugins receive.
#[derive(Debug, Clone)]
pub struct ValidImage {
    /// PNG or JPEG bytes.
    pub data: Arc<[u8]>,
    /// `image/png` or `image/jpeg`.
    pub mime_type: &'static str,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// SHA-256 of the bytes as the caller gave them, hex: the image's identity.
    pub sha256: String,
}

/// Check an encoded image: a known format, within the pixel limits (read from the header before
/// anything is decoded), and decodable to the end. Anything that is not PNG or JPEG is
/// re-encoded to PNG, so plugins only ever see those two. CPU-bound: run it off the async threads.
pub fn validate(
    bytes: Vec<u8>,
    label: &str,
    limits: &InputLimits,
) -> Result<ValidImage, InputError> {
    let Upright {
        format,
        format_name,
        turned,
        image: decoded,
        sha256,
    } = decode_upright(&bytes, label, limits)?;
    let corrupt = |detail: String| InputError::Corrupt {
        label: label.to_string(),
        format: format_name.clone(),
        detail,
    };
    let (data, mime_type): (Arc<[u8]>, _) = match format {
        ImageFormat::Png if !turned => (bytes.into(), "image/png"),
        ImageFormat::Jpeg if !turned => (bytes.into(), "image/jpeg"),
        // A turned JPEG stays a JPEG (quality 95: a photo as PNG would be many times the size).
        // Neither re-encoding carries the EXIF tag, so nothing downstream turns it again.
        ImageFormat::Jpeg => (
            encode_jpeg(&decoded, 95)
                .map_err(|e| corrupt(format!("cannot re-encode the turned image: {e}")))?
                .into(),
            "image/jpeg",
        ),
        _ => {
            let mut out = Vec::new();
            decoded
                .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
                .map_err(|e| corrupt(format!("cannot re-encode as PNG: {e}")))?;
            (out.into(), "image/png")
        }
    };
    Ok(ValidImage {
        data,
        mime_type,
        width: decoded.width(),
        height: decoded.height(),
        sha256,
    })
}

/// A small copy of an image for people to look at (the search page's thumbnails).
#[derive(Debug, Clone)]
pub struct Thumbnail {
    /// JPEG bytes, or PNG when the image has transparency.
    pub data: Vec<u8>,
    /// `image/jpeg` or `image/png`.
    pub mime_type: &'static str,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// SHA-256 of the bytes the thumbnail was made from, hex.
    pub sha256: String,
}

/// Check and decode an encoded image as [`validate`] does (the same limits, EXIF orientation
/// applied), and shrink it so its longer side is at most `max_side` pixels. CPU-bound.
pub fn thumbnail(
    bytes: &[u8],
    label: &str,
    limits: &InputLimits,
    max_side: u32,
) -> Result<Thumbnail, InputError> {
    let upright = decode_upright(bytes, label, limits)?;
    let mut small = upright.image;
    if small.width().max(small.height()) > max_side {
        // `thumbnail` averages areas: fast, and sharp enough for a grid.
        small = small.thumbnail(max_side, max_side);
    }
    let corrupt = |e: image::ImageError| InputError::Corrupt {
        label: label.to_string(),
        format: upright.format_name.clone(),
        detail: format!("cannot encode the thumbnail: {e}"),
    };
    let (data, mime_type) = if small.color().has_alpha() {
        let mut out = Vec::new();
        small
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .map_err(corrupt)?;
        (out, "image/png")
    } else {
        (encode_jpeg(&small, 82).map_err(corrupt)?, "image/jpeg")
    };
    Ok(Thumbnail {
        data,
        mime_type,
        width: small.width(),
        height: small.height(),
        sha256: upright.sha256,
    })
}

/// An image decoded and turned upright, with what [`validate`] needs to re-encode it.
struct Upright {
    format: ImageFormat,
    format_name: String,
    turned: bool,
    image: image::DynamicImage,
    sha256: String,
}

/// The checks and the decoding [`validate`] and [`thumbnail`] share.
fn decode_upright(bytes: &[u8], label: &str, limits: &InputLimits) -> Result<Upright, InputError> {
    if bytes.is_empty() {
        return Err(InputError::Empty(label.to_string()));
    }
    if bytes.len() as u64 > limits.max_bytes {
        return Err(InputError::TooManyBytes {
            label: label.to_string(),
            limit: limits.max_bytes,
        });
    }
    let sha256 = hex(&Sha256::digest(bytes));
    let format = image::guess_format(bytes).map_err(|_| InputError::NotAnImage {
        label: label.to_string(),
        detail: sniff(bytes),
    })?;
    let format_name = format!("{format:?}").to_uppercase();
    let corrupt = |detail: String| InputError::Corrupt {
        label: label.to_string(),
        format: format_name.clone(),
        detail,
    };
    // Decoders paper over a missing end (the JPEG decoder paints it grey): look at the file's
    // own structure first, so a cut-off download is named for what it is.
    let truncated = || InputError::Truncated {
        label: label.to_string(),
        format: format_name.clone(),
    };
    if complete::check(format, bytes) == complete::Completeness::Truncated {
        return Err(truncated());
    }

    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| match e {
            image::ImageError::Unsupported(_) => InputError::NotAnImage {
                label: label.to_string(),
                detail: format!("{format_name} is not supported"),
            },
            other if ends_early(&other) => truncated(),
            other => corrupt(other.to_string()),
        })?;
    if width == 0 || height == 0 {
        return Err(corrupt(format!("the header says {width}x{height} pixels")));
    }
    if width > limits.max_side || height > limits.max_side {
        return Err(InputError::TooLarge {
            label: label.to_string(),
            width,
            height,
            limit: format!("{} pixels per side", limits.max_side),
            key: "max_side",
        });
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(InputError::TooLarge {
            label: label.to_string(),
            width,
            height,
            limit: format!("{} pixels", limits.max_pixels),
            key: "max_pixels",
        });
    }

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut decode_limits = image::Limits::default();
    decode_limits.max_image_width = Some(limits.max_side);
    decode_limits.max_image_height = Some(limits.max_side);
    // RGBA16 is the widest layout the decoders produce.
    decode_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(decode_limits);
    let decode_error = |e: image::ImageError| {
        if ends_early(&e) {
            truncated()
        } else {
            corrupt(e.to_string())
        }
    };
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    // Cameras store most photos sideways and record the turn in EXIF; every plugin and the
    // hash signature must see the picture upright, so it is turned here, once. A tag that
    // cannot be read is no reason to refuse the pixels: the image is then taken as stored.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut decoded = image::DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    let turned = orientation != image::metadata::Orientation::NoTransforms;
    if turned {
        decoded.apply_orientation(orientation);
    }
    Ok(Upright {
        format,
        format_name,
        turned,
        image: decoded,
        sha256,
    })
}

/// JPEG holds grey or RGB only: anything else is converted to RGB first.
fn encode_jpeg(image: &image::DynamicImage, quality: u8) -> image::ImageResult<Vec<u8>> {
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    match image {
        image::DynamicImage::ImageLuma8(gray) => gray.write_with_encoder(encoder)?,
        other => other.to_rgb8().write_with_encoder(encoder)?,
    }
    Ok(out)
}

/// Whether a decoder failed because the data ran out (rather than because it is wrong).
fn ends_early(e: &image::ImageError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::UnexpectedEof {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// A copy of `image` whose longer side is at most `max_side` pixels (aspect kept), re-encoded in
/// its own format; the image itself when it is already small enough. CPU-bound.
pub fn downsize(image: &ValidImage, max_side: u32) -> Result<ValidImage, InputError> {
    if image.width.max(image.height) <= max_side {
        return Ok(image.clone());
    }
    let corrupt = |detail: String| InputError::Corrupt {
        label: image.sha256.clone(),
        format: image.mime_type.to_string(),
        detail,
    };
    let decoded = image::load_from_memory(&image.data).map_err(|e| corrupt(e.to_string()))?;
    // Triangle filtering is a good speed/quality balance for large reductions.
    let small = decoded.resize(max_side, max_side, image::imageops::FilterType::Triangle);
    let mut out = Vec::new();
    let format = if image.mime_type == "image/jpeg" {
        ImageFormat::Jpeg
    } else {
        ImageFormat::Png
    };
    let written =
        match format {
            ImageFormat::Jpeg => small.to_rgb8().write_with_encoder(
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90),
            ),
            _ => small.write_to(&mut Cursor::new(&mut out), ImageFormat::Png),
        };
    written.map_err(|e| corrupt(format!("cannot re-encode the downsized image: {e}")))?;
    Ok(ValidImage {
        data: out.into(),
        mime_type: image.mime_type,
        width: small.width(),
        height: small.height(),
        // The identity stays the original's: a downsized copy is the same input.
        sha256: image.sha256.clone(),
    })
}

fn sniff(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(512)];
    let text = String::from_utf8_lossy(head).to_lowercase();
    if text.trim_start().starts_with("<!doctype html") || text.contains("<html") {
        "it looks like an HTML page".into()
    } else if head
        .iter()
        .all(|b| b.is_ascii() && (!b.is_ascii_control() || b.is_ascii_whitespace()))
    {
        "it looks like text".into()
    } else {
        format!("{} bytes of unknown data", bytes.len())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn a_png_passes_unchanged() {
        let bytes = png(20, 10);
        let v = validate(bytes.clone(), "a.png", &InputLimits::default()).unwrap();
        assert_eq!((v.width, v.height, v.mime_type), (20, 10, "image/png"));
        assert_eq!(&*v.data, &bytes[..]);
    }

    #[test]
    fn other_formats_are_reencoded_as_png() {
        let img = image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3]));
        let mut bmp = Vec::new();
        img.write_to(&mut Cursor::new(&mut bmp), ImageFormat::Bmp)
            .unwrap();
        let v = validate(bmp, "a.bmp", &InputLimits::default()).unwrap();
        assert_eq!(v.mime_type, "image/png");
        assert_eq!(image::guess_format(&v.data).unwrap(), ImageFormat::Png);
    }

    #[test]
    fn truncated_empty_and_text_inputs_are_clear_errors() {
        let mut bytes = png(64, 64);
        bytes.truncate(bytes.len() / 2);
        let e = validate(bytes, "t.png", &InputLimits::default()).unwrap_err();
        assert!(matches!(e, InputError::Truncated { .. }), "{e}");
        assert!(matches!(
            validate(vec![], "e", &InputLimits::default()),
            Err(InputError::Empty(_))
        ));
        let e = validate(
            b"<html><body>404</body></html>".to_vec(),
            "u",
            &InputLimits::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("HTML page"), "{e}");
    }

    #[test]
    fn downsizing_keeps_aspect_and_format() {
        let v = validate(png(400, 100), "w.png", &InputLimits::default()).unwrap();
        let d = downsize(&v, 200).unwrap();
        assert_eq!((d.width, d.height, d.mime_type), (200, 50, "image/png"));
        assert_eq!(image::load_from_memory(&d.data).unwrap().width(), 200);
        assert!(std::ptr::eq(
            downsize(&v, 400).unwrap().data.as_ptr(),
            v.data.as_ptr()
        ));
    }

    #[test]
    fn a_thumbnail_is_small_upright_and_names_its_source() {
        let bytes = png(400, 100);
        let t = thumbnail(&bytes, "w.png", &InputLimits::default(), 200).unwrap();
        assert_eq!((t.width, t.height, t.mime_type), (200, 50, "image/jpeg"));
        assert_eq!(t.sha256, hex(&Sha256::digest(&bytes)));
        let seen = image::load_from_memory(&t.data).unwrap();
        assert_eq!((seen.width(), seen.height()), (200, 50));
        let small = thumbnail(&png(20, 10), "s.png", &InputLimits::default(), 200).unwrap();
        assert_eq!((small.width, small.height), (20, 10), "never enlarged");
        let e = thumbnail(b"hello", "t.txt", &InputLimits::default(), 200).unwrap_err();
        assert!(matches!(e, InputError::NotAnImage { .. }), "{e}");
    }

    #[test]
    fn pixel_limits_are_checked_before_decoding() {
        let limits = InputLimits {
            max_pixels: 100,
            ..InputLimits::default()
        };
        let e = validate(png(20, 10), "big.png", &limits).unwrap_err();
        assert!(
            e.to_string()
                .contains("20x10 pixels, over the limit of 100 pixels"),
            "{e}"
        );
    }

    fn encoded(format: ImageFormat) -> Vec<u8> {
        let img = image::RgbImage::from_fn(48, 40, |x, y| {
            image::Rgb([(x * 5) as u8, (y * 6) as u8, ((x ^ y) * 3) as u8])
        });
        let mut out = Vec::new();
        match format {
            ImageFormat::Jpeg => img
                .write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
                    &mut out, 90,
                ))
                .unwrap(),
            other => img.write_to(&mut Cursor::new(&mut out), other).unwrap(),
        }
        out
    }

    #[test]
    fn a_file_cut_short_is_truncated_in_every_format_and_trailing_bytes_are_fine() {
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Gif,
            ImageFormat::WebP,
            ImageFormat::Bmp,
        ] {
            let whole = encoded(format);
            let limits = InputLimits::default();
            let mut with_tail = whole.clone();
            with_tail.extend_from_slice(b"\0\0trailing bytes after the image");
            for (what, bytes) in [("whole", whole.clone()), ("with a tail", with_tail)] {
                let v = validate(bytes, "ok", &limits);
                assert!(v.is_ok(), "{format:?} {what}: {:?}", v.err());
            }
            // A GIF without its one-byte trailer still holds every frame whole.
            let last = if format == ImageFormat::Gif { 2 } else { 1 };
            for cut in [whole.len() / 2, whole.len() - 2, whole.len() - last, 30] {
                let e = validate(whole[..cut].to_vec(), "cut", &limits).unwrap_err();
                assert!(
                    e.to_string()
                        .contains("is truncated: the file ends before the image data does"),
                    "{format:?} cut at {cut} of {}: {e}",
                    whole.len()
                );
            }
        }
    }

    /// A minimal big-endian TIFF block holding one Orientation entry: what an eXIf chunk holds.
    fn exif_orientation(o: u16) -> Vec<u8> {
        let mut t = b"MM\0\x2a\0\0\0\x08\0\x01".to_vec();
        t.extend_from_slice(&0x0112u16.to_be_bytes());
        t.extend_from_slice(&3u16.to_be_bytes());
        t.extend_from_slice(&1u32.to_be_bytes());
        t.extend_from_slice(&o.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        t
    }

    fn png_with_exif(png: &[u8], exif: &[u8]) -> Vec<u8> {
        // After the signature and IHDR (8 + 25 bytes).
        let mut out = png[..33].to_vec();
        out.extend_from_slice(&(exif.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(b"eXIf");
        out.extend_from_slice(exif);
        let mut crc = 0xffff_ffffu32;
        for &b in &out[start..] {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        out.extend_from_slice(&(!crc).to_be_bytes());
        out.extend_from_slice(&png[33..]);
        out
    }

    #[test]
    fn a_sideways_png_reaches_plugins_upright() {
        // Stored turned 90 degrees anticlockwise; orientation 6 says "turn it clockwise".
        let upright =
            image::RgbImage::from_fn(30, 20, |x, y| image::Rgb([x as u8 * 8, y as u8 * 12, 9]));
        let stored = image::DynamicImage::ImageRgb8(upright.clone()).rotate270();
        let mut png = Vec::new();
        stored
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        let tagged = png_with_exif(&png, &exif_orientation(6));
        let v = validate(tagged, "sideways.png", &InputLimits::default()).unwrap();
        assert_eq!((v.width, v.height, v.mime_type), (30, 20, "image/png"));
        let seen = image::load_from_memory(&v.data).unwrap().to_rgb8();
        assert_eq!(seen, upright);
    }
}
