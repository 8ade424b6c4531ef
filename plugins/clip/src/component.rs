//! The component glue: the model is loaded once per instance, on first use or in `warm`, and
//! everything else is [`crate::Clip`].

use std::cell::RefCell;
use std::rc::Rc;

use crate::{Clip, ClipError, DEFAULT_MODEL};

wit_bindgen::generate!({
    world: "dual-embedder-plugin",
    path: "../../wit/0.1.0",
});

use exports::imbed::plugin::{embedder, image_embedder, plugin};
use imbed::plugin::host;
use imbed::plugin::types::{Error, Image, ModelInfo, PluginInfo};

/// Where the host mounts `grants.model_dir`.
const MODEL_ROOT: &str = imbed_model_io::MODEL_ROOT;

struct ClipPlugin;

thread_local! {
    // An instance is single-threaded and reused across calls: load the weights once. A failed
    // load is not kept, so files pulled after start are picked up by the next call.
    static MODEL: RefCell<Option<Rc<Clip>>> = const { RefCell::new(None) };
}

fn to_wit(e: ClipError) -> Error {
    match e {
        ClipError::Model(m) => Error::ModelNotFound(m.to_string()),
        ClipError::BadInput(m) => Error::BadInput(m),
        other => Error::Other(other.to_string()),
    }
}

fn clip() -> Result<Rc<Clip>, Error> {
    if let Some(c) = MODEL.with(|m| m.borrow().clone()) {
        return Ok(c);
    }
    // `model` names the model for `imbed models pull` when the directory has no manifest.
    let name = host::get_setting("model").unwrap_or_else(|| DEFAULT_MODEL.to_string());
    let loaded = Rc::new(Clip::load(MODEL_ROOT, name.trim()).map_err(to_wit)?);
    host::log(host::LogLevel::Info, &format!("loaded {}", loaded.info().space_id));
    MODEL.with(|m| *m.borrow_mut() = Some(loaded.clone()));
    Ok(loaded)
}

fn model_info(c: &Clip) -> ModelInfo {
    let info = c.info();
    ModelInfo {
        model_id: info.model_id.clone(),
        dimensions: Some(info.dimensions as u32),
        space_id: info.space_id.clone(),
    }
}

impl plugin::Guest for ClipPlugin {
    fn info() -> PluginInfo {
        PluginInfo { name: "clip".into(), version: env!("CARGO_PKG_VERSION").into() }
    }

    fn warm() -> Result<(), Error> {
        clip().map(|_| ())
    }
}

impl embedder::Guest for ClipPlugin {
    fn text_model() -> Result<ModelInfo, Error> {
        clip().map(|c| model_info(&c))
    }

    fn embed_texts(texts: Vec<String>) -> Result<Vec<Result<Vec<f32>, Error>>, Error> {
        let c = clip()?;
        let out = c.embed_texts(&texts).map_err(to_wit)?;
        Ok(out.into_iter().map(|r| r.map_err(to_wit)).collect())
    }
}

impl image_embedder::Guest for ClipPlugin {
    fn image_model() -> Result<ModelInfo, Error> {
        clip().map(|c| model_info(&c))
    }

    fn embed_images(images: Vec<Image>) -> Result<Vec<Result<Vec<f32>, Error>>, Error> {
        let c = clip()?;
        // Decode each image on its own so one bad image fails alone; embed the rest in batches.
        let decoded: Vec<Result<image::DynamicImage, ClipError>> =
            images.iter().map(|img| Clip::decode(&img.data, &img.mime_type)).collect();
        let ok: Vec<&image::DynamicImage> = decoded.iter().filter_map(|d| d.as_ref().ok()).collect();
        let mut vectors = c.embed_images(&ok).map_err(to_wit)?.into_iter();
        Ok(decoded
            .into_iter()
            .map(|d| match d {
                Ok(_) => vectors.next().ok_or_else(|| Error::Other("clip: a vector went missing".into())),
                Err(e) => Err(to_wit(e)),
            })
            .collect())
    }
}

export!(ClipPlugin);
