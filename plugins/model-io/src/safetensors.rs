//! A streaming safetensors reader: header first, then each tensor into a buffer of its own.
//!
//! Format: an 8-byte little-endian header length `n`, `n` bytes of JSON mapping each tensor name
//! to `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative to the end of the
//! header), then the data. Every claim of the header is checked against the file before any
//! tensor is read, so a truncated or garbled file is reported as such instead of reading past
//! the end or allocating whatever a garbled length says.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use sha2::{Digest, Sha256};

/// Real headers are a few hundred bytes per tensor; anything past this is garbage, and reading
/// it would allocate whatever a garbled length field says.
const MAX_HEADER_BYTES: u64 = 100 << 20;

pub(crate) enum LoadError {
    Io(std::io::Error),
    Corrupt(String),
}

impl From<std::io::Error> for LoadError {
    fn from(e: std::io::Error) -> Self {
        // The header was checked against the file's size, so running out of bytes means the file
        // changed under us or lied about its length: corrupt, not an I/O problem.
        if e.kind() == ErrorKind::UnexpectedEof {
            LoadError::Corrupt("the file ends before its last tensor".into())
        } else {
            LoadError::Io(e)
        }
    }
}

fn corrupt(reason: impl Into<String>) -> LoadError {
    LoadError::Corrupt(reason.into())
}

/// The stored element types this reader understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    F64,
    F32,
    F16,
    BF16,
    I64,
    U32,
    U8,
}

impl Stored {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "F64" => Stored::F64,
            "F32" => Stored::F32,
            "F16" => Stored::F16,
            "BF16" => Stored::BF16,
            "I64" => Stored::I64,
            "U32" => Stored::U32,
            "U8" => Stored::U8,
            _ => return None,
        })
    }

    fn is_float(self) -> bool {
        matches!(self, Stored::F64 | Stored::F32 | Stored::F16 | Stored::BF16)
    }
}

/// Byte sizes of every dtype the format defines, so that tensors of dtypes we do not load can
/// still be checked and skipped.
fn element_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

struct Entry {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    begin: u64,
    end: u64,
}

/// Parse and check the header against the size of the data that follows it.
fn parse_header(header: &[u8], data_len: u64) -> Result<Vec<Entry>, LoadError> {
    let value: serde_json::Value = serde_json::from_slice(header)
        .map_err(|e| corrupt(format!("the header is not valid JSON: {e}")))?;
    let map = value
        .as_object()
        .ok_or_else(|| corrupt("the header is not a JSON object"))?;
    let mut entries = Vec::with_capacity(map.len());
    for (name, info) in map {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| corrupt(format!("tensor {name:?} in the header: {what}"));
        let dtype = info
            .get("dtype")
            .and_then(|d| d.as_str())
            .ok_or_else(|| bad("no dtype"))?
            .to_string();
        let size = element_size(&dtype).ok_or_else(|| bad(&format!("unknown dtype {dtype}")))?;
        let shape = info
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| bad("the shape is not a list of sizes"))?;
        let offsets = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .filter(|o| o.len() == 2)
            .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
            .ok_or_else(|| bad("data_offsets is not [begin, end]"))?;
        let (begin, end) = offsets;
        if begin > end || end > data_len {
            return Err(bad(&format!(
                "its bytes {begin}..{end} lie beyond the {data_len} bytes of data in the file (truncated?)"
            )));
        }
        let elements = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| bad("the shape overflows"))?;
        if elements.checked_mul(size) != Some(end - begin) {
            return Err(bad(&format!(
                "shape {shape:?} of {dtype} needs {} bytes but the offsets span {}",
                elements.saturating_mul(size),
                end - begin
            )));
        }
        entries.push(Entry {
            name: name.clone(),
            dtype,
            shape,
            begin,
            end,
        });
    }
    entries.sort_by_key(|e| e.begin);
    if let Some(w) = entries.windows(2).find(|w| w[1].begin < w[0].end) {
        return Err(corrupt(format!(
            "tensors {:?} and {:?} overlap in the file",
            w[0].name, w[1].name
        )));
    }
    Ok(entries)
}

/// Reads the file front to back, feeding every byte to the hasher when there is one.
struct Stream<'a> {
    inner: BufReader<File>,
    hasher: Option<&'a mut Sha256>,
    pos: u64,
}

impl Stream<'_> {
    fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_exact(buf)?;
        if let Some(h) = self.hasher.as_deref_mut() {
            h.update(&*buf);
        }
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Move forward to `to`, hashing what is passed over.
    fn skip_to(&mut self, to: u64) -> std::io::Result<()> {
        let mut scratch = [0u8; 64 * 1024];
        while self.pos < to {
            let n = (to - self.pos).min(scratch.len() as u64) as usize;
            self.read_exact(&mut scratch[..n])?;
        }
        Ok(())
    }

    /// Hash the rest of the file (bytes after the last tensor still count for the checksum).
    fn finish(mut self) -> std::io::Result<()> {
        if let Some(h) = self.hasher.as_deref_mut() {
            let mut scratch = [0u8; 64 * 1024];
            loop {
                let n = self.inner.read(&mut scratch)?;
                if n == 0 {
                    break;
                }
                h.update(&scratch[..n]);
            }
        }
        Ok(())
    }

    /// Read `count` elements into a typed buffer; `T`'s bytes are read as stored (little-endian,
    /// the target's byte order, checked at the crate root).
    fn read_vec<T: bytemuck::Pod + bytemuck::Zeroable>(
        &mut self,
        count: usize,
    ) -> std::io::Result<Vec<T>> {
        let mut v = vec![T::zeroed(); count];
        self.read_exact(bytemuck::cast_slice_mut(&mut v))?;
        Ok(v)
    }
}

/// Load every tensor of the file at `path`; floats become `dtype`.
pub(crate) fn load(
    path: &Path,
    dtype: DType,
    device: &Device,
    hasher: Option<&mut Sha256>,
) -> Result<HashMap<String, Tensor>, LoadError> {
    let file = File::open(path).map_err(LoadError::Io)?;
    let file_len = file.metadata().map_err(LoadError::Io)?.len();
    let mut stream = Stream {
        inner: BufReader::with_capacity(1 << 20, file),
        hasher,
        pos: 0,
    };

    if file_len < 8 {
        return Err(corrupt(format!(
            "{file_len} bytes is too short for a safetensors file"
        )));
    }
    let mut len_bytes = [0u8; 8];
    stream.read_exact(&mut len_bytes)?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES || header_len > file_len - 8 {
        return Err(corrupt(format!(
            "the header claims {header_len} bytes in a file of {file_len} (not a safetensors file, or truncated)"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    stream.read_exact(&mut header)?;
    let data_start = 8 + header_len;
    let entries = parse_header(&header, file_len - data_start)?;
    drop(header);

    let mut tensors = HashMap::with_capacity(entries.len());
    for entry in entries {
        stream.skip_to(data_start + entry.begin)?;
        let Some(stored) = Stored::parse(&entry.dtype) else {
            // Not a dtype candle computes with here; no model we load needs it.
            continue;
        };
        let count = entry.shape.iter().product::<usize>();
        let shape = entry.shape.clone();
        let tensor = match stored {
            Stored::F64 => Tensor::from_vec(stream.read_vec::<f64>(count)?, shape, device),
            Stored::F32 => Tensor::from_vec(stream.read_vec::<f32>(count)?, shape, device),
            Stored::F16 => Tensor::from_vec(stream.read_vec::<f16>(count)?, shape, device),
            Stored::BF16 => Tensor::from_vec(stream.read_vec::<bf16>(count)?, shape, device),
            Stored::I64 => Tensor::from_vec(stream.read_vec::<i64>(count)?, shape, device),
            Stored::U32 => Tensor::from_vec(stream.read_vec::<u32>(count)?, shape, device),
            Stored::U8 => Tensor::from_vec(stream.read_vec::<u8>(count)?, shape, device),
        };
        // The stored buffer is dropped as soon as the converted one exists: one tensor's worth of
        // overhead at a time.
        let tensor = tensor
            .and_then(|t| {
                if stored.is_float() && t.dtype() != dtype {
                    t.to_dtype(dtype)
                } else {
                    Ok(t)
                }
            })
            .map_err(|e| corrupt(format!("tensor {:?}: {e}", entry.name)))?;
        debug_assert_eq!(stream.pos, data_start + entry.end);
        tensors.insert(entry.name, tensor);
    }
    stream.finish()?;
    Ok(tensors)
}
