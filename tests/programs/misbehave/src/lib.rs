//! A plugin for tests: its `mode` setting picks what it does on every call.
//!
//! - `ok`: answers properly (describes by image size, embeds deterministically).
//! - `loop`: spins forever.
//! - `alloc`: allocates without bound.
//! - `read-file`: tries to read the file named by setting `path` (default `/etc/passwd`).
//! - `env`: tries to read the environment variable named by setting `var` (default `PATH`).
//! - `http`: sends a GET to setting `url` through the host's HTTP capability.
//! - `socket`: opens a TCP connection straight to setting `addr`, bypassing the host.
//! - `panic`: panics.
//! - `wrong-len`: returns vectors one longer than the dimensions it reports.
//! - `nan`: returns a vector containing NaN.
//! - `wrong-count`: returns one vector fewer than asked for.
//! - `unavailable` / `model-not-found`: reports that error.
//! - `log-flood`: calls the host's `log` at warn level in a tight loop, setting `lines` times
//!   (default: until the deadline stops it), then answers as `ok`; a line is setting
//!   `line_bytes` long (default 100).
//! - `huge-description` (describe only): returns a description of setting `mb` MiB (default 100).
//! - `many-fields` (describe only): returns structured output with setting `fields` tags
//!   (default 100 000).
//!
//! Setting `space` overrides the space id (default `test/misbehave:8`); `dims` the dimensions.
//!
//! Built on the guest SDK (`plugins/sdk`) like the real plugins, exporting every role.

use imbed_plugin_sdk::http::{HttpError, Request};
use imbed_plugin_sdk::{
    export_plugin, log, settings, Batch, Describer, Description, Embedder, Error, Image,
    ImageEmbedder, ModelInfo, Plugin, Purpose, Vector,
};

#[derive(Default)]
struct Misbehave;

fn setting(key: &str, default: &str) -> String {
    settings::string(key, default)
}

fn dims() -> usize {
    setting("dims", "8").parse().unwrap_or(8)
}

/// Deterministic vector from bytes, so tests can compare results.
fn vector_from(bytes: &[u8]) -> Vec<f32> {
    let d = dims();
    let mut v = vec![0.1f32; d];
    for (i, b) in bytes.iter().enumerate() {
        v[i % d] += f32::from(*b) / 255.0;
    }
    v
}

/// Runs the configured misbehaviour; returns `Ok(Some(v))` when the mode produced a vector of
/// its own, `Ok(None)` to carry on normally.
fn misbehave(n: usize) -> Result<Option<Vec<Vec<f32>>>, Error> {
    let mode = setting("mode", "ok");
    match mode.as_str() {
        "ok" | "huge-description" | "many-fields" => Ok(None),
        "log-flood" => {
            let lines: u64 = setting("lines", &u64::MAX.to_string())
                .parse()
                .unwrap_or(u64::MAX);
            let width: usize = setting("line_bytes", "100").parse().unwrap_or(100);
            let line = "x".repeat(width);
            for i in 0..lines {
                log::warn(format!("flood {i} {line}"));
            }
            Ok(None)
        }
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "read-file" => {
            let path = setting("path", "/etc/passwd");
            match std::fs::read(&path) {
                Ok(bytes) => Ok(Some(vec![vector_from(&bytes); n])),
                Err(e) => Err(Error::Other(format!("reading {path} failed: {e}"))),
            }
        }
        "env" => {
            let var = setting("var", "PATH");
            match std::env::var(&var) {
                Ok(value) => Ok(Some(vec![vector_from(value.as_bytes()); n])),
                Err(e) => Err(Error::Other(format!(
                    "environment variable {var} is not visible: {e}"
                ))),
            }
        }
        "http" => {
            let url = setting("url", "http://127.0.0.1:9/");
            match Request::get(url.clone()).timeout_ms(2000).send() {
                Ok(resp) => Ok(Some(vec![vector_from(&resp.body); n])),
                Err(
                    HttpError::Denied(m)
                    | HttpError::Unreachable(m)
                    | HttpError::Timeout(m)
                    | HttpError::Invalid(m)
                    | HttpError::TooLarge(m)
                    | HttpError::Other(m),
                ) => Err(Error::Unavailable(format!("GET {url} failed: {m}"))),
            }
        }
        "socket" => {
            let addr = setting("addr", "127.0.0.1:9");
            match std::net::TcpStream::connect(&addr) {
                Ok(_) => Ok(Some(vec![vector_from(b"connected"); n])),
                Err(e) => Err(Error::Other(format!("connecting to {addr} failed: {e}"))),
            }
        }
        "panic" => panic!("misbehave plugin panicked on purpose"),
        "wrong-len" => Ok(Some(vec![vec![0.5; dims() + 1]; n])),
        "nan" => {
            let mut v = vec![0.5; dims()];
            v[0] = f32::NAN;
            Ok(Some(vec![v; n]))
        }
        "wrong-count" => Ok(Some(vec![vec![0.5; dims()]; n.saturating_sub(1)])),
        "unavailable" => Err(Error::Unavailable(
            "the backend is down (on purpose)".into(),
        )),
        "model-not-found" => Err(Error::ModelNotFound(
            "model \"x\" not found (on purpose)".into(),
        )),
        other => Err(Error::Other(format!("unknown mode {other:?}"))),
    }
}

fn model() -> ModelInfo {
    ModelInfo::new(
        format!("misbehave-{}", setting("mode", "ok")),
        setting("space", "test/misbehave:8"),
    )
    .with_dimensions(dims() as u32)
}

/// The batch as the mode says: its own vectors, or `item` applied to each input.
fn batch<T>(inputs: &[T], item: impl FnMut(&T) -> Result<Vector, Error>) -> Batch {
    match misbehave(inputs.len())? {
        Some(v) => Ok(v.into_iter().map(Ok).collect()),
        None => Ok(inputs.iter().map(item).collect()),
    }
}

impl Plugin for Misbehave {
    const NAME: &'static str = "misbehave";
    const VERSION: &'static str = "0.1.0";

    fn warm(&mut self) -> Result<(), Error> {
        match setting("warm", "ok").as_str() {
            "ok" => Ok(()),
            _ => Err(Error::Unavailable("warming failed (on purpose)".into())),
        }
    }
}

impl Embedder for Misbehave {
    fn text_model(&mut self) -> Result<ModelInfo, Error> {
        Ok(model())
    }

    fn embed_text(&mut self, text: &str) -> Result<Vector, Error> {
        if text.contains("__bad_item__") {
            Err(Error::BadInput("this item is bad (on purpose)".into()))
        } else {
            Ok(vector_from(text.as_bytes()))
        }
    }

    fn embed_texts(&mut self, texts: Vec<String>, _purpose: Purpose) -> Batch {
        batch(&texts, |t| self.embed_text(t))
    }
}

impl ImageEmbedder for Misbehave {
    fn image_model(&mut self) -> Result<ModelInfo, Error> {
        Ok(model())
    }

    fn embed_image(&mut self, image: &Image) -> Result<Vector, Error> {
        Ok(vector_from(&image.data))
    }

    fn embed_images(&mut self, images: Vec<Image>) -> Batch {
        batch(&images, |i| Ok(vector_from(&i.data)))
    }
}

impl Describer for Misbehave {
    fn describe(&mut self, image: Image, prompt: Option<String>) -> Result<Description, Error> {
        misbehave(1)?;
        match setting("mode", "ok").as_str() {
            "huge-description" => {
                let mb: usize = setting("mb", "100").parse().unwrap_or(100);
                return Ok(Description::new("a".repeat(mb << 20), "misbehave-vision"));
            }
            "many-fields" => {
                let n: usize = setting("fields", "100000").parse().unwrap_or(100_000);
                let tags = (0..n).map(|i| format!("tag{i}")).collect();
                return Ok(
                    Description::new("a picture", "misbehave-vision").with_structured(
                        imbed_plugin_sdk::Structured {
                            tags,
                            ..Default::default()
                        },
                    ),
                );
            }
            _ => {}
        }
        // Depends on the pixels' size and the prompt, so tests can tell the image arrived.
        let text = format!(
            "a {} picture of {} by {} pixels{}",
            image.mime_type,
            image.width,
            image.height,
            prompt.map(|p| format!(" ({p})")).unwrap_or_default()
        );
        Ok(Description::new(text, "misbehave-vision"))
    }
}

export_plugin!(Misbehave: describer, embedder, image_embedder);
