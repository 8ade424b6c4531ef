//! The generated `wasi:nn` host bindings, private to this room, and the host functions on a
//! small view of an instance's state. Generated types are converted to the room's own
//! (`TensorData`, `NnError`) right here. Expected failures go back to the guest as `wasi:nn`
//! errors; only a bad resource handle (a guest bug the table catches) traps.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::{InstanceNn, LoadedGraph, NnError, NnErrorCode, TensorData, TensorType, BACKEND};
use crate::types::Inference;

mod generated {
    wasmtime::component::bindgen!({
        world: "ml",
        path: "../wit/wasi-nn",
        imports: { default: async | trappable },
        with: {
            "wasi:nn/tensor.tensor": crate::runtime::nn::TensorData,
            "wasi:nn/graph.graph": crate::runtime::nn::bindings::GraphHandle,
            "wasi:nn/inference.graph-execution-context": crate::runtime::nn::bindings::ContextHandle,
            "wasi:nn/errors.error": crate::runtime::nn::NnError,
        },
    });
}

use generated::wasi::nn::{errors, graph, inference, tensor};

/// A guest's graph: a shared session.
pub struct GraphHandle(Arc<LoadedGraph>);

/// A guest's execution context: runs of one graph. Stateless, so contexts of one graph may
/// compute at once (each `compute` takes its inputs and returns its outputs).
pub struct ContextHandle(Arc<LoadedGraph>);

/// What the host functions see of an instance.
pub(crate) struct NnView<'a> {
    pub(crate) table: &'a mut ResourceTable,
    pub(crate) nn: &'a mut InstanceNn,
    /// The current plugin call's deadline.
    pub(crate) deadline: Instant,
}

struct Nn;

impl HasData for Nn {
    type Data<'a> = NnView<'a>;
}

/// Provide `wasi:nn` to every component: a plugin without the grant still links, and each
/// call is refused with a clear `security` error.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> NnView<'_>,
) -> wasmtime::Result<()> {
    generated::Ml::add_to_linker::<T, Nn>(linker, get)
}

impl From<tensor::TensorType> for TensorType {
    fn from(t: tensor::TensorType) -> Self {
        match t {
            tensor::TensorType::Fp16 => TensorType::F16,
            tensor::TensorType::Fp32 => TensorType::F32,
            tensor::TensorType::Fp64 => TensorType::F64,
            tensor::TensorType::Bf16 => TensorType::Bf16,
            tensor::TensorType::U8 => TensorType::U8,
            tensor::TensorType::I32 => TensorType::I32,
            tensor::TensorType::I64 => TensorType::I64,
        }
    }
}

impl From<TensorType> for tensor::TensorType {
    fn from(t: TensorType) -> Self {
        match t {
            TensorType::F16 => tensor::TensorType::Fp16,
            TensorType::F32 => tensor::TensorType::Fp32,
            TensorType::F64 => tensor::TensorType::Fp64,
            TensorType::Bf16 => tensor::TensorType::Bf16,
            TensorType::U8 => tensor::TensorType::U8,
            TensorType::I32 => tensor::TensorType::I32,
            TensorType::I64 => tensor::TensorType::I64,
        }
    }
}

impl From<NnErrorCode> for errors::ErrorCode {
    fn from(c: NnErrorCode) -> Self {
        match c {
            NnErrorCode::InvalidArgument => errors::ErrorCode::InvalidArgument,
            NnErrorCode::InvalidEncoding => errors::ErrorCode::InvalidEncoding,
            NnErrorCode::Timeout => errors::ErrorCode::Timeout,
            NnErrorCode::RuntimeError => errors::ErrorCode::RuntimeError,
            NnErrorCode::UnsupportedOperation => errors::ErrorCode::UnsupportedOperation,
            NnErrorCode::TooLarge => errors::ErrorCode::TooLarge,
            NnErrorCode::NotFound => errors::ErrorCode::NotFound,
            NnErrorCode::Security => errors::ErrorCode::Security,
        }
    }
}

impl NnView<'_> {
    /// An error for the guest, logged for the operator.
    fn fail<T>(&mut self, e: NnError) -> wasmtime::Result<Result<T, Resource<NnError>>> {
        tracing::debug!(target: "imbed::nn", "wasi-nn error ({:?}): {}", e.code, e.message);
        Ok(Err(self.table.push(e)?))
    }
}

impl tensor::Host for NnView<'_> {}

impl tensor::HostTensor for NnView<'_> {
    async fn new(
        &mut self,
        dimensions: Vec<u32>,
        ty: tensor::TensorType,
        data: Vec<u8>,
    ) -> wasmtime::Result<Resource<TensorData>> {
        // Unchecked on purpose: the constructor cannot fail, so `compute` checks everything.
        Ok(self.table.push(TensorData {
            dims: dimensions,
            ty: ty.into(),
            bytes: data,
        })?)
    }

    async fn dimensions(&mut self, t: Resource<TensorData>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&t)?.dims.clone())
    }

    async fn ty(&mut self, t: Resource<TensorData>) -> wasmtime::Result<tensor::TensorType> {
        Ok(self.table.get(&t)?.ty.into())
    }

    async fn data(&mut self, t: Resource<TensorData>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&t)?.bytes.clone())
    }

    async fn drop(&mut self, t: Resource<TensorData>) -> wasmtime::Result<()> {
        self.table.delete(t)?;
        Ok(())
    }
}

impl graph::Host for NnView<'_> {
    async fn load(
        &mut self,
        _builder: Vec<Vec<u8>>,
        _encoding: graph::GraphEncoding,
        _target: graph::ExecutionTarget,
    ) -> wasmtime::Result<Result<Resource<GraphHandle>, Resource<NnError>>> {
        // ONNX Runtime never parses guest-supplied bytes: graphs come from checked files only.
        self.fail(NnError::new(
            NnErrorCode::Security,
            "loading a graph from bytes is refused: imbed loads only graphs the config grants, by name (load-by-name), from files checked against their manifest",
        ))
    }

    async fn load_by_name(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Resource<GraphHandle>, Resource<NnError>>> {
        let plugin = self.nn.plugin.clone();
        match plugin.load_by_name(&name).await {
            Ok(g) => Ok(Ok(self.table.push(GraphHandle(g))?)),
            Err(e) => self.fail(e),
        }
    }
}

impl graph::HostGraph for NnView<'_> {
    async fn init_execution_context(
        &mut self,
        g: Resource<GraphHandle>,
    ) -> wasmtime::Result<Result<Resource<ContextHandle>, Resource<NnError>>> {
        let graph = self.table.get(&g)?.0.clone();
        Ok(Ok(self.table.push(ContextHandle(graph))?))
    }

    async fn drop(&mut self, g: Resource<GraphHandle>) -> wasmtime::Result<()> {
        self.table.delete(g)?;
        Ok(())
    }
}

impl inference::Host for NnView<'_> {}

impl inference::HostGraphExecutionContext for NnView<'_> {
    async fn compute(
        &mut self,
        ctx: Resource<ContextHandle>,
        inputs: Vec<(String, Resource<TensorData>)>,
    ) -> wasmtime::Result<Result<Vec<(String, Resource<TensorData>)>, Resource<NnError>>> {
        let graph = self.table.get(&ctx)?.0.clone();
        // The inputs are owned handles: the guest gave them up, so they leave the table here.
        let mut tensors = Vec::with_capacity(inputs.len());
        for (name, t) in inputs {
            tensors.push((name, self.table.delete(t)?));
        }
        let plugin = self.nn.plugin.clone();
        let checked = match plugin.check(&graph, tensors) {
            Ok(c) => c,
            // Refused inputs never reach ONNX Runtime: nothing to record.
            Err(e) => return self.fail(e),
        };
        // Recorded before the run: a run the call's outer timeout cuts short still counts.
        Inference::record(&mut self.nn.used, BACKEND, &graph.name);
        let result = plugin.compute(graph, checked, self.deadline).await;
        match result {
            Ok(outputs) => {
                let mut out = Vec::with_capacity(outputs.len());
                for (name, t) in outputs {
                    out.push((name, self.table.push(t)?));
                }
                Ok(Ok(out))
            }
            Err(e) => self.fail(e),
        }
    }

    async fn drop(&mut self, ctx: Resource<ContextHandle>) -> wasmtime::Result<()> {
        self.table.delete(ctx)?;
        Ok(())
    }
}

impl errors::Host for NnView<'_> {}

impl errors::HostError for NnView<'_> {
    async fn code(&mut self, e: Resource<NnError>) -> wasmtime::Result<errors::ErrorCode> {
        Ok(self.table.get(&e)?.code.into())
    }

    async fn data(&mut self, e: Resource<NnError>) -> wasmtime::Result<String> {
        Ok(self.table.get(&e)?.message.clone())
    }

    async fn drop(&mut self, e: Resource<NnError>) -> wasmtime::Result<()> {
        self.table.delete(e)?;
        Ok(())
    }
}
