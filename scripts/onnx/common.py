"""Shared pieces of imbed's ONNX converters: a safetensors reader and a small graph builder.

The converters (minilm.py, clip.py) write ONNX graphs straight from a checkpoint's safetensors
and config.json with the `onnx` package and numpy: no PyTorch (several GB of wheels) and no
network. The graph follows transformers' modeling code op for op, so a graph and the candle
code in the plugins compute the same function of the same weights.

Two things every graph here respects, learnt the hard way:
- IR version 10 and opset 17: recent `onnx` releases write IR versions that older ONNX Runtime
  releases refuse, and opset 17 is the first with LayerNormalization, which ONNX Runtime runs as
  one fused kernel.
- No Gather over a Range: ONNX Runtime's graph optimiser has broken that pattern. Position
  embeddings are a Slice of the table, which is also what a position-id gather of 0..n computes.

The output is deterministic: the same inputs give the same bytes (no timestamps, no random
names, initialisers and nodes in a fixed order), so a converted file's SHA-256 can be pinned.
"""

import json
import os
import struct

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10
OPSET = 17
# transformers masks with the most negative float32 (torch.finfo(float32).min); so do we.
NEG = float(np.finfo(np.float32).min)

_DTYPES = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "U8": np.dtype("u1"),
}


def read_safetensors(path):
    """Every tensor of a safetensors file as a numpy array; floating tensors become float32.

    The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
    data_offsets) and the raw little-endian data; BF16 is widened by hand (numpy has no bf16).
    """
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise SystemExit(f"{path}: too short to be a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise SystemExit(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(data[8 : 8 + n])
    body = memoryview(data)[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        raw = body[start:end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif info["dtype"] in _DTYPES:
            array = np.frombuffer(raw, dtype=_DTYPES[info["dtype"]])
        else:
            continue
        array = array.reshape(shape)
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        out[name] = array
    return out


class Graph:
    """Nodes and initialisers of one graph, named in creation order."""

    def __init__(self, weights, prefix=""):
        self.weights = weights
        self.prefix = prefix
        self.nodes = []
        self.initializers = []
        self.inputs = []
        self.outputs = []
        self._count = 0

    def w(self, name):
        """A checkpoint tensor (float32) by name, with the checkpoint's optional prefix."""
        for key in (self.prefix + name, name):
            if key in self.weights:
                return self.weights[key]
        raise SystemExit(f"the checkpoint has no tensor {self.prefix + name!r}")

    def const(self, array, hint="c"):
        """Add an initialiser; returns its name."""
        name = f"{hint}.{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def i64(self, values, hint="shape"):
        return self.const(np.array(values, dtype=np.int64), hint)

    def f32(self, value, hint="k"):
        return self.const(np.array(value, dtype=np.float32), hint)

    def op(self, op_type, inputs, outputs=None, **attrs):
        """Add a node; returns its output name (or names when `outputs` is a number > 1)."""
        self._count += 1
        if outputs is None:
            outputs = [f"{op_type}:{self._count}"]
        elif isinstance(outputs, str):
            outputs = [outputs]
        self.nodes.append(
            helper.make_node(op_type, inputs, outputs, name=f"n{self._count}_{op_type}", **attrs)
        )
        return outputs[0] if len(outputs) == 1 else outputs

    def input(self, name, elem_type, shape):
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, value, name, elem_type, shape):
        """Expose `value` under `name`."""
        self.op("Identity", [value], name)
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    # Layers, as transformers computes them.

    def linear(self, x, prefix, bias=True):
        """x @ W.T + b, with the transpose done once here rather than in every run."""
        y = self.op("MatMul", [x, self.const(self.w(prefix + ".weight").T, "weight")])
        if bias:
            y = self.op("Add", [y, self.const(self.w(prefix + ".bias"), "bias")])
        return y

    def layer_norm(self, x, prefix, eps):
        return self.op(
            "LayerNormalization",
            [x, self.const(self.w(prefix + ".weight"), "ln_w"), self.const(self.w(prefix + ".bias"), "ln_b")],
            axis=-1,
            epsilon=float(eps),
        )

    def activation(self, x, name):
        if name == "quick_gelu":
            return self.op("Mul", [x, self.op("Sigmoid", [self.op("Mul", [x, self.f32(1.702)])])])
        if name == "gelu":
            # The exact (erf) GELU: x * 0.5 * (1 + erf(x / sqrt(2))).
            e = self.op("Erf", [self.op("Div", [x, self.f32(np.sqrt(2.0))])])
            return self.op("Mul", [self.op("Mul", [x, self.f32(0.5)]), self.op("Add", [e, self.f32(1.0)])])
        if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            cube = self.op("Mul", [self.op("Mul", [x, x]), x])
            inner = self.op("Add", [x, self.op("Mul", [cube, self.f32(0.044715)])])
            t = self.op("Tanh", [self.op("Mul", [inner, self.f32(np.sqrt(2.0 / np.pi))])])
            return self.op("Mul", [self.op("Mul", [x, self.f32(0.5)]), self.op("Add", [t, self.f32(1.0)])])
        if name == "relu":
            return self.op("Relu", [x])
        raise SystemExit(f"activation {name!r} is not supported by this converter")

    def attention(self, x, prefix, names, hidden, heads, mask=None):
        """Multi-head self-attention; `names` maps q, k, v, out to the checkpoint's layer names.
        `mask` is additive, broadcastable to (batch, heads, n, n)."""
        head_dim = hidden // heads
        split = self.i64([0, 0, heads, head_dim])
        q = self.op("Reshape", [self.linear(x, f"{prefix}.{names['q']}"), split])
        k = self.op("Reshape", [self.linear(x, f"{prefix}.{names['k']}"), split])
        v = self.op("Reshape", [self.linear(x, f"{prefix}.{names['v']}"), split])
        q = self.op("Transpose", [q], perm=[0, 2, 1, 3])
        k = self.op("Transpose", [k], perm=[0, 2, 3, 1])
        v = self.op("Transpose", [v], perm=[0, 2, 1, 3])
        scores = self.op("Mul", [self.op("MatMul", [q, k]), self.f32(head_dim**-0.5)])
        if mask is not None:
            scores = self.op("Add", [scores, mask])
        probs = self.op("Softmax", [scores], axis=-1)
        ctx = self.op("Transpose", [self.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = self.op("Reshape", [ctx, self.i64([0, 0, hidden])])
        return self.linear(ctx, f"{prefix}.{names['out']}")

    def padding_mask(self, attention_mask):
        """(batch, n) int64 ones and zeros -> additive (batch, 1, 1, n) float mask."""
        m = self.op("Cast", [attention_mask], to=TensorProto.FLOAT)
        m = self.op("Mul", [self.op("Sub", [self.f32(1.0), m]), self.f32(NEG)])
        return self.op("Unsqueeze", [m, self.i64([1, 2])])

    def model(self, name, doc):
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="imbed scripts/onnx",
            producer_version="1",
            doc_string=doc,
        )
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model


def save(model, path):
    """Write the model in one file (weights inline: every graph here is well under 2 GB)."""
    tmp = str(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))
    os.replace(tmp, path)


def read_config(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)
