//! [`AppState`]: the service's shared state; the router, and serving until shutdown.

use super::health::health;
use super::metrics::{metrics, Metrics};
use super::middleware::{guard, not_found};
use super::native::{native_describe, native_embed_batch, native_embed_image, native_embed_text};
use super::ollama::{ollama_embed, ollama_tags, ollama_version};
use super::openai::openai_embeddings;
use super::page::{
    page_script, page_search, page_search_image, page_shell, page_similar, page_style, page_thumb,
};
use super::reload::ReloadStatus;
use crate::chain::Imbed;
use crate::chain::StepCheck;
use crate::config::ServerSettings;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::routing::post;
use axum::Router;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::Semaphore;

/// Shared state of the service.
#[derive(Clone)]
pub struct AppState {
    pub(super) current: Arc<std::sync::RwLock<Imbed>>,
    pub(super) options: crate::chain::ImbedOptions,
    pub(super) reload: Arc<Mutex<ReloadStatus>>,
    pub(super) settings: Arc<ServerSettings>,
    pub(super) permits: Arc<Semaphore>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Arc<tokio::sync::Mutex<Option<HealthSnapshot>>>,
}

/// The last step probe and when it ran.
pub(super) type HealthSnapshot = (Instant, Vec<StepCheck>, Vec<crate::chain::PluginCheck>);

impl AppState {
    /// State for an [`Imbed`] (see [`AppState::build`] for one with the settings' URL guard).
    pub fn new(imbed: Imbed, settings: ServerSettings) -> Self {
        let mut options =
            crate::chain::ImbedOptions::default().url_guard(settings.url_allow.clone());
        // Reloads keep using the same cache.
        options.store = imbed.store().cloned();
        AppState {
            current: Arc::new(std::sync::RwLock::new(imbed)),
            options,
            reload: Arc::default(),
            permits: Arc::new(Semaphore::new(settings.max_in_flight)),
            settings: Arc::new(settings),
            metrics: Arc::default(),
            health: Arc::default(),
        }
    }

    /// Load the plugins of `config` with image URLs guarded, and wrap them for serving.
    pub async fn build(config: crate::config::Config) -> crate::Result<Self> {
        AppState::build_with_store(config, None).await
    }

    /// [`AppState::build`] with the persistent cache: repeated images and texts are answered
    /// from it, and every image embedded is recorded for `imbed search`.
    pub async fn build_with_store(
        config: crate::config::Config,
        store: Option<crate::store::Cache>,
    ) -> crate::Result<Self> {
        let settings = config.server.clone();
        let mut options =
            crate::chain::ImbedOptions::default().url_guard(settings.url_allow.clone());
        options.store = store;
        let imbed = Imbed::with_options(config, options).await?;
        Ok(AppState::new(imbed, settings))
    }

    /// The runtime in use now. A request keeps the one it started with, so a reload never
    /// changes the plugins under a request in flight.
    pub fn imbed(&self) -> Imbed {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The router, ready to serve or to test with `tower::ServiceExt::oneshot`.
pub fn app(state: AppState) -> Router {
    let limit = state.settings.max_body_bytes;
    Router::new()
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/api/embed", post(ollama_embed))
        .route("/api/tags", get(ollama_tags))
        .route("/api/version", get(ollama_version))
        .route("/embed/image", post(native_embed_image))
        .route("/embed/text", post(native_embed_text))
        .route("/embed/batch", post(native_embed_batch))
        .route("/describe", post(native_describe))
        .route("/", get(page_shell))
        .route("/page.js", get(page_script))
        .route("/page.css", get(page_style))
        .route("/search", get(page_search))
        .route("/search/image", post(page_search_image))
        .route("/similar/{hash}", get(page_similar))
        .route("/thumb/{hash}", get(page_thumb))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serve on `listener` until `shutdown` resolves; requests in flight are finished first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
