//! The ONNX Runtime layer on `ort`: finding and checking the library (ort panics on a missing
//! or wrong file, so it is opened and checked here first), one session per graph, tensors in and
//! out with every check done before ONNX Runtime sees them, and runs that another thread can stop.

use std::ffi::{c_char, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::sync::Mutex;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{RunOptions, Session};
use ort::tensor::TensorElementType;
use ort::value::{DynValue, Tensor, Value, ValueType};
use ort::AsPointer;

use super::{NnError, NnErrorCode as Code, TensorData, TensorType};

/// The ONNX Runtime release `scripts/setup` fetches (the one ort 2.0.0-rc.10 targets).
pub(super) const ORT_RELEASE: &str = "1.22.1";

const HOW_TO_GET_IT: &str = "run ./imbed.sh once (setup fetches ONNX Runtime) or set IMBED_ONNXRUNTIME=/path/libonnxruntime.so.X";

/// The file to load: the configured one, else the first default location that has one.
pub(super) fn resolve_library(
    configured: Option<&Path>,
    dirs: &[PathBuf],
) -> Result<PathBuf, String> {
    if let Some(path) = configured {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(format!(
                "the ONNX Runtime library {} is not there: {HOW_TO_GET_IT}",
                path.display()
            ))
        };
    }
    let mut searched = Vec::new();
    for dir in default_dirs(dirs) {
        let pinned = dir.join(format!("libonnxruntime.so.{ORT_RELEASE}"));
        if pinned.is_file() {
            return Ok(pinned);
        }
        searched.push(dir.display().to_string());
    }
    Err(format!(
        "no ONNX Runtime library found (looked for libonnxruntime.so.{ORT_RELEASE} in {}): {HOW_TO_GET_IT}",
        searched.join(", ")
    ))
}

/// The configured folders, then `target/onnxruntime` of the checkout the binary was built in
/// (where `scripts/setup` unpacks it): beside `target/<profile>/imbed` and the test binaries in
/// `target/<profile>/deps/`.
fn default_dirs(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut all = dirs.to_vec();
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        for up in exe_dir.ancestors().skip(1).take(2) {
            all.push(up.join("onnxruntime"));
        }
    }
    all
}

/// Open the file and ask it its version, without handing it to ort.
pub(super) fn probe_library(path: &Path) -> Result<String, String> {
    if !path.is_file() {
        return Err(format!(
            "the ONNX Runtime library {} is not there: {HOW_TO_GET_IT}",
            path.display()
        ));
    }
    // SAFETY: opening a shared library runs its initialisers. The file is the one the user
    // configured or setup installed as ONNX Runtime; it is only inspected here.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
        format!(
            "cannot open the ONNX Runtime library {}: {e}: {HOW_TO_GET_IT}",
            path.display()
        )
    })?;
    // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime release.
    let get_base = unsafe {
        lib.get::<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase>(b"OrtGetApiBase")
    }
    .map_err(|_| {
        format!(
            "{} is not an ONNX Runtime library (it has no OrtGetApiBase): {HOW_TO_GET_IT}",
            path.display()
        )
    })?;
    // SAFETY: the function takes nothing and returns a pointer to a static table.
    let base = unsafe { get_base() };
    if base.is_null() {
        return Err(format!("{} returned no API table", path.display()));
    }
    // SAFETY: `base` is the library's static `OrtApiBase`; the version string is static too.
    let version = unsafe { CStr::from_ptr(((*base).GetVersionString)()) }
        .to_string_lossy()
        .into_owned();
    let minor: u32 = version
        .strip_prefix("1.")
        .and_then(|r| r.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if minor < ort::MINOR_VERSION {
        return Err(format!(
            "ONNX Runtime {version} at {} is too old: imbed needs 1.{} or newer ({ORT_RELEASE} is what setup fetches): {HOW_TO_GET_IT}",
            path.display(),
            ort::MINOR_VERSION
        ));
    }
    // SAFETY: as above; `GetApi` returns null for an API version the library does not serve.
    let api = unsafe { ((*base).GetApi)(ort::sys::ORT_API_VERSION) };
    if api.is_null() {
        return Err(format!(
            "ONNX Runtime {version} at {} does not serve API version {}",
            path.display(),
            ort::sys::ORT_API_VERSION
        ));
    }
    Ok(version)
}

/// The library ort loaded: ort keeps one handle for the process, so it is loaded once.
static LOADED: Mutex<Option<(PathBuf, String)>> = Mutex::new(None);

pub(super) fn loaded_library() -> Option<(PathBuf, String)> {
    LOADED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Check `path`, then hand it to ort (once per process). Returns the version.
pub(super) fn load_library(path: &Path) -> Result<String, String> {
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((p, version)) = loaded.as_ref() {
        if p == path {
            return Ok(version.clone());
        }
        return Err(format!(
            "ONNX Runtime is already loaded from {} in this process; restart imbed to use {}",
            p.display(),
            path.display()
        ));
    }
    let version = probe_library(path)?;
    let path_text = path
        .to_str()
        .ok_or_else(|| format!("the library path {} is not UTF-8", path.display()))?;
    // The checks above cover what ort would panic on; a panic left is a bug, kept from the
    // host all the same.
    let committed = std::panic::catch_unwind(|| {
        ort::init_from(path_text).with_name("imbed").commit()?;
        // Opens the library and fetches the API table now rather than in the first session.
        let _ = ort::api();
        Ok::<(), ort::Error>(())
    });
    match committed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("ONNX Runtime {version} at {}: {e}", path.display())),
        Err(_) => {
            return Err(format!(
                "ONNX Runtime {version} at {} could not be initialised",
                path.display()
            ))
        }
    }
    tracing::info!("ONNX Runtime {version} loaded from {}", path.display());
    *loaded = Some((path.to_path_buf(), version.clone()));
    Ok(version)
}

/// A run's stop flag (ONNX Runtime's run options): `stop` from any thread ends the run at the
/// next operator boundary with an error.
pub(super) struct Stop(RunOptions);

impl Stop {
    pub(super) fn new() -> Result<Stop, NnError> {
        RunOptions::new()
            .map(Stop)
            .map_err(|e| NnError::new(Code::RuntimeError, format!("run options: {e}")))
    }

    pub(super) fn stop(&self) {
        let _ = self.0.terminate();
    }
}

/// A graph input or output as the session declares it.
#[derive(Debug, Clone)]
pub(super) struct Port {
    pub name: String,
    /// `None` for element types imbed does not pass (and for non-tensor values).
    pub ty: Option<TensorType>,
    /// The ONNX type, for messages.
    pub onnx: String,
    /// -1 for a dynamic dimension.
    pub dims: Vec<i64>,
}

fn port(name: &str, ty: &ValueType) -> Port {
    match ty {
        ValueType::Tensor { ty, shape, .. } => Port {
            name: name.to_string(),
            ty: match ty {
                TensorElementType::Float32 => Some(TensorType::F32),
                TensorElementType::Float16 => Some(TensorType::F16),
                TensorElementType::Int32 => Some(TensorType::I32),
                TensorElementType::Int64 => Some(TensorType::I64),
                _ => None,
            },
            onnx: format!("{ty:?}").to_lowercase(),
            dims: shape.to_vec(),
        },
        other => Port {
            name: name.to_string(),
            ty: None,
            onnx: format!("{other:?}"),
            dims: Vec::new(),
        },
    }
}

/// Inputs checked against the graph, in the graph's own terms.
pub struct Checked {
    names: Vec<CString>,
    tensors: Vec<TensorData>,
}

/// One session; `Run` on it is thread-safe in ONNX Runtime, so every instance of the plugin
/// runs on it at once (ort's safe `run` takes `&mut self`, hence the raw call in [`Graph::run`]).
pub(super) struct Graph {
    session: Session,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
}

impl Graph {
    pub(super) fn from_bytes(bytes: &[u8], threads: usize) -> Result<Graph, NnError> {
        let session = Session::builder()
            .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::Level3))
            .and_then(|b| b.with_intra_threads(threads))
            .and_then(|b| b.with_inter_threads(1))
            .and_then(|b| b.commit_from_memory(bytes))
            .map_err(|e| {
                NnError::new(
                    Code::InvalidEncoding,
                    format!("ONNX Runtime cannot load it: {e}"),
                )
            })?;
        let inputs = session
            .inputs
            .iter()
            .map(|i| port(&i.name, &i.input_type))
            .collect();
        let outputs = session
            .outputs
            .iter()
            .map(|o| port(&o.name, &o.output_type))
            .collect();
        Ok(Graph {
            session,
            inputs,
            outputs,
        })
    }

    /// Every check a guest's tensors need before ONNX Runtime sees them: known and distinct
    /// names, all inputs given, supported and matching element types, rank and fixed
    /// dimensions, element counts without overflow, data length, size cap, no NaN.
    pub(super) fn check_inputs(
        &self,
        inputs: Vec<(String, TensorData)>,
        max_bytes: u64,
    ) -> Result<Checked, NnError> {
        let invalid = |m: String| NnError::new(Code::InvalidArgument, m);
        let mut names = Vec::with_capacity(inputs.len());
        let mut tensors = Vec::with_capacity(inputs.len());
        let mut seen = vec![false; self.inputs.len()];
        for (name, t) in inputs {
            let Some(index) = self.inputs.iter().position(|p| p.name == name) else {
                return Err(invalid(format!(
                    "the graph has no input {name:?} (its inputs: {})",
                    self.input_names()
                )));
            };
            if std::mem::replace(&mut seen[index], true) {
                return Err(invalid(format!("input {name:?} is given twice")));
            }
            let port = &self.inputs[index];
            if !t.ty.supported() {
                return Err(NnError::new(
                    Code::UnsupportedOperation,
                    format!(
                        "input {name:?}: tensor type {} is not supported (f32, f16, i64 and i32 are)",
                        t.ty.name()
                    ),
                ));
            }
            match port.ty {
                Some(ty) if ty == t.ty => {}
                _ => {
                    return Err(invalid(format!(
                        "input {name:?} takes {}, not {}",
                        port.ty.map_or(port.onnx.as_str(), |t| t.name()),
                        t.ty.name()
                    )))
                }
            }
            if t.dims.len() != port.dims.len() {
                return Err(invalid(format!(
                    "input {name:?} has rank {} (dimensions {:?}), but the graph takes rank {} ({})",
                    t.dims.len(),
                    t.dims,
                    port.dims.len(),
                    shape_text(&port.dims)
                )));
            }
            for (axis, (&given, &wanted)) in t.dims.iter().zip(&port.dims).enumerate() {
                if given == 0 {
                    return Err(invalid(format!(
                        "input {name:?}: dimension {axis} is 0; empty tensors are not supported"
                    )));
                }
                if wanted > 0 && i64::from(given) != wanted {
                    return Err(invalid(format!(
                        "input {name:?}: dimension {axis} is {given}, but the graph takes {} there",
                        shape_text(&port.dims)
                    )));
                }
            }
            let elements = t
                .dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d)))
                .ok_or_else(|| {
                    NnError::new(
                        Code::TooLarge,
                        format!("input {name:?}: dimensions {:?} overflow", t.dims),
                    )
                })?;
            let bytes = elements.checked_mul(t.ty.size()).ok_or_else(|| {
                NnError::new(
                    Code::TooLarge,
                    format!("input {name:?}: dimensions {:?} overflow", t.dims),
                )
            })?;
            if bytes > max_bytes {
                return Err(NnError::new(
                    Code::TooLarge,
                    format!(
                        "input {name:?} has {elements} elements ({bytes} bytes); tensors are capped at {max_bytes} bytes ([nn] max_tensor_mb)"
                    ),
                ));
            }
            if t.bytes.len() as u64 != bytes {
                return Err(invalid(format!(
                    "input {name:?}: dimensions {:?} of {} need {bytes} bytes of data, but {} were given",
                    t.dims,
                    t.ty.name(),
                    t.bytes.len()
                )));
            }
            if let Some(i) = first_nan(&t) {
                return Err(invalid(format!("input {name:?}: element {i} is NaN")));
            }
            let c_name = CString::new(name.clone())
                .map_err(|_| invalid(format!("input name {name:?} contains a NUL byte")))?;
            names.push(c_name);
            tensors.push(t);
        }
        if let Some(missing) = self.inputs.iter().zip(&seen).find(|(_, s)| !**s) {
            return Err(invalid(format!(
                "input {:?} is missing (the graph's inputs: {})",
                missing.0.name,
                self.input_names()
            )));
        }
        Ok(Checked { names, tensors })
    }

    fn input_names(&self) -> String {
        self.inputs
            .iter()
            .map(|p| format!("{} {} {}", p.name, p.onnx, shape_text(&p.dims)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Run on the calling thread (a pool thread). `max_bytes` caps each output.
    pub(super) fn run(
        &self,
        inputs: Checked,
        stop: &Stop,
        max_bytes: u64,
    ) -> Result<Vec<(String, TensorData)>, NnError> {
        let runtime = |m: String| NnError::new(Code::RuntimeError, m);
        let values = inputs
            .tensors
            .iter()
            .map(to_value)
            .collect::<Result<Vec<DynValue>, _>>()?;
        let input_names: Vec<*const c_char> = inputs.names.iter().map(|n| n.as_ptr()).collect();
        let input_ptrs: Vec<*const ort::sys::OrtValue> = values.iter().map(|v| v.ptr()).collect();
        let output_c: Vec<CString> = self
            .outputs
            .iter()
            .map(|o| CString::new(o.name.clone()).unwrap_or_default())
            .collect();
        let output_names: Vec<*const c_char> = output_c.iter().map(|n| n.as_ptr()).collect();
        let mut output_ptrs: Vec<*mut ort::sys::OrtValue> = vec![ptr::null_mut(); output_c.len()];
        // SAFETY: ONNX Runtime documents `Run` as safe to call concurrently on one session.
        // Every pointer array lives until the call returns and has the length passed with it;
        // the input values and the session outlive the call; outputs are written into
        // `output_ptrs`, one per name.
        let status = unsafe {
            (ort::api().Run)(
                self.session.ptr().cast_mut(),
                stop.0.ptr(),
                input_names.as_ptr(),
                input_ptrs.as_ptr(),
                input_ptrs.len(),
                output_names.as_ptr(),
                output_names.len(),
                output_ptrs.as_mut_ptr(),
            )
        };
        // Take ownership of whatever was written, so it is released on every path.
        let outputs: Vec<Option<DynValue>> = output_ptrs
            .iter()
            .map(|p| {
                NonNull::new(*p).map(|p| {
                    // SAFETY: a value ONNX Runtime just created for this session; owned here.
                    unsafe { Value::from_ptr(p, Some(self.session.inner())) }
                })
            })
            .collect();
        if !status.0.is_null() {
            // SAFETY: a non-null status from `Run`; its message is valid until it is released.
            let message = unsafe {
                let m = CStr::from_ptr((ort::api().GetErrorMessage)(status.0))
                    .to_string_lossy()
                    .into_owned();
                (ort::api().ReleaseStatus)(status.0);
                m
            };
            let code = if message.contains("terminate") {
                Code::Timeout
            } else {
                Code::RuntimeError
            };
            return Err(NnError::new(code, format!("ONNX Runtime: {message}")));
        }
        self.outputs
            .iter()
            .zip(outputs)
            .map(|(port, value)| {
                let value = value
                    .ok_or_else(|| runtime(format!("output {:?} was not produced", port.name)))?;
                Ok((
                    port.name.clone(),
                    from_value(&port.name, &value, max_bytes)?,
                ))
            })
            .collect()
    }
}

fn shape_text(dims: &[i64]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| if *d < 0 { "?".into() } else { d.to_string() })
        .collect();
    format!("[{}]", parts.join(", "))
}

fn first_nan(t: &TensorData) -> Option<usize> {
    match t.ty {
        TensorType::F32 => t
            .bytes
            .chunks_exact(4)
            .position(|c| f32::from_le_bytes(le(c)).is_nan()),
        TensorType::F16 => t
            .bytes
            .chunks_exact(2)
            .position(|c| half::f16::from_le_bytes(le(c)).is_nan()),
        _ => None,
    }
}

/// A chunk of exactly N bytes as an array (callers use `chunks_exact(N)`).
fn le<const N: usize>(c: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&c[..N]);
    a
}

fn to_value(t: &TensorData) -> Result<DynValue, NnError> {
    let shape: Vec<i64> = t.dims.iter().map(|&d| i64::from(d)).collect();
    let made = match t.ty {
        TensorType::F32 => Tensor::from_array((
            shape,
            t.bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(le(c)))
                .collect::<Vec<_>>(),
        ))
        .map(Value::into_dyn),
        TensorType::F16 => Tensor::from_array((
            shape,
            t.bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes(le(c)))
                .collect::<Vec<_>>(),
        ))
        .map(Value::into_dyn),
        TensorType::I32 => Tensor::from_array((
            shape,
            t.bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(le(c)))
                .collect::<Vec<_>>(),
        ))
        .map(Value::into_dyn),
        TensorType::I64 => Tensor::from_array((
            shape,
            t.bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(le(c)))
                .collect::<Vec<_>>(),
        ))
        .map(Value::into_dyn),
        other => {
            return Err(NnError::new(
                Code::UnsupportedOperation,
                format!("tensor type {} is not supported", other.name()),
            ))
        }
    };
    made.map_err(|e| NnError::new(Code::InvalidArgument, format!("tensor: {e}")))
}

fn from_value(name: &str, v: &DynValue, max_bytes: u64) -> Result<TensorData, NnError> {
    let unsupported = |what: String| {
        NnError::new(
            Code::UnsupportedOperation,
            format!("output {name:?} is {what}; imbed passes f32, f16, i64 and i32 tensors"),
        )
    };
    let (ty, shape) = match v.dtype() {
        ValueType::Tensor { ty, shape, .. } => (*ty, shape.to_vec()),
        other => return Err(unsupported(format!("{other:?}"))),
    };
    let dims = shape
        .iter()
        .map(|&d| u32::try_from(d))
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| {
            NnError::new(
                Code::TooLarge,
                format!("output {name:?} has dimensions {shape:?} beyond u32"),
            )
        })?;
    let (ty, size) = match ty {
        TensorElementType::Float32 => (TensorType::F32, 4),
        TensorElementType::Float16 => (TensorType::F16, 2),
        TensorElementType::Int32 => (TensorType::I32, 4),
        TensorElementType::Int64 => (TensorType::I64, 8),
        other => return Err(unsupported(format!("a tensor of {other:?}"))),
    };
    let elements: u64 = dims.iter().map(|&d| u64::from(d)).product();
    if elements.saturating_mul(size) > max_bytes {
        return Err(NnError::new(
            Code::TooLarge,
            format!(
                "output {name:?} has {elements} elements; tensors are capped at {max_bytes} bytes ([nn] max_tensor_mb)"
            ),
        ));
    }
    let extract_err =
        |e: ort::Error| NnError::new(Code::RuntimeError, format!("reading output {name:?}: {e}"));
    let bytes: Vec<u8> = match ty {
        TensorType::F32 => v
            .try_extract_tensor::<f32>()
            .map_err(extract_err)?
            .1
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        TensorType::F16 => v
            .try_extract_tensor::<half::f16>()
            .map_err(extract_err)?
            .1
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        TensorType::I32 => v
            .try_extract_tensor::<i32>()
            .map_err(extract_err)?
            .1
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        _ => v
            .try_extract_tensor::<i64>()
            .map_err(extract_err)?
            .1
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
    };
    Ok(TensorData { dims, ty, bytes })
}
