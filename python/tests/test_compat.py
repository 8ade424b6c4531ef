"""The drop-in `generate_image_embedding`: the Python app's arguments and answer."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from conftest import IMAGES, StandIn, chain_config


@pytest.fixture()
def compat(ollama: StandIn, home: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    config = home / "imbed.toml"
    # The drop-in loads the config the CLI would: here $IMBED_CONFIG.
    config.write_text(_toml(chain_config(ollama.base_url, home)))
    monkeypatch.setenv("IMBED_CONFIG", str(config))
    import imbed.compat

    monkeypatch.setattr(imbed.compat, "_imbed", None)
    yield imbed.compat
    monkeypatch.setattr(imbed.compat, "_imbed", None)


def _toml(config: dict) -> str:  # type: ignore[type-arg]
    # JSON strings are valid TOML basic strings; the tables are written out one by one.
    lines: list[str] = []

    def value(v: object) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v)

    for k, v in config.items():
        lines.append(f"{json.dumps(k)} = {value(v)}")
    return "\n".join(lines) + "\n"


def test_same_arguments_same_answer(compat, image_server: str) -> None:  # type: ignore[no-untyped-def]
    data = (IMAGES / "sunset.png").read_bytes()
    by_url = compat.generate_image_embedding(image_url=f"{image_server}/sunset.png")
    by_b64 = compat.generate_image_embedding(image_base64=base64.b64encode(data).decode())
    by_uri = compat.generate_image_embedding(
        image_base64="data:image/png;base64," + base64.b64encode(data).decode()
    )
    assert isinstance(by_url, list) and all(isinstance(x, float) for x in by_url)
    assert by_url == by_b64 == by_uri and len(by_url) == 768
    text = compat.generate_image_embedding(description="a sunset over the sea")
    assert len(text) == 768 and text != by_url
    with pytest.raises(ValueError, match="image_url, image_base64 or description"):
        compat.generate_image_embedding()
