//! Native inference through the host: named ONNX graphs run by the host's ONNX Runtime, over the
//! standard `wasi:nn@0.2.0-rc-2024-10-28` interfaces (`wit/wasi-nn`).
//!
//! The plugin keeps all of its logic (decoding, preprocessing, tokenising, pooling,
//! normalising); only tensors cross. A graph is loaded by name: with
//! `[plugins.X.grants] nn = ["text"]` the name `text` is the file `text.onnx` in the plugin's
//! granted model folder, and the host loads it only when the folder's manifest vouches for it.
//! Anything else fails with an [`NnError`] saying why ([`NnErrorKind::Denied`] without the grant,
//! [`NnErrorKind::NotFound`] without the file, [`NnErrorKind::Unsupported`] when the plugin was
//! built without the `nn` feature or runs natively), and the plugin falls back to its own
//! in-sandbox path.
//!
//! ```no_run
//! use imbed_plugin_sdk::nn::{self, Infer, Tensor};
//!
//! # fn demo() -> Result<(), nn::NnError> {
//! let graph = nn::load("text")?;
//! let ids = Tensor::i64(&[1, 3], &[101, 7592, 102])?;
//! let mask = Tensor::i64(&[1, 3], &[1, 1, 1])?;
//! let out = graph.run(&[("input_ids", &ids), ("attention_mask", &mask)])?;
//! let (_name, hidden) = out.first_of(&["last_hidden_state", "token_embeddings"])?;
//! let values = hidden.to_f32()?;
//! # let _ = values; Ok(()) }
//! ```
//!
//! [`Infer`] is the seam plugins compute through, so their graph code is unit-tested natively
//! with a stand-in.

use std::fmt;

/// What kind of elements a tensor holds (the ones imbed's host accepts in and out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ElementType {
    /// IEEE half precision.
    F16,
    /// IEEE single precision.
    F32,
    /// Signed 32-bit integers.
    I32,
    /// Signed 64-bit integers (token ids of most exported text models).
    I64,
    /// Another wasi-nn type (f64, bf16, u8): carried, but not converted by this module.
    Other,
}

impl ElementType {
    /// Bytes per element (0 for [`ElementType::Other`]).
    pub fn size(self) -> usize {
        match self {
            ElementType::F16 => 2,
            ElementType::F32 | ElementType::I32 => 4,
            ElementType::I64 => 8,
            ElementType::Other => 0,
        }
    }
}

/// A dense row-major tensor: shape, element type and little-endian bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Tensor {
    shape: Vec<u32>,
    ty: ElementType,
    data: Vec<u8>,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("shape", &self.shape)
            .field("ty", &self.ty)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl Tensor {
    fn checked(shape: &[usize], ty: ElementType, len: usize) -> Result<Vec<u32>, NnError> {
        let dims: Vec<u32> = shape
            .iter()
            .map(|&d| u32::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| {
                NnError::invalid(format!("tensor shape {shape:?} has a dimension past u32"))
            })?;
        let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if count != Some(len) {
            return Err(NnError::invalid(format!(
                "tensor shape {shape:?} does not hold {len} {ty:?} values"
            )));
        }
        Ok(dims)
    }

    /// An f32 tensor of `shape` holding `values` (row-major).
    pub fn f32(shape: &[usize], values: &[f32]) -> Result<Tensor, NnError> {
        let shape = Tensor::checked(shape, ElementType::F32, values.len())?;
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(Tensor {
            shape,
            ty: ElementType::F32,
            data,
        })
    }

    /// An i64 tensor of `shape` holding `values` (row-major).
    pub fn i64(shape: &[usize], values: &[i64]) -> Result<Tensor, NnError> {
        let shape = Tensor::checked(shape, ElementType::I64, values.len())?;
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(Tensor {
            shape,
            ty: ElementType::I64,
            data,
        })
    }

    /// An i32 tensor of `shape` holding `values` (row-major).
    pub fn i32(shape: &[usize], values: &[i32]) -> Result<Tensor, NnError> {
        let shape = Tensor::checked(shape, ElementType::I32, values.len())?;
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(Tensor {
            shape,
            ty: ElementType::I32,
            data,
        })
    }

    /// A tensor from raw parts, as a graph returned it (checked: the bytes must fill the shape).
    pub fn from_raw(shape: Vec<u32>, ty: ElementType, data: Vec<u8>) -> Result<Tensor, NnError> {
        if ty != ElementType::Other {
            let count = shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
                .and_then(|n| n.checked_mul(ty.size()));
            if count != Some(data.len()) {
                return Err(NnError::invalid(format!(
                    "a {ty:?} tensor of shape {shape:?} came with {} bytes",
                    data.len()
                )));
            }
        }
        Ok(Tensor { shape, ty, data })
    }

    /// The dimensions.
    pub fn shape(&self) -> &[u32] {
        &self.shape
    }

    /// The element type.
    pub fn element_type(&self) -> ElementType {
        self.ty
    }

    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The values as f32: f32 as they are, f16 widened. Integer tensors are refused (a graph
    /// whose embedding output is not floating-point is not one this plugin understands).
    pub fn to_f32(&self) -> Result<Vec<f32>, NnError> {
        match self.ty {
            ElementType::F32 => Ok(self
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()),
            ElementType::F16 => Ok(self
                .data
                .chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect()),
            other => Err(NnError::invalid(format!(
                "the graph returned {other:?} values where floats were expected"
            ))),
        }
    }
}

/// IEEE 754 binary16 to binary32, exactly (every f16 is an f32).
fn f16_to_f32(h: u16) -> f32 {
    let sign = (u32::from(h) & 0x8000) << 16;
    let exp = (h >> 10) & 0x1f;
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalise the fraction.
            let shift = frac.leading_zeros() - 21;
            let frac = (frac << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (frac << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((u32::from(exp) + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// Why the host did not run a graph, in the plugin's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NnErrorKind {
    /// The plugin has no `nn` grant for this graph, or the file is not vouched for (`security`).
    Denied,
    /// No such graph: the file is not in the model folder, or no ONNX Runtime library (`not-found`).
    NotFound,
    /// No wasi-nn here (built without the `nn` feature, native), or an operation the host refuses.
    Unsupported,
    /// The inputs do not fit the graph: names, types, shapes (`invalid-argument`).
    InvalidArgument,
    /// The run went past the call's deadline (`timeout`).
    Timeout,
    /// Too large for the host's budgets (`too-large`).
    TooLarge,
    /// The runtime failed (`runtime-error`, `unknown`, others).
    Runtime,
}

/// A failed load or run: its kind and the host's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NnError {
    /// What went wrong.
    pub kind: NnErrorKind,
    /// The host's explanation.
    pub message: String,
}

impl NnError {
    /// An error of `kind`.
    pub fn new(kind: NnErrorKind, message: impl Into<String>) -> Self {
        NnError {
            kind,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        NnError::new(NnErrorKind::InvalidArgument, message)
    }

    /// True when the graph path is simply not available (no grant, no file, no library, no
    /// wasi-nn): the plugin should use its own path, without alarm.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.kind,
            NnErrorKind::Denied | NnErrorKind::NotFound | NnErrorKind::Unsupported
        )
    }
}

impl fmt::Display for NnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            NnErrorKind::Denied => "denied",
            NnErrorKind::NotFound => "not found",
            NnErrorKind::Unsupported => "unsupported",
            NnErrorKind::InvalidArgument => "invalid argument",
            NnErrorKind::Timeout => "timeout",
            NnErrorKind::TooLarge => "too large",
            NnErrorKind::Runtime => "runtime error",
        };
        write!(f, "wasi-nn {kind}: {}", self.message)
    }
}

impl std::error::Error for NnError {}

/// A graph's outputs, by name, in the order the host returned them.
#[derive(Debug, Clone, Default)]
pub struct Outputs(pub Vec<(String, Tensor)>);

impl Outputs {
    /// The output called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The output names.
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The first output present among `names` (exports differ in what they call the same
    /// thing); failing that, the only output when there is exactly one. The error names what
    /// was looked for and what the graph has.
    pub fn first_of(&self, names: &[&str]) -> Result<(&str, &Tensor), NnError> {
        for want in names {
            if let Some((n, t)) = self.0.iter().find(|(n, _)| n == want) {
                return Ok((n.as_str(), t));
            }
        }
        if let [(n, t)] = self.0.as_slice() {
            return Ok((n.as_str(), t));
        }
        Err(NnError::invalid(format!(
            "the graph has none of the outputs {names:?} (it has {:?})",
            self.names()
        )))
    }
}

/// Something that runs named tensors through a graph: [`Graph`] in a plugin, a stand-in in tests.
pub trait Infer {
    /// Run the graph on `inputs`; every output comes back by name.
    fn run(&self, inputs: &[(&str, &Tensor)]) -> Result<Outputs, NnError>;
}

/// Run `graph` on the first of `candidates` it accepts, starting at `*known` (the set that
/// worked last time) — wasi-nn cannot ask a graph for its input names, and public exports of
/// the same model name their inputs differently. A set is refused with
/// [`NnErrorKind::InvalidArgument`]; any other error ends the search. On success `*known` is
/// the index of the set that worked.
pub fn run_first_accepted(
    graph: &dyn Infer,
    candidates: &[Vec<(&str, &Tensor)>],
    known: &mut usize,
) -> Result<Outputs, NnError> {
    let start = (*known).min(candidates.len().saturating_sub(1));
    let order = (start..candidates.len()).chain(0..start);
    let mut refusals = Vec::new();
    for i in order {
        match graph.run(&candidates[i]) {
            Ok(out) => {
                *known = i;
                return Ok(out);
            }
            Err(e) if e.kind == NnErrorKind::InvalidArgument => refusals.push(format!(
                "{:?}: {}",
                candidates[i]
                    .iter()
                    .map(|(n, t)| format!("{n} {:?}", t.element_type()))
                    .collect::<Vec<_>>(),
                e.message
            )),
            Err(e) => return Err(e),
        }
    }
    Err(NnError::invalid(format!(
        "the graph accepts none of the input sets this plugin knows: {}",
        refusals.join("; ")
    )))
}

pub use imp::{load, Graph};

#[cfg(all(target_family = "wasm", feature = "nn"))]
mod imp {
    use super::{ElementType, Infer, NnError, NnErrorKind, Outputs, Tensor};

    mod wit {
        wit_bindgen::generate!({
            path: "../../wit/wasi-nn",
            world: "ml",
        });
    }
    use wit::wasi::nn::{errors, graph, inference, tensor};

    /// A graph the host loaded by name, with one execution context (an instance answers one
    /// call at a time, so one context per graph is enough).
    pub struct Graph {
        name: String,
        // Kept alive for the context's sake; the host frees both when the instance goes.
        _graph: graph::Graph,
        context: inference::GraphExecutionContext,
    }

    impl std::fmt::Debug for Graph {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Graph").field("name", &self.name).finish()
        }
    }

    fn convert(e: errors::Error) -> NnError {
        use errors::ErrorCode as C;
        let kind = match e.code() {
            C::Security => NnErrorKind::Denied,
            C::NotFound => NnErrorKind::NotFound,
            C::UnsupportedOperation | C::InvalidEncoding => NnErrorKind::Unsupported,
            C::InvalidArgument => NnErrorKind::InvalidArgument,
            C::Timeout => NnErrorKind::Timeout,
            C::TooLarge => NnErrorKind::TooLarge,
            C::RuntimeError | C::Unknown => NnErrorKind::Runtime,
        };
        NnError::new(kind, e.data())
    }

    /// Load the graph the host knows as `name` (for imbed: `<model folder>/<name>.onnx`, when
    /// granted and vouched for by the folder's manifest).
    pub fn load(name: &str) -> Result<Graph, NnError> {
        let g = graph::load_by_name(name).map_err(convert)?;
        let context = g.init_execution_context().map_err(convert)?;
        Ok(Graph {
            name: name.to_string(),
            _graph: g,
            context,
        })
    }

    impl Graph {
        /// The name it was loaded by.
        pub fn name(&self) -> &str {
            &self.name
        }
    }

    fn to_wit(t: &Tensor) -> Result<tensor::Tensor, NnError> {
        let ty = match t.element_type() {
            ElementType::F16 => tensor::TensorType::Fp16,
            ElementType::F32 => tensor::TensorType::Fp32,
            ElementType::I32 => tensor::TensorType::I32,
            ElementType::I64 => tensor::TensorType::I64,
            ElementType::Other => {
                return Err(NnError::new(
                    NnErrorKind::InvalidArgument,
                    "this plugin sends f16, f32, i32 and i64 tensors only",
                ))
            }
        };
        Ok(tensor::Tensor::new(t.shape(), ty, t.bytes()))
    }

    fn from_wit(t: &tensor::Tensor) -> Result<Tensor, NnError> {
        let ty = match t.ty() {
            tensor::TensorType::Fp16 => ElementType::F16,
            tensor::TensorType::Fp32 => ElementType::F32,
            tensor::TensorType::I32 => ElementType::I32,
            tensor::TensorType::I64 => ElementType::I64,
            _ => ElementType::Other,
        };
        Tensor::from_raw(t.dimensions(), ty, t.data())
    }

    impl Infer for Graph {
        fn run(&self, inputs: &[(&str, &Tensor)]) -> Result<Outputs, NnError> {
            let named = inputs
                .iter()
                .map(|(n, t)| Ok((n.to_string(), to_wit(t)?)))
                .collect::<Result<Vec<_>, NnError>>()?;
            let out = self.context.compute(named).map_err(convert)?;
            let out = out
                .iter()
                .map(|(n, t)| Ok((n.clone(), from_wit(t)?)))
                .collect::<Result<Vec<_>, NnError>>()?;
            Ok(Outputs(out))
        }
    }
}

#[cfg(not(all(target_family = "wasm", feature = "nn")))]
mod imp {
    use super::{Infer, NnError, NnErrorKind, Outputs, Tensor};

    /// A graph the host loaded by name. Outside a component built with the `nn` feature there
    /// is no wasi-nn, so [`load`] always fails and no value of this type exists.
    #[derive(Debug)]
    pub struct Graph {
        never: std::convert::Infallible,
    }

    /// Always [`NnErrorKind::Unsupported`] here: wasi-nn exists only inside a component built
    /// with the SDK's `nn` feature.
    pub fn load(name: &str) -> Result<Graph, NnError> {
        Err(NnError::new(
            NnErrorKind::Unsupported,
            format!(
                "graph {name:?}: this build has no wasi-nn (a component built with the SDK's `nn` feature is needed)"
            ),
        ))
    }

    impl Graph {
        /// The name it was loaded by.
        pub fn name(&self) -> &str {
            match self.never {}
        }
    }

    impl Infer for Graph {
        fn run(&self, _: &[(&str, &Tensor)]) -> Result<Outputs, NnError> {
            match self.never {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn tensors_check_their_shape_and_round_trip() {
        let t = Tensor::f32(&[2, 2], &[1.0, -2.5, 0.0, 3.25]).unwrap();
        assert_eq!(t.shape(), &[2, 2]);
        assert_eq!(t.bytes().len(), 16);
        assert_eq!(t.to_f32().unwrap(), [1.0, -2.5, 0.0, 3.25]);
        assert!(Tensor::f32(&[3], &[1.0]).is_err());
        assert!(Tensor::i64(&[usize::MAX, 2], &[]).is_err());
        let ids = Tensor::i64(&[1, 2], &[101, -1]).unwrap();
        assert_eq!(&ids.bytes()[8..], &(-1i64).to_le_bytes());
        assert!(ids.to_f32().is_err(), "ints are not embeddings");
        assert!(Tensor::from_raw(vec![2], ElementType::F32, vec![0; 7]).is_err());
        assert!(
            Tensor::from_raw(vec![u32::MAX, u32::MAX, u32::MAX], ElementType::F32, vec![]).is_err()
        );
    }

    #[test]
    fn half_floats_widen_exactly() {
        for (bits, want) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x0000, 0.0),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x3555, 0.333_251_95),
        ] {
            assert_eq!(f16_to_f32(bits), want, "{bits:#06x}");
        }
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
        let t = Tensor::from_raw(vec![2], ElementType::F16, vec![0x00, 0x3c, 0x00, 0xc0]).unwrap();
        assert_eq!(t.to_f32().unwrap(), [1.0, -2.0]);
    }

    #[test]
    fn outputs_are_picked_by_name_or_alone() {
        let t = Tensor::f32(&[1], &[1.0]).unwrap();
        let two = Outputs(vec![
            ("a".into(), t.clone()),
            ("image_embeds".into(), t.clone()),
        ]);
        assert_eq!(
            two.first_of(&["text_embeds", "image_embeds"]).unwrap().0,
            "image_embeds"
        );
        let err = two.first_of(&["x"]).unwrap_err();
        assert!(err.message.contains("[\"a\", \"image_embeds\"]"), "{err}");
        let one = Outputs(vec![("logits".into(), t)]);
        assert_eq!(one.first_of(&["x"]).unwrap().0, "logits");
    }

    /// Accepts only inputs named as in `wanted`.
    struct Picky {
        wanted: Vec<&'static str>,
        calls: RefCell<usize>,
        fail: Option<NnErrorKind>,
    }

    impl Infer for Picky {
        fn run(&self, inputs: &[(&str, &Tensor)]) -> Result<Outputs, NnError> {
            *self.calls.borrow_mut() += 1;
            if let Some(kind) = self.fail {
                return Err(NnError::new(kind, "down"));
            }
            let names: Vec<&str> = inputs.iter().map(|(n, _)| *n).collect();
            if names == self.wanted {
                Ok(Outputs(vec![("out".into(), inputs[0].1.clone())]))
            } else {
                Err(NnError::invalid(format!("unknown input {:?}", names[0])))
            }
        }
    }

    #[test]
    fn the_first_accepted_input_set_is_found_and_remembered() {
        let t = Tensor::i64(&[1], &[1]).unwrap();
        let sets = vec![vec![("a", &t), ("b", &t)], vec![("ids", &t)]];
        let graph = Picky {
            wanted: vec!["ids"],
            calls: RefCell::new(0),
            fail: None,
        };
        let mut known = 0;
        run_first_accepted(&graph, &sets, &mut known).unwrap();
        assert_eq!(known, 1);
        assert_eq!(*graph.calls.borrow(), 2);
        run_first_accepted(&graph, &sets, &mut known).unwrap();
        assert_eq!(*graph.calls.borrow(), 3, "the known set is tried first");

        let none = Picky {
            wanted: vec!["zzz"],
            calls: RefCell::new(0),
            fail: None,
        };
        let err = run_first_accepted(&none, &sets, &mut 0).unwrap_err();
        assert_eq!(err.kind, NnErrorKind::InvalidArgument);
        assert!(err.message.contains("ids I64"), "{err}");

        let down = Picky {
            wanted: vec![],
            calls: RefCell::new(0),
            fail: Some(NnErrorKind::Timeout),
        };
        let err = run_first_accepted(&down, &sets, &mut 0).unwrap_err();
        assert_eq!(err.kind, NnErrorKind::Timeout);
        assert_eq!(
            *down.calls.borrow(),
            1,
            "only refusals move on to the next set"
        );
    }

    #[test]
    fn without_wasi_nn_loading_is_unsupported_and_counts_as_unavailable() {
        let err = load("text").unwrap_err();
        assert_eq!(err.kind, NnErrorKind::Unsupported);
        assert!(err.is_unavailable());
        assert!(err.to_string().contains("\"text\""), "{err}");
    }
}
