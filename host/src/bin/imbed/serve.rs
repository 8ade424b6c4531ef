//! `imbed serve`: the HTTP server, with the config watched for hot reload.

use anyhow::Context;
use imbed::{Config, Env};

use super::{collection, exit};

pub(crate) async fn serve(config: Config, listen: Option<String>) -> anyhow::Result<u8> {
    let listen = listen.unwrap_or_else(|| config.server.listen.clone());
    let source = config.source.clone();
    let store = match collection::open_store(&config) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("imbed: serving without the cache: {e:#}");
            None
        }
    };
    let state = imbed::server::AppState::build_with_store(config, store).await?;
    // Editing the config or replacing a plugin file takes effect without a restart.
    let config_file = std::path::PathBuf::from(&source);
    let _watcher = config_file.is_file().then(|| {
        state.watch(
            config_file,
            Env::from_process(),
            std::time::Duration::from_secs(1),
        )
    });
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("imbed: serving on http://{}", listener.local_addr()?);
    imbed::server::serve(listener, state, stop_signal())
        .await
        .context("the server failed")?;
    eprintln!("imbed: stopped");
    Ok(exit::OK)
}

/// Ctrl-C or SIGTERM: the server stops accepting, finishes what is in flight, then exits; a
/// worker claims nothing more and finishes the jobs it holds.
pub(crate) async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
