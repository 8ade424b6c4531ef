#!/usr/bin/env python3
"""Convert a CLIP checkpoint (transformers' CLIPModel layout) from safetensors to two ONNX graphs.

    python3 scripts/onnx/clip.py MODEL_DIR [--out-dir DIR]

MODEL_DIR holds `config.json` (transformers' CLIPConfig; missing fields take ViT-B/32's values,
as in transformers) and `model.safetensors` (f32, f16 or bf16). Writes into DIR (default
MODEL_DIR) the two graphs the CLIP plugin loads by name, with the inputs and outputs of the
public exports (Qdrant/clip-ViT-B-32-vision and -text), so the plugin drives either the same way:

    vision.onnx: pixel_values float32 (batch, 3, size, size) -> image_embeds float32 (batch, dim)
    text.onnx:   input_ids, attention_mask int64 (batch, sequence) -> text_embeds float32 (batch, dim)

The embeddings are the projections before normalisation (transformers' get_image_features and
get_text_features); preprocessing, tokenising and normalisation stay in the plugin. The text
tower pools where transformers does: at the first `<|endoftext|>`, or with the legacy
`eos_token_id` 2 of the original OpenAI checkpoints at the first largest id (which is
`<|endoftext|>` too). Works for any CLIPConfig geometry: ViT-B/32 and the tiny test model in
tests/fixtures/clip alike. Needs `onnx` and `numpy` only (see scripts/setup for the pins).
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from onnx import TensorProto  # noqa: E402

from common import NEG, Graph, read_config, read_safetensors, save  # noqa: E402

# transformers' CLIPTextConfig and CLIPVisionConfig defaults (ViT-B/32).
TEXT_DEFAULTS = {
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "eos_token_id": 49407,
}
VISION_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
ATTENTION = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "out": "out_proj"}


def encoder(g, x, prefix, c, mask=None):
    """CLIP's pre-norm encoder layers."""
    for i in range(c["num_hidden_layers"]):
        p = f"{prefix}.layers.{i}"
        eps = c["layer_norm_eps"]
        a = g.attention(
            g.layer_norm(x, f"{p}.layer_norm1", eps),
            f"{p}.self_attn",
            ATTENTION,
            c["hidden_size"],
            c["num_attention_heads"],
            mask,
        )
        h = g.op("Add", [a, x])
        m = g.activation(g.linear(g.layer_norm(h, f"{p}.layer_norm2", eps), f"{p}.mlp.fc1"), c["hidden_act"])
        x = g.op("Add", [g.linear(m, f"{p}.mlp.fc2"), h])
    return x


def vision(weights, c, projection_dim):
    g = Graph(weights)
    hidden, channels, size, patch = c["hidden_size"], c["num_channels"], c["image_size"], c["patch_size"]
    pixels = g.input("pixel_values", TensorProto.FLOAT, ["batch", channels, size, size])
    # Patches: a convolution whose stride is its kernel, no bias (as transformers).
    conv = g.op(
        "Conv",
        [pixels, g.const(g.w("vision_model.embeddings.patch_embedding.weight"), "patch")],
        kernel_shape=[patch, patch],
        strides=[patch, patch],
    )
    patches = g.op("Transpose", [g.op("Reshape", [conv, g.i64([0, hidden, -1])])], perm=[0, 2, 1])
    batch = g.op("Shape", [pixels], start=0, end=1)
    class_shape = g.op("Concat", [batch, g.i64([1, hidden])], axis=0)
    class_token = g.op(
        "Expand",
        [g.const(g.w("vision_model.embeddings.class_embedding").reshape(1, 1, hidden), "class"), class_shape],
    )
    x = g.op("Concat", [class_token, patches], axis=1)
    x = g.op("Add", [x, g.const(g.w("vision_model.embeddings.position_embedding.weight"), "pos_emb")])
    # "pre_layrnorm" is the checkpoint's spelling.
    x = g.layer_norm(x, "vision_model.pre_layrnorm", c["layer_norm_eps"])
    x = encoder(g, x, "vision_model.encoder", c)
    first = g.op("Slice", [x, g.i64([0]), g.i64([1]), g.i64([1])])
    pooled = g.op("Squeeze", [first, g.i64([1])])
    pooled = g.layer_norm(pooled, "vision_model.post_layernorm", c["layer_norm_eps"])
    embeds = g.linear(pooled, "visual_projection", bias=False)
    g.output(embeds, "image_embeds", TensorProto.FLOAT, ["batch", projection_dim])
    return g.model(
        "clip_vision",
        "CLIP vision tower with projection, converted from safetensors by imbed scripts/onnx/clip.py; "
        "pixel_values -> image_embeds (not normalised)",
    )


def text(weights, c, projection_dim):
    g = Graph(weights)
    hidden, context = c["hidden_size"], c["max_position_embeddings"]
    dims = ["batch", "sequence"]
    ids = g.input("input_ids", TensorProto.INT64, dims)
    mask = g.input("attention_mask", TensorProto.INT64, dims)

    tokens = g.op("Gather", [g.const(g.w("text_model.embeddings.token_embedding.weight"), "tok_emb"), ids], axis=0)
    n = g.op("Shape", [ids], start=1, end=2)
    positions = g.op(
        "Slice", [g.const(g.w("text_model.embeddings.position_embedding.weight"), "pos_emb"), g.i64([0]), n, g.i64([0])]
    )
    x = g.op("Add", [tokens, positions])

    # Causal mask for the whole context, cut to n x n; combined with the padding mask by Min,
    # so a masked score gets the most negative float once (adding two would overflow to -inf).
    causal = np.triu(np.full((context, context), NEG, dtype=np.float32), k=1).reshape(1, 1, context, context)
    nn = g.op("Concat", [n, n], axis=0)
    causal = g.op("Slice", [g.const(causal, "causal"), g.i64([0, 0]), nn, g.i64([2, 3])])
    additive = g.op("Min", [causal, g.padding_mask(mask)])

    x = encoder(g, x, "text_model.encoder", c, additive)
    x = g.layer_norm(x, "text_model.final_layer_norm", c["layer_norm_eps"])

    # Where transformers pools: the first largest id (legacy eos id 2) or the first eos id.
    if c["eos_token_id"] == 2:
        score = g.op("Cast", [ids], to=TensorProto.INT32)
    else:
        eos = g.const(np.array(c["eos_token_id"], dtype=np.int64), "eos")
        score = g.op("Cast", [g.op("Equal", [ids, eos])], to=TensorProto.INT32)
    index = g.op("ArgMax", [score], axis=1, keepdims=1)  # (batch, 1), first maximum
    batch = g.op("Shape", [ids], start=0, end=1)
    index_shape = g.op("Concat", [batch, g.i64([1, hidden])], axis=0)
    index = g.op("Expand", [g.op("Unsqueeze", [index, g.i64([2])]), index_shape])
    pooled = g.op("Squeeze", [g.op("GatherElements", [x, index], axis=1), g.i64([1])])
    embeds = g.linear(pooled, "text_projection", bias=False)
    g.output(embeds, "text_embeds", TensorProto.FLOAT, ["batch", projection_dim])
    return g.model(
        "clip_text",
        "CLIP text tower with projection, converted from safetensors by imbed scripts/onnx/clip.py; "
        "input_ids, attention_mask (int64) -> text_embeds (not normalised)",
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=pathlib.Path)
    parser.add_argument("--out-dir", type=pathlib.Path, help="default: MODEL_DIR")
    parser.add_argument("--only", choices=["vision", "text"], help="write one graph only")
    args = parser.parse_args()
    config = read_config(args.model_dir / "config.json")
    text_config = {**TEXT_DEFAULTS, **(config.get("text_config") or {})}
    vision_config = {**VISION_DEFAULTS, **(config.get("vision_config") or {})}
    projection_dim = config.get("projection_dim", 512)
    weights = read_safetensors(args.model_dir / "model.safetensors")
    out = args.out_dir or args.model_dir
    out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "vision"):
        save(vision(weights, vision_config, projection_dim), out / "vision.onnx")
    if args.only in (None, "text"):
        save(text(weights, text_config, projection_dim), out / "text.onnx")


if __name__ == "__main__":
    main()
