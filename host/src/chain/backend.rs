//! What the walk asks of the plugins, with the cache in front of them. [`Imbed`] answers from
//! its loaded plugins and the persistent cache (`cached`); the walk's unit tests answer from
//! fakes, with no wasm and no database. The walk never sees a plugin or the store directly.
//!
//! [`Imbed`]: super::Imbed

use crate::input::ValidImage;
use crate::runtime::{CallError, ItemResult, ModelInfo, PluginDescription, Roles};
use crate::types::{Embedding, PluginId, Purpose};

/// The plugins (and the cache around them) as the walk sees them. Every call names the plugin
/// by its config key; a failure comes back as the plugin's [`CallError`] and the walk decides
/// what it means for the step (which role failed, whether the plugin is dead for the request).
pub(super) trait Backend: Sync {
    /// The plugin's identity and roles, or why it cannot be called (not loaded, not
    /// configured).
    fn loaded(&self, key: &str) -> Result<(PluginId, Roles), CallError>;

    /// The model the plugin embeds text with, and its space.
    async fn text_model(&self, key: &str) -> Result<ModelInfo, CallError>;

    /// The model the plugin embeds images with, and its space.
    async fn image_model(&self, key: &str) -> Result<ModelInfo, CallError>;

    /// Describe `image` with `prompt` (the plugin's own when `None`). With `use_cache`, a
    /// description the same describer already wrote for the same image and prompt is reused,
    /// and a fresh one is remembered. The flag says whether the cache answered.
    async fn describe(
        &self,
        key: &str,
        image: &ValidImage,
        prompt: Option<&str>,
        use_cache: bool,
    ) -> Result<(PluginDescription, bool), CallError>;

    /// Embed `texts` as `purpose` with the plugin whose text model is `model` (just asked for,
    /// so the walk could check its space first; its task prefixes say what the plugin puts
    /// before each text). Texts already embedded in that space come from the cache.
    /// One item per text, in order, each saying whether the cache answered it; the model that
    /// answered the batch. An `Err` means the whole call failed.
    async fn embed_texts(
        &self,
        key: &str,
        model: ModelInfo,
        texts: &[String],
        purpose: Purpose,
    ) -> Result<(ModelInfo, Vec<(ItemResult, bool)>), CallError>;

    /// Embed `image` itself with the plugin whose image model is `model`, from the cache when
    /// that space already has it. The model that answered, the item, whether the cache
    /// answered. An `Err` means the whole call failed.
    async fn embed_image(
        &self,
        key: &str,
        model: ModelInfo,
        image: &ValidImage,
    ) -> Result<(ModelInfo, ItemResult, bool), CallError>;

    /// Remember the chain's answer for `image`, so search finds it. Best effort: a cache that
    /// cannot write does not fail the answer.
    async fn record(&self, image: &ValidImage, embedding: &Embedding);
}
