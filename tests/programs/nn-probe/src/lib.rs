//! A text embedder for tests that calls `wasi:nn` as its `mode` setting says, well or hostile.
//! Every wasi-nn error comes back as `other` with the text `wasi-nn <code>: <host message>`, so
//! tests see what the host answered; a success returns the graph's outputs as the vector.
//!
//! - `tiny`: graph `tiny` (see tests/fixtures/nn/make_graphs.py) on x=[1,0,0,1], ids=[1,2,3];
//!   returns [y0, y1, n0, n1, n2] (the host normalises it);
//! - `types`: graph `types` on h=[1.5,-2] (f16) and k=[1,2] (i32); returns [h2.., k1..];
//! - `slow`: graph `slow` on a 1024x1024 matrix (many seconds of work);
//! - `load-bytes`: `load` with model bytes, which the host refuses;
//! - `wrong-dtype`, `wrong-rank`, `huge` (2^40 elements), `nan`, `unknown-input`, `short-data`,
//!   `bf16`: graph `tiny` with that input defect.
//!
//! - `fuzz`: `rounds` (default 200) random calls, seeded by the `seed` setting: graph names,
//!   input names, element types, ranks, dimensions (0 to u32::MAX), data lengths (matching or
//!   not) and values (NaN, infinities) drawn at random. Each call must come back as a result,
//!   never a trap; returns [calls that computed, calls refused] (the host normalises it, so
//!   tests read the answer's presence, not the counts).
//!
//! Setting `graph` overrides the graph name `tiny` and `slow` load.

use imbed_plugin_sdk::{export_plugin, settings, Embedder, Error, ModelInfo, Plugin, Vector};

wit_bindgen::generate!({
    world: "ml",
    path: "../../../wit/wasi-nn",
});

use wasi::nn::errors::Error as NnError;
use wasi::nn::graph::{self, ExecutionTarget, GraphEncoding};
use wasi::nn::tensor::{Tensor, TensorType};

#[derive(Default)]
struct NnProbe;

fn nn_err(e: NnError) -> Error {
    use wasi::nn::errors::ErrorCode as C;
    let code = match e.code() {
        C::InvalidArgument => "invalid-argument",
        C::InvalidEncoding => "invalid-encoding",
        C::Timeout => "timeout",
        C::RuntimeError => "runtime-error",
        C::UnsupportedOperation => "unsupported-operation",
        C::TooLarge => "too-large",
        C::NotFound => "not-found",
        C::Security => "security",
        C::Unknown => "unknown",
    };
    Error::Other(format!("wasi-nn {code}: {}", e.data()))
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i64s(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Run graph `name` on `inputs` and return every output element as f32, in output order.
fn run(name: &str, inputs: Vec<(String, Tensor)>) -> Result<Vector, Error> {
    let graph = graph::load_by_name(name).map_err(nn_err)?;
    let ctx = graph.init_execution_context().map_err(nn_err)?;
    let outputs = ctx.compute(inputs).map_err(nn_err)?;
    let mut v = Vec::new();
    for (_, t) in outputs {
        let data = t.data();
        match t.ty() {
            TensorType::Fp32 => v.extend(
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            TensorType::I64 => v.extend(data.chunks_exact(8).map(|c| {
                i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
            })),
            TensorType::I32 => v.extend(
                data.chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32),
            ),
            TensorType::Fp16 => v.extend(
                data.chunks_exact(2)
                    .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))),
            ),
            other => return Err(Error::Other(format!("unexpected output type {other:?}"))),
        }
    }
    Ok(v)
}

/// IEEE half to single (normal numbers and zero are all the tests use).
fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    if exp == 0 {
        return sign * frac * 2f32.powi(-24);
    }
    sign * (1.0 + frac / 1024.0) * 2f32.powi(exp - 15)
}

fn f32_to_f16(x: f32) -> u16 {
    // Exact for the small values the tests send (1.5, -2).
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let frac = ((bits >> 13) & 0x3ff) as u16;
    sign | ((exp as u16) << 10) | frac
}

fn tiny_inputs(mode: &str) -> Vec<(String, Tensor)> {
    let x = f32s(&[1.0, 0.0, 0.0, 1.0]);
    let ids = i64s(&[1, 2, 3]);
    let ids_t = Tensor::new(&[1, 3], TensorType::I64, &ids);
    let x_t = match mode {
        "wrong-dtype" => Tensor::new(&[1, 4], TensorType::I64, &i64s(&[1, 0, 0, 1])),
        "wrong-rank" => Tensor::new(&[4], TensorType::Fp32, &x),
        "huge" => Tensor::new(&[1 << 20, 1 << 20], TensorType::Fp32, &x),
        "nan" => Tensor::new(&[1, 4], TensorType::Fp32, &f32s(&[1.0, f32::NAN, 0.0, 1.0])),
        "short-data" => Tensor::new(&[1, 4], TensorType::Fp32, &x[..12]),
        "bf16" => Tensor::new(&[1, 4], TensorType::Bf16, &[0u8; 8]),
        _ => Tensor::new(&[1, 4], TensorType::Fp32, &x),
    };
    let x_name = if mode == "unknown-input" { "z" } else { "x" };
    vec![(x_name.to_string(), x_t), ("ids".to_string(), ids_t)]
}

/// xorshift64*: a reproducible stream from the `seed` setting, so a failing seed can be rerun.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len() as u64) as usize]
    }
}

const TYPES: [(TensorType, usize); 7] = [
    (TensorType::Fp16, 2),
    (TensorType::Fp32, 4),
    (TensorType::Fp64, 8),
    (TensorType::Bf16, 2),
    (TensorType::U8, 1),
    (TensorType::I32, 4),
    (TensorType::I64, 8),
];

/// One random tensor: dimensions from tiny to absurd, data that matches them or not (kept
/// small either way, so the guest's own memory is not the limit), values that include NaN.
fn random_tensor(rng: &mut Rng) -> Tensor {
    let (ty, size) = *rng.pick(&TYPES);
    let rank = rng.below(5) as usize;
    let dims: Vec<u32> = (0..rank)
        .map(|_| *rng.pick(&[0, 1, 1, 2, 3, 4, 7, 1 << 16, 1 << 31, u32::MAX]))
        .collect();
    let elements = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d as usize))
        .filter(|&n| n <= 4096);
    let len = match (elements, rng.below(4)) {
        (Some(n), 0..=1) => n * size,
        (Some(n), 2) => (n * size).saturating_sub(1 + rng.below(8) as usize),
        _ => rng.below(256) as usize,
    };
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1e30];
    let data: Vec<u8> = (0..len)
        .map(|i| {
            if ty == TensorType::Fp32 && rng.below(8) == 0 {
                rng.pick(&specials).to_le_bytes()[i % 4]
            } else {
                rng.next() as u8
            }
        })
        .collect();
    Tensor::new(&dims, ty, &data)
}

/// `rounds` random calls; every one must return (Ok or Err), none may trap the instance.
fn fuzz(seed: u64, rounds: u32) -> Result<Vector, Error> {
    let mut rng = Rng(seed | 1);
    let (mut computed, mut refused) = (0f32, 0f32);
    for _ in 0..rounds {
        let name = rng.pick(&["tiny", "types", "tiny", "nope", "", "../tiny", "tiny.onnx"]);
        let graph = match graph::load_by_name(name) {
            Ok(g) => g,
            Err(_) => {
                refused += 1.0;
                continue;
            }
        };
        let ctx = match graph.init_execution_context() {
            Ok(c) => c,
            Err(_) => {
                refused += 1.0;
                continue;
            }
        };
        let inputs = (0..rng.below(4))
            .map(|_| {
                let input = rng
                    .pick(&["x", "ids", "h", "k", "", "x\0", "ïd"])
                    .to_string();
                (input, random_tensor(&mut rng))
            })
            .collect();
        match ctx.compute(inputs) {
            Ok(_) => computed += 1.0,
            Err(_) => refused += 1.0,
        }
    }
    Ok(vec![computed + 1.0, refused + 1.0])
}

impl Plugin for NnProbe {
    const NAME: &'static str = "nn-probe";
    const VERSION: &'static str = "0.1.0";
}

impl Embedder for NnProbe {
    fn text_model(&mut self) -> Result<ModelInfo, Error> {
        Ok(ModelInfo::new("nn-probe", "test/nn-probe"))
    }

    fn embed_text(&mut self, _text: &str) -> Result<Vector, Error> {
        let mode = settings::string("mode", "tiny");
        let graph_name = settings::string("graph", "");
        let named = |default: &str| {
            if graph_name.is_empty() {
                default.to_string()
            } else {
                graph_name.clone()
            }
        };
        match mode.as_str() {
            "load-bytes" => {
                let bytes = b"\x08\x0a\x12\x04fake onnx".to_vec();
                match graph::load(&[bytes], GraphEncoding::Onnx, ExecutionTarget::Cpu) {
                    Ok(_) => Err(Error::Other("the host accepted model bytes".into())),
                    Err(e) => Err(nn_err(e)),
                }
            }
            "types" => {
                let h: Vec<u8> = [1.5f32, -2.0]
                    .iter()
                    .flat_map(|x| f32_to_f16(*x).to_le_bytes())
                    .collect();
                let k: Vec<u8> = [1i32, 2].iter().flat_map(|x| x.to_le_bytes()).collect();
                run(
                    &named("types"),
                    vec![
                        ("h".into(), Tensor::new(&[2], TensorType::Fp16, &h)),
                        ("k".into(), Tensor::new(&[2], TensorType::I32, &k)),
                    ],
                )
            }
            "slow" => {
                let n = 1024usize;
                let x = f32s(&vec![0.001; n * n]);
                let out = run(
                    &named("slow"),
                    vec![(
                        "x".into(),
                        Tensor::new(&[n as u32, n as u32], TensorType::Fp32, &x),
                    )],
                )?;
                Ok(out[..8].to_vec())
            }
            "fuzz" => {
                let number = |key: &str, default: u64| {
                    settings::string(key, "").parse::<u64>().unwrap_or(default)
                };
                fuzz(number("seed", 1), number("rounds", 200) as u32)
            }
            other => run(&named("tiny"), tiny_inputs(other)),
        }
    }
}

export_plugin!(NnProbe: embedder);
