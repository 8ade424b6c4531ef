//! Hot reload: a changed config file or plugin file is loaded beside the running one and
//! swapped in only when it loads; `/health` reports what the last reload did.

use super::state::AppState;
use crate::chain::Imbed;
use std::time::Duration;

/// What the last hot reload did, for `/health`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    /// Reloads applied since start.
    pub reloads: u64,
    /// Why the last attempt was refused, when it was (the previous config stays in use).
    pub last_error: Option<String>,
}

impl AppState {
    /// What the last reload did.
    pub fn reload_status(&self) -> ReloadStatus {
        self.reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Load `path` again and switch to it, unless it is invalid or a plugin that loads now
    /// would no longer load: then the running config stays and the reason is kept for /health.
    /// `[server]` settings (address, keys, limits) need a restart.
    pub async fn reload(
        &self,
        path: &std::path::Path,
        env: &crate::config::Env,
    ) -> Result<(), String> {
        let outcome = async {
            let config = crate::config::Config::load(path, env).map_err(|e| e.to_string())?;
            let next = Imbed::with_options(config, self.options.clone())
                .await
                .map_err(|e| e.to_string())?;
            let before = self.imbed().plugins();
            for p in next.plugins() {
                let was_ready = before.iter().any(|b| {
                    b.key == p.key && matches!(b.health, crate::chain::PluginHealth::Ready { .. })
                });
                if let (true, crate::chain::PluginHealth::Failed { message, .. }) =
                    (was_ready, &p.health)
                {
                    return Err(format!(
                        "plugin {:?} would no longer load: {message}",
                        p.key
                    ));
                }
            }
            Ok(next)
        }
        .await;
        let result = {
            let mut status = self.reload.lock().unwrap_or_else(|p| p.into_inner());
            match outcome {
                Ok(next) => {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
                    status.reloads += 1;
                    status.last_error = None;
                    tracing::info!(target: "imbed::serve", "reloaded {}", path.display());
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(target: "imbed::serve", "kept the running config; {} was refused: {e}", path.display());
                    status.last_error = Some(e.clone());
                    Err(e)
                }
            }
        };
        if result.is_ok() {
            // The chain changed: the cached step probe no longer describes it.
            *self.health.lock().await = None;
        }
        result
    }

    /// Watch the config file and the plugin files it names; reload when any of them changes.
    /// Runs until the returned task is aborted.
    pub fn watch(
        &self,
        path: std::path::PathBuf,
        env: crate::config::Env,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            let mut seen = state.fingerprint(&path);
            loop {
                tokio::time::sleep(every).await;
                let now = state.fingerprint(&path);
                if now != seen {
                    let _ = state.reload(&path, &env).await;
                    // Whatever the outcome, this version of the files has been looked at: a
                    // refused config is not retried until it changes again. The file list is
                    // taken again because a reload may name other plugins.
                    seen = state.fingerprint(&path);
                }
            }
        })
    }

    /// Size and modification time of the config file and of every plugin file in use.
    fn fingerprint(
        &self,
        path: &std::path::Path,
    ) -> Vec<(std::path::PathBuf, Option<(u64, std::time::SystemTime)>)> {
        let stat = |p: &std::path::Path| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)))
        };
        let mut files = vec![path.to_path_buf()];
        files.extend(
            self.imbed()
                .config()
                .plugins
                .values()
                .map(|p| p.path.clone()),
        );
        files
            .into_iter()
            .map(|f| {
                let s = stat(&f);
                (f, s)
            })
            .collect()
    }
}
