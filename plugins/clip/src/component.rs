//! The component glue, on the guest SDK: one [`ClipPlugin`] value per instance holds the model
//! once loaded (on first use or in `warm`); everything else is [`crate::Clip`].

use imbed_plugin_sdk::{
    export_plugin, log, nn, settings, single, Batch, Embedder, Error, Image, ImageEmbedder,
    ModelInfo, Plugin, Purpose, Vector,
};

use crate::{Clip, ClipError, DEFAULT_MODEL, TEXT_GRAPH, VISION_GRAPH};

/// The plugin instance. A failed load is not kept, so files pulled after start are picked up
/// by the next call.
#[derive(Default)]
pub struct ClipPlugin {
    model: Option<Clip>,
}

fn to_sdk(e: ClipError) -> Error {
    match e {
        ClipError::Model(m) => Error::model_not_found(m.to_string()),
        ClipError::BadInput(m) => Error::bad_input(m),
        ClipError::Timeout(m) => Error::timeout(m),
        other => Error::other(other.to_string()),
    }
}

fn model_info(c: &Clip) -> ModelInfo {
    let info = c.info();
    ModelInfo::new(info.model_id.clone(), info.space_id.clone())
        .with_dimensions(info.dimensions as u32)
}

impl ClipPlugin {
    fn clip(&mut self) -> Result<&Clip, Error> {
        if self.model.is_none() {
            // Without a manifest, the model is what the `model` setting calls it, else it is
            // named after the folder the host granted (inside it is `/model`; the host tells
            // its name). Messages about missing files name the model to pull: the setting's,
            // else the default one.
            let host = settings::Settings::from_host();
            let setting = host.get("model").map(|m| m.trim().to_string());
            let pull = setting.clone().unwrap_or_else(|| DEFAULT_MODEL.to_string());
            let unnamed = setting
                .or_else(|| host.get("model_dir_name"))
                .unwrap_or_else(|| DEFAULT_MODEL.to_string());
            let loaded = load(&pull, &unnamed)?;
            log::info(format!(
                "loaded {} ({})",
                loaded.info().space_id,
                match loaded.path() {
                    "graph" => "towers on the host's ONNX Runtime: vision.onnx, text.onnx",
                    _ => "towers in candle, in the sandbox",
                }
            ));
            self.model = Some(loaded);
        }
        self.model
            .as_ref()
            .ok_or_else(|| Error::other("the model did not stay loaded"))
    }
}

/// Both towers on the host's graphs when it has both for us, else both in candle (one path per
/// instance keeps the memory and the behaviour simple to reason about).
fn load(pull: &str, unnamed: &str) -> Result<Clip, Error> {
    let root = imbed_model_io::MODEL_ROOT;
    let graphs = nn::load(VISION_GRAPH).and_then(|v| Ok((v, nn::load(TEXT_GRAPH)?)));
    match graphs {
        Ok((vision, text)) => match Clip::with_graphs_named(root, pull, unnamed, vision, text) {
            Ok(loaded) => return Ok(loaded),
            Err(e) => log::warn(format!("not using the graphs: {e}")),
        },
        Err(e) if e.is_unavailable() => log::debug(format!("graphs not used: {e}")),
        Err(e) => log::warn(format!("the graphs failed to load: {e}")),
    }
    Clip::load_named(root, pull, unnamed).map_err(to_sdk)
}

impl Plugin for ClipPlugin {
    const NAME: &'static str = "clip";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn warm(&mut self) -> Result<(), Error> {
        self.clip().map(|_| ())
    }
}

impl Embedder for ClipPlugin {
    fn text_model(&mut self) -> Result<ModelInfo, Error> {
        self.clip().map(model_info)
    }

    fn embed_text(&mut self, text: &str) -> Result<Vector, Error> {
        single(self.embed_texts(vec![text.to_string()], Purpose::None))
    }

    /// One call per batch: the text tower runs the texts together.
    fn embed_texts(&mut self, texts: Vec<String>, _purpose: Purpose) -> Batch {
        let out = self.clip()?.embed_texts(&texts).map_err(to_sdk)?;
        Ok(out.into_iter().map(|r| r.map_err(to_sdk)).collect())
    }
}

impl ImageEmbedder for ClipPlugin {
    fn image_model(&mut self) -> Result<ModelInfo, Error> {
        self.clip().map(model_info)
    }

    fn embed_image(&mut self, image: &Image) -> Result<Vector, Error> {
        single(self.embed_images(vec![image.clone()]))
    }

    fn embed_images(&mut self, images: Vec<Image>) -> Batch {
        let c = self.clip()?;
        // Decode each image on its own so one bad image fails alone; embed the rest in batches.
        let decoded: Vec<Result<image::DynamicImage, ClipError>> = images
            .iter()
            .map(|img| Clip::decode(&img.data, &img.mime_type))
            .collect();
        let ok: Vec<&image::DynamicImage> =
            decoded.iter().filter_map(|d| d.as_ref().ok()).collect();
        let mut vectors = c.embed_images(&ok).map_err(to_sdk)?.into_iter();
        Ok(decoded
            .into_iter()
            .map(|d| match d {
                Ok(_) => vectors
                    .next()
                    .ok_or_else(|| Error::other("clip: a vector went missing")),
                Err(e) => Err(to_sdk(e)),
            })
            .collect())
    }
}

export_plugin!(ClipPlugin: embedder, image_embedder);
