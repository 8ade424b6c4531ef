#!/usr/bin/env python3
"""Convert a BERT sentence encoder (all-MiniLM-L6-v2) from safetensors to an ONNX graph.

    python3 scripts/onnx/minilm.py MODEL_DIR [--out MODEL_DIR/text.onnx]

MODEL_DIR holds `config.json` (transformers' BertConfig) and `model.safetensors`. The graph has
the inputs and output of the public export (sentence-transformers/all-MiniLM-L6-v2
`onnx/model.onnx`), so the MiniLM plugin drives either the same way:

    input_ids, attention_mask, token_type_ids: int64 (batch, sequence)
    last_hidden_state: float32 (batch, sequence, hidden)

Tokenising, mean pooling and normalisation stay in the plugin, as with its candle path. It is
transformers' BertModel (absolute positions, post-norm layers, erf GELU, additive padding mask)
written with the `onnx` package; needs `onnx` and `numpy` only (see scripts/setup for the pins).
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from onnx import TensorProto  # noqa: E402

from common import Graph, read_config, read_safetensors, save  # noqa: E402


def convert(model_dir, out):
    config = read_config(model_dir / "config.json")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise SystemExit("only absolute position embeddings are supported")
    weights = read_safetensors(model_dir / "model.safetensors")
    # Checkpoints saved from BertForX carry a "bert." prefix; sentence-transformers' do not.
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
    g = Graph(weights, prefix)
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    eps = config.get("layer_norm_eps", 1e-12)
    act = config.get("hidden_act", "gelu")

    dims = ["batch", "sequence"]
    ids = g.input("input_ids", TensorProto.INT64, dims)
    mask = g.input("attention_mask", TensorProto.INT64, dims)
    types = g.input("token_type_ids", TensorProto.INT64, dims)

    words = g.op("Gather", [g.const(g.w("embeddings.word_embeddings.weight"), "word_emb"), ids], axis=0)
    type_emb = g.op("Gather", [g.const(g.w("embeddings.token_type_embeddings.weight"), "type_emb"), types], axis=0)
    # Positions 0..n: the first n rows of the table (a Slice, see common.py).
    n = g.op("Shape", [ids], start=1, end=2)
    positions = g.op(
        "Slice", [g.const(g.w("embeddings.position_embeddings.weight"), "pos_emb"), g.i64([0]), n, g.i64([0])]
    )
    x = g.op("Add", [g.op("Add", [words, type_emb]), positions])
    x = g.layer_norm(x, "embeddings.LayerNorm", eps)

    additive = g.padding_mask(mask)
    names = {"q": "self.query", "k": "self.key", "v": "self.value", "out": "output.dense"}
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        a = g.attention(x, f"{p}.attention", names, hidden, heads, additive)
        x = g.layer_norm(g.op("Add", [a, x]), f"{p}.attention.output.LayerNorm", eps)
        m = g.activation(g.linear(x, f"{p}.intermediate.dense"), act)
        m = g.linear(m, f"{p}.output.dense")
        x = g.layer_norm(g.op("Add", [m, x]), f"{p}.output.LayerNorm", eps)

    g.output(x, "last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", hidden])
    model = g.model(
        "bert",
        "BertModel converted from safetensors by imbed scripts/onnx/minilm.py; "
        "inputs input_ids, attention_mask, token_type_ids (int64); output last_hidden_state",
    )
    save(model, out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path, help="default: MODEL_DIR/text.onnx")
    args = parser.parse_args()
    convert(args.model_dir, args.out or args.model_dir / "text.onnx")


if __name__ == "__main__":
    main()
