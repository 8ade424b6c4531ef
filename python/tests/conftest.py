"""Fixtures for the wheel's tests: the Ollama stand-in (a real HTTP server on 127.0.0.1 that
speaks Ollama's API, built by `cargo test` as an example of the tests crate), images, a static
file server for URL inputs, and configs that point at them.

The suite runs against the installed wheel (python/test makes a fresh venv), never against
the source folder: `imbed` must be importable without `python/` on the path.
"""

from __future__ import annotations

import base64
import functools
import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "examples" / "images"


def stand_in_program() -> Path:
    path = Path(
        os.environ.get("IMBED_OLLAMA_STAND_IN", ROOT / "target/debug/examples/ollama_stand_in")
    )
    if not path.is_file():
        pytest.fail(f"{path} is missing: `cargo test` builds it (or set IMBED_OLLAMA_STAND_IN)")
    return path


class StandIn:
    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [str(stand_in_program()), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.base_url = self.process.stdout.readline().strip()
        assert self.base_url.startswith("http://127.0.0.1:"), self.base_url

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="session")
def ollama() -> Iterator[StandIn]:
    s = StandIn()
    yield s
    s.close()


@pytest.fixture(scope="session")
def slow_ollama() -> Iterator[StandIn]:
    s = StandIn("--latency-ms", "1500")
    yield s
    s.close()


@pytest.fixture(scope="session")
def closed_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def image_server() -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(IMAGES))

    class Quiet(http.server.ThreadingHTTPServer):
        pass

    server = Quiet(("127.0.0.1", 0), handler)
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture()
def sunset() -> Path:
    return IMAGES / "sunset.png"


@pytest.fixture()
def sunset_b64(sunset: Path) -> str:
    return base64.b64encode(sunset.read_bytes()).decode()


def chain_config(base_url: str, home: Path, *, cache: bool = False) -> dict[str, Any]:
    """The default chain's shape (Ollama, then the caller's description, then hash), with
    Ollama at `base_url` and the plugins the wheel carries."""
    return {
        "plugin_dir": str(home / "plugins"),
        "cache_dir": str(home / "compiled"),
        "cache": {"database": str(home / "imbed.db") if cache else ""},
        "chain": {
            "steps": [
                {"kind": "describe-then-embed", "describer": "ollama", "embedder": "ollama"},
                {"kind": "description", "embedder": "ollama"},
                {"kind": "hash", "plugin": "hash"},
            ]
        },
        "plugins": {
            "ollama": {
                "file": "ollama.wasm",
                "limits": {"timeout_ms": 20000, "instances": 4},
                "grants": {"http": [base_url]},
                "settings": {
                    "base_url": base_url,
                    "vision_model": "llava",
                    "embed_model": "nomic-embed-text",
                    "request_timeout_ms": 10000,
                },
            },
            "hash": {"file": "hash.wasm"},
        },
    }


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    return tmp_path
