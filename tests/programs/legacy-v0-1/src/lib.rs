//! A plugin exactly as one was written for `imbed:plugin@0.1.0`, straight from `wit/0.1.0`
//! (the SDK has moved on to newer versions): a describer and a text embedder. The host serves
//! it through its 0.1.0 adapter, which must hand it every text exactly as given (0.1.0 has no
//! purpose) and never ask it for health or a cache identity.
//!
//! - `describe` answers "a legacy description of a WxH image".
//! - `embed-texts` counts letters a..z (26 dimensions); a text without letters is that item's
//!   `bad-input`. It logs each batch through the 0.1.0 `host` import, which the host serves by
//!   delegating to the newest version's.

wit_bindgen::generate!({ world: "describer-embedder-plugin", path: "../../../wit/0.1.0" });

use exports::imbed::plugin::describer::{Description, Guest as Describer};
use exports::imbed::plugin::embedder::Guest as Embedder;
use exports::imbed::plugin::plugin::Guest as PluginGuest;
use imbed::plugin::host;
use imbed::plugin::types::{Error, Image, ModelInfo, PluginInfo};

struct Legacy;

impl PluginGuest for Legacy {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "legacy".into(),
            version: "0.1.0".into(),
        }
    }

    fn warm() -> Result<(), Error> {
        Ok(())
    }
}

impl Describer for Legacy {
    fn describe(image: Image, _prompt: Option<String>) -> Result<Description, Error> {
        Ok(Description {
            text: format!(
                "a legacy description of a {}x{} image",
                image.width, image.height
            ),
            model_id: "legacy-vision".into(),
            structured: None,
        })
    }
}

fn letters(text: &str) -> Result<Vec<f32>, Error> {
    let mut v = vec![0.0f32; 26];
    for b in text
        .to_ascii_lowercase()
        .bytes()
        .filter(u8::is_ascii_lowercase)
    {
        v[usize::from(b - b'a')] += 1.0;
    }
    if v.iter().all(|x| *x == 0.0) {
        return Err(Error::BadInput("the text has no letters".into()));
    }
    Ok(v)
}

impl Embedder for Legacy {
    fn text_model() -> Result<ModelInfo, Error> {
        Ok(ModelInfo {
            model_id: "letters".into(),
            dimensions: Some(26),
            space_id: "legacy/letters@1:26".into(),
        })
    }

    fn embed_texts(texts: Vec<String>) -> Result<Vec<Result<Vec<f32>, Error>>, Error> {
        host::log(
            host::LogLevel::Debug,
            &format!("embedding {} texts", texts.len()),
        );
        Ok(texts.iter().map(|t| letters(t)).collect())
    }
}

export!(Legacy);
