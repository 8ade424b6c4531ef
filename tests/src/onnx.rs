//! ONNX graphs for the tests and benchmarks: converting checkpoints with `scripts/onnx`, and
//! running a graph in Python onnxruntime (`scripts/onnx/run.py`) — the same .onnx file, the
//! same ONNX Runtime release the host loads.
//!
//! [`PythonGraph`] implements the guest SDK's [`Infer`], so a plugin's graph path (its input
//! sets, output picking, pooling and normalisation) runs natively in a test against a real graph
//! in a real ONNX Runtime, before and besides the host's wasi-nn.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The guest SDK's tensors and errors, for benchmarks that build graph inputs.
pub use imbed_plugin_sdk::nn;
use imbed_plugin_sdk::nn::{ElementType, Infer, NnError, NnErrorKind, Outputs, Tensor};
use serde_json::{json, Value};

use crate::repo_root;

/// The folder `scripts/setup` installs the converter's pinned `onnx` and `numpy` into (keep in
/// step with `onnx_version` and `numpy_version` there).
pub fn tools_dir() -> PathBuf {
    repo_root().join("target/python/onnx-1.18.0-numpy-2.3.5")
}

#[track_caller]
fn python(script: &str, args: &[&Path], stdin: Option<&[u8]>) -> Vec<u8> {
    let tools = tools_dir();
    assert!(
        tools.join(".installed").is_file(),
        "the ONNX converter's Python packages are missing from {}: run scripts/setup --test",
        tools.display()
    );
    let mut child = Command::new("python3")
        .arg(repo_root().join("scripts/onnx").join(script))
        .args(args)
        .env("PYTHONPATH", &tools)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run python3");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input)
            .expect("write to python3");
    }
    let out = child.wait_with_output().expect("python3 ran");
    assert!(
        out.status.success(),
        "scripts/onnx/{script} failed (is onnxruntime installed? run scripts/setup --test):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Convert a CLIP checkpoint folder into `vision.onnx` and `text.onnx` in `out`.
#[track_caller]
pub fn convert_clip(model_dir: &Path, out: &Path) {
    python("clip.py", &[model_dir, Path::new("--out-dir"), out], None);
}

/// Convert a BERT checkpoint folder into `out` (a `.onnx` path).
#[track_caller]
pub fn convert_minilm(model_dir: &Path, out: &Path) {
    python("minilm.py", &[model_dir, Path::new("--out"), out], None);
}

/// A graph file run by Python onnxruntime on `threads` threads, one process per run.
#[derive(Debug, Clone)]
pub struct PythonGraph {
    /// The .onnx file.
    pub path: PathBuf,
    /// Intra-op threads.
    pub threads: usize,
}

impl PythonGraph {
    /// `path`, on one thread.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PythonGraph {
            path: path.into(),
            threads: 1,
        }
    }

    /// Run `inputs` once, then `repeat` more times; returns the outputs and the seconds of each
    /// repeated run (for benchmarks: ONNX Runtime alone, no process start in the figure).
    pub fn run_timed(
        &self,
        inputs: &[(&str, &Tensor)],
        repeat: usize,
    ) -> Result<(Outputs, Vec<f64>), NnError> {
        let mut feeds = serde_json::Map::new();
        for (name, t) in inputs {
            let data: Vec<Value> = match t.element_type() {
                ElementType::F32 | ElementType::F16 => {
                    t.to_f32()?.into_iter().map(|v| json!(v)).collect()
                }
                ElementType::I64 => t
                    .bytes()
                    .chunks_exact(8)
                    .map(|b| json!(i64::from_le_bytes(b.try_into().expect("8 bytes"))))
                    .collect(),
                ElementType::I32 => t
                    .bytes()
                    .chunks_exact(4)
                    .map(|b| json!(i32::from_le_bytes(b.try_into().expect("4 bytes"))))
                    .collect(),
                _ => {
                    return Err(NnError::new(
                        NnErrorKind::InvalidArgument,
                        "unsupported type",
                    ))
                }
            };
            let dtype = match t.element_type() {
                ElementType::I64 => "int64",
                ElementType::I32 => "int32",
                _ => "float32",
            };
            feeds.insert(
                name.to_string(),
                json!({"dtype": dtype, "shape": t.shape(), "data": data}),
            );
        }
        let request = json!({
            "graph": self.path,
            "threads": self.threads,
            "repeat": repeat,
            "inputs": feeds,
        });
        // The same process answers, so an unknown input name is a refusal, as the host's is.
        let out = run_py(&serde_json::to_vec(&request).expect("json"))?;
        let reply: Value = serde_json::from_slice(&out).expect("run.py writes JSON");
        let mut outputs = Vec::new();
        for (name, t) in reply["outputs"].as_object().expect("outputs") {
            let shape: Vec<u32> = t["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dim") as u32)
                .collect();
            let values: Vec<f32> = t["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect();
            let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            outputs.push((name.clone(), Tensor::f32(&dims, &values)?));
        }
        let seconds = reply["seconds"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        Ok((Outputs(outputs), seconds))
    }
}

fn run_py(request: &[u8]) -> Result<Vec<u8>, NnError> {
    let mut child = Command::new("python3")
        .arg(repo_root().join("scripts/onnx/run.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run python3");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(request)
        .expect("write to python3");
    let out = child.wait_with_output().expect("python3 ran");
    if out.status.success() {
        return Ok(out.stdout);
    }
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    // onnxruntime's words for inputs that do not fit the graph.
    let kind = if err.contains("INVALID_ARGUMENT") || err.contains("Invalid input name") {
        NnErrorKind::InvalidArgument
    } else {
        NnErrorKind::Runtime
    };
    Err(NnError::new(kind, err))
}

impl Infer for PythonGraph {
    fn run(&self, inputs: &[(&str, &Tensor)]) -> Result<Outputs, NnError> {
        self.run_timed(inputs, 0).map(|(out, _)| out)
    }
}
