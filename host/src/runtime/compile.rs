//! Compiling components, with an in-memory memo and an on-disk cache of compiled code keyed by
//! the component's SHA-256 and the engine's compatibility hash; and inspecting a component for
//! `imbed plugins check`.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::contract::contract_version;
use super::engine::Runtime;
use super::nn;
use crate::config::PluginConfig;
use crate::input::hex;

impl Runtime {
    /// Compile a component, or load it from the cache when this exact file was compiled before
    /// by this exact engine. Returns whether the cache answered.
    pub(crate) fn compile(&self, bytes: &[u8]) -> Result<(Component, bool), String> {
        self.compile_digested(bytes, component_digest(bytes))
    }

    /// [`Runtime::compile`] when the caller has the component's SHA-256 already.
    pub(crate) fn compile_digested(
        &self,
        bytes: &[u8],
        digest: [u8; 32],
    ) -> Result<(Component, bool), String> {
        let memo = self
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
            .cloned();
        if let Some(component) = memo {
            return Ok((component, true));
        }
        let (component, from_cache) = self.compile_uncached(bytes, &digest)?;
        self.compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest, component.clone());
        Ok((component, from_cache))
    }

    fn compile_uncached(
        &self,
        bytes: &[u8],
        digest: &[u8; 32],
    ) -> Result<(Component, bool), String> {
        let cache_file = self.cache_dir.as_ref().map(|dir| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.engine.precompile_compatibility_hash().hash(&mut h);
            let key = format!("{}-{:016x}", hex(digest), h.finish());
            dir.join("components").join(format!("{key}.cwasm"))
        });
        if let Some(path) = cache_file.as_ref().filter(|p| p.is_file()) {
            // Read into memory rather than mapping the file: a mapped file that someone
            // truncates (a cache cleaner, a second imbed) kills the process with SIGBUS.
            // SAFETY: the file was written by `Component::serialize` of an engine with the same
            // compatibility hash (it is in the name), into imbed's own cache directory.
            let loaded = std::fs::read(path)
                .map_err(wasmtime::Error::from)
                .and_then(|bytes| unsafe { Component::deserialize(&self.engine, bytes) });
            match loaded {
                Ok(c) => return Ok((c, true)),
                Err(e) => tracing::warn!(
                    "ignoring unusable compile cache entry {}: {e:#}",
                    path.display()
                ),
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| format!("{e:#}"))?;
        if let Some(path) = cache_file {
            if let Err(e) = write_atomically(&path, &component) {
                tracing::warn!("cannot write compile cache {}: {e}", path.display());
            }
        }
        Ok((component, false))
    }
}

/// A component file's SHA-256: the compile cache's key, and the identity the store records for
/// each vector the component writes.
pub(crate) fn component_digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// What `imbed plugins check` reports about a component file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComponentReport {
    /// The contract version it exports, if it exports `imbed:plugin/plugin` at all.
    pub contract: Option<String>,
    /// Everything it imports, by name.
    pub imports: Vec<String>,
    /// Everything it exports, by name.
    pub exports: Vec<String>,
    /// Grants it may ask for, from its imports (a std guest imports filesystem and environment
    /// interfaces even when it never uses them: a capability listed here is possible, not certain).
    pub capabilities: Vec<String>,
}

impl Runtime {
    /// The wasi-nn status of a plugin that did not load, from its config.
    pub(crate) fn nn_status(&self, key: &str, cfg: &PluginConfig) -> Option<nn::NnStatus> {
        self.nn.plugin(key, cfg).status()
    }

    /// Compile a component file and describe its imports, exports and contract version.
    pub(crate) fn inspect(&self, bytes: &[u8]) -> Result<ComponentReport, String> {
        let (component, _) = self.compile(bytes)?;
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let uses = |prefix: &str| imports.iter().any(|i| i.starts_with(prefix));
        let mut capabilities = Vec::new();
        if uses("imbed:plugin/http") {
            capabilities.push(
                "http: outbound HTTP through the host (grants.http = [\"scheme://host:port\"])"
                    .into(),
            );
        }
        if uses("wasi:filesystem/") {
            capabilities.push(
                "files: reading a model directory (grants.model_dir), if it reads files".into(),
            );
        }
        if uses("wasi:cli/environment") {
            capabilities.push("env: environment variables (grants.env), if it reads any".into());
        }
        if uses("wasi:nn/") {
            capabilities.push(
                "nn: native inference on granted graphs (grants.nn = [\"<graph>\"] with a model_dir)"
                    .into(),
            );
        }
        if uses("wasi:sockets/tcp") || uses("wasi:sockets/udp") {
            capabilities
                .push("sockets: direct TCP connections (grants.sockets), if it opens any".into());
        }
        Ok(ComponentReport {
            contract: contract_version(&self.engine, &component),
            imports,
            exports,
            capabilities,
        })
    }
}

fn write_atomically(path: &Path, component: &Component) -> Result<(), String> {
    let dir = path.parent().ok_or("no parent directory")?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let bytes = component.serialize().map_err(|e| format!("{e:#}"))?;
    let tmp = dir.join(format!(".{}.tmp{}", std::process::id(), rand_suffix()));
    std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
    // Rename is atomic: a concurrent reader sees the old file or the whole new one.
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })
}

fn rand_suffix() -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    Instant::now().hash(&mut h);
    std::thread::current().id().hash(&mut h);
    h.finish()
}
