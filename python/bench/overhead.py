"""What the Python API costs over the Rust library, on the hash plugin (no network, no model).

    python python/bench/overhead.py [--imbed target/release/imbed] [--images 200]

1. Per call: `n` text embeddings through `Imbed.embed_text` (one Python call each), against the
   same `n` made by the Rust library in one call (`_bench_rust_embed_text`, same binary, same
   runtime): the difference per call is the binding's overhead (target: 20 µs or less).
2. Throughput: `embed_images` over a folder of generated PNGs against `imbed embed` (the CLI)
   on the same folder and config. Compare a wheel and a CLI of the same profile.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import tempfile
import time
import zlib
from pathlib import Path

import imbed


def png(seed: int, side: int = 96) -> bytes:
    raw = b"".join(
        b"\x00" + b"".join(bytes(((x * seed) % 256, (y * 3 + seed) % 256, (x ^ y) % 256)) for x in range(side))
        for y in range(side)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--imbed", default=str(Path(__file__).resolve().parents[2] / "target/debug/imbed"))
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="imbed-bench-"))
    hash_wasm = Path(imbed.__file__).parent / "plugins" / "hash.wasm"
    toml = work / "hash.toml"
    toml.write_text(
        f'cache_dir = "{work}/compiled"\n[cache]\ndatabase = ""\n'
        '[[chain.steps]]\nkind = "hash"\nplugin = "hash"\n'
        f'[plugins.hash]\nfile = "{hash_wasm}"\n'
    )
    im = imbed.Imbed(toml)
    n = args.calls
    for _ in range(1000):
        im.embed_text("warm up")
    rust = min(im._bench_rust_embed_text("a cat on a laptop", n) for _ in range(3))
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            im.embed_text("a cat on a laptop")
        best = min(best, time.perf_counter() - started)
    per_rust, per_py = rust / n * 1e6, best / n * 1e6
    print(f"embed_text, hash plugin: Rust library {per_rust:.1f} µs/call, Python {per_py:.1f} µs/call, "
          f"overhead {per_py - per_rust:.1f} µs/call")

    folder = work / "images"
    folder.mkdir()
    paths = []
    for i in range(args.images):
        p = folder / f"{i:04}.png"
        p.write_bytes(png(i + 1))
        paths.append(p)
    im.embed_images(paths[:8])
    started = time.perf_counter()
    out = im.embed_images(paths, jobs=4)
    py_secs = time.perf_counter() - started
    assert len(out) == len(paths)
    started = time.perf_counter()
    subprocess.run(
        [args.imbed, "--config", str(toml), "embed", "--concurrency", "4", *map(str, paths)],
        check=True,
        stdout=subprocess.DEVNULL,
        env=dict(os.environ, IMBED_HOME=str(work / "home")),
    )
    cli_secs = time.perf_counter() - started
    print(f"embed_images over {len(paths)} PNGs (96x96), jobs 4: Python {len(paths) / py_secs:.0f} images/s, "
          f"CLI {len(paths) / cli_secs:.0f} images/s (the CLI's figure includes starting the process and loading the plugin)")


if __name__ == "__main__":
    main()
