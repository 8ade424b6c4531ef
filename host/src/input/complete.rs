//! Whether an encoded image reaches its own end. Decoders are no help here: the JPEG decoder
//! fills missing data with grey and the GIF decoder stops after the first frame, so each
//! format's structure is walked far enough to see where its data ends. Bytes after that end
//! are fine (some tools append them); an end before it is a truncated file.

use image::ImageFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Completeness {
    /// The data reaches the format's end marker (or its declared size).
    Complete,
    /// The file ends first.
    Truncated,
    /// The structure is not what the walk expects: the decoder will judge it.
    Unknown,
}
use Completeness::*;

pub(super) fn check(format: ImageFormat, bytes: &[u8]) -> Completeness {
    match format {
        ImageFormat::Jpeg => jpeg(bytes),
        ImageFormat::Png => png(bytes),
        ImageFormat::Gif => gif(bytes),
        ImageFormat::WebP => webp(bytes),
        ImageFormat::Bmp => bmp(bytes),
        _ => Unknown,
    }
}

fn be16(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Segments from SOI to EOI; after each start-of-scan, the entropy-coded data runs to the
/// next marker that is not a stuffed 0xFF00 or a restart marker. Without EOI the scan
/// data may have stopped anywhere.
fn jpeg(b: &[u8]) -> Completeness {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return Unknown;
    }
    let mut pos = 2;
    loop {
        if pos >= b.len() {
            return Truncated;
        }
        if b[pos] != 0xFF {
            return Unknown;
        }
        // Any number of 0xFF fill bytes may precede a marker.
        while pos < b.len() && b[pos] == 0xFF {
            pos += 1;
        }
        let Some(&marker) = b.get(pos) else {
            return Truncated;
        };
        pos += 1;
        match marker {
            0xD9 => return Complete,
            0x01 | 0xD0..=0xD7 => continue,
            0x00 => return Unknown,
            _ => {}
        }
        let Some(len) = be16(b, pos) else {
            return Truncated;
        };
        if len < 2 {
            return Unknown;
        }
        pos += len;
        if pos > b.len() {
            return Truncated;
        }
        if marker == 0xDA {
            // Entropy-coded data: find the marker that ends it.
            loop {
                match b[pos..].iter().position(|&x| x == 0xFF) {
                    None => return Truncated,
                    Some(i) => pos += i,
                }
                match b.get(pos + 1) {
                    None => return Truncated,
                    Some(0x00) | Some(0xD0..=0xD7) => pos += 2,
                    // Fill bytes before the marker: the outer loop skips them.
                    Some(0xFF) => break,
                    Some(_) => break,
                }
            }
        }
    }
}

/// Chunks (length, type, data, CRC) from the signature to IEND.
fn png(b: &[u8]) -> Completeness {
    if !b.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Unknown;
    }
    let mut pos = 8;
    loop {
        let Some(len) = b.get(pos..pos + 4) else {
            return Truncated;
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let Some(kind) = b.get(pos + 4..pos + 8) else {
            return Truncated;
        };
        let end = pos.saturating_add(12).saturating_add(len);
        if end > b.len() {
            return Truncated;
        }
        if kind == b"IEND" {
            return Complete;
        }
        pos = end;
    }
}

/// Blocks from the screen descriptor to the trailer. A file that stops cleanly between
/// blocks after a whole first frame has all the data imbed uses, so only an end inside a
/// block, or before the first frame is whole, counts as truncated.
fn gif(b: &[u8]) -> Completeness {
    if !(b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a")) {
        return Unknown;
    }
    let Some(&flags) = b.get(10) else {
        return Truncated;
    };
    let mut pos = 13;
    if flags & 0x80 != 0 {
        pos += 3 << ((flags & 0x07) + 1);
    }
    let mut frames = 0;
    // Sub-blocks: a size byte and that many bytes, until a size of 0.
    let sub_blocks = |mut pos: usize| -> Option<usize> {
        loop {
            let size = usize::from(*b.get(pos)?);
            pos += 1;
            if size == 0 {
                return Some(pos);
            }
            pos += size;
            if pos > b.len() {
                return None;
            }
        }
    };
    loop {
        let Some(&block) = b.get(pos) else {
            return if frames > 0 { Complete } else { Truncated };
        };
        match block {
            0x3B => return Complete,
            0x21 => match sub_blocks(pos + 2) {
                Some(next) => pos = next,
                None => return Truncated,
            },
            0x2C => {
                let Some(&local) = b.get(pos + 9) else {
                    return Truncated;
                };
                pos += 10;
                if local & 0x80 != 0 {
                    pos += 3 << ((local & 0x07) + 1);
                }
                // The LZW minimum code size, then the image data.
                match sub_blocks(pos + 1) {
                    Some(next) => pos = next,
                    None => return Truncated,
                }
                frames += 1;
            }
            _ => return if frames > 0 { Complete } else { Unknown },
        }
    }
}

/// RIFF says its own size.
fn webp(b: &[u8]) -> Completeness {
    if b.get(0..4) != Some(b"RIFF") || b.get(8..12) != Some(b"WEBP") {
        return Unknown;
    }
    match le32(b, 4) {
        Some(size) if (b.len() as u64) < u64::from(size) + 8 => Truncated,
        Some(_) => Complete,
        None => Truncated,
    }
}

/// Uncompressed bitmaps end where the pixel offset plus rows times stride says; compressed
/// (RLE) ones are left to the decoder, which reports running out of data.
fn bmp(b: &[u8]) -> Completeness {
    if !b.starts_with(b"BM") {
        return Unknown;
    }
    let (Some(offset), Some(header)) = (le32(b, 10), le32(b, 14)) else {
        return Truncated;
    };
    let (width, height, bpp, compression) = if header == 12 {
        let (Some(w), Some(h), Some(bpp)) = (le16(b, 18), le16(b, 20), le16(b, 24)) else {
            return Truncated;
        };
        (i64::from(w), i64::from(h), u64::from(bpp), 0)
    } else {
        let (Some(w), Some(h), Some(bpp), Some(c)) =
            (le32(b, 18), le32(b, 22), le16(b, 28), le32(b, 30))
        else {
            return Truncated;
        };
        (i64::from(w as i32), i64::from(h as i32), u64::from(bpp), c)
    };
    // BI_RGB and BI_BITFIELDS (and ALPHABITFIELDS) store plain rows.
    if !matches!(compression, 0 | 3 | 6) || bpp == 0 {
        return Unknown;
    }
    let stride = (width.unsigned_abs() * bpp).div_ceil(32) * 4;
    let need = u64::from(offset) + stride * height.unsigned_abs();
    if (b.len() as u64) < need {
        Truncated
    } else {
        Complete
    }
}
