//! The sandbox of one plugin instance: its store state (WASI context, resource table, memory
//! limiter, deadline). May use `crate::config` (the grants) and the runtime's other rooms.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::budget;
use super::call::CallError;
use super::host_fns::Shared;
use super::nn;
use crate::config::PluginConfig;
use crate::types::FailureKind;

pub(crate) struct Limiter {
    pub(crate) memory_cap: usize,
    pub(crate) exceeded: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.exceeded = true;
            // An error (not `Ok(false)`) traps at once: a guest allocator that sees a failed
            // grow would abort anyway, with a less helpful message.
            return Err(wasmtime::Error::msg(format!(
                "memory cap of {} MiB reached",
                self.memory_cap >> 20
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

pub(crate) struct PluginState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) shared: Arc<Shared>,
    pub(crate) deadline: Instant,
    /// This instance's wasi-nn graphs and execution contexts.
    pub(crate) nn: nn::InstanceNn,
    /// This call's log lines, against the plugin's log budget.
    pub(crate) call_log: budget::CallLog,
}

/// What the wasi-nn host functions see of an instance's state.
pub(crate) fn nn_view(s: &mut PluginState) -> nn::NnView<'_> {
    nn::NnView {
        table: &mut s.table,
        nn: &mut s.nn,
        deadline: s.deadline,
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl PluginState {
    /// The state of one new instance of the plugin configured by `cfg`: a WASI context that
    /// grants exactly what the config grants, and the plugin's memory cap and deadline.
    pub(crate) fn new(
        cfg: &PluginConfig,
        shared: Arc<Shared>,
        stderr: MemoryOutputPipe,
    ) -> Result<PluginState, CallError> {
        // `WasiCtxBuilder::new` grants nothing: no files, no environment, no sockets, no args.
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr.clone());
        for var in &cfg.grants.env {
            if let Ok(value) = std::env::var(var) {
                wasi.env(var, value);
            }
        }
        if let Some(dir) = &cfg.grants.model_dir {
            wasi.preopened_dir(dir, "/model", FsPerms::ReadOnly)
                .map_err(|e| {
                    CallError::new(
                        FailureKind::ModelNotFound,
                        format!("cannot open model directory {}: {e:#}", dir.display()),
                    )
                })?;
        }
        if !cfg.grants.sockets.is_empty() {
            let allowed = cfg.grants.sockets.clone();
            wasi.allow_tcp(true);
            wasi.socket_addr_check(move |addr, usage| {
                use wasmtime_wasi::sockets::SocketAddrUse;
                let ok = match usage {
                    SocketAddrUse::TcpConnect => allowed.contains(&addr),
                    // `connect` first binds implicitly to the wildcard address: allow only that.
                    SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                    _ => false,
                };
                Box::pin(async move { ok })
            });
        }
        Ok(PluginState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_cap: cfg.memory_bytes as usize,
                exceeded: false,
            },
            nn: nn::InstanceNn::new(shared.nn.clone()),
            shared,
            deadline: Instant::now() + cfg.timeout,
            call_log: Default::default(),
        })
    }
}
