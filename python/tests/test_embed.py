"""The Imbed class against the installed wheel: inputs, provenance, degraded answers, the
Ollama stand-in, async twins, the GIL, fork, exceptions."""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import time
from pathlib import Path

import pytest

import imbed
from conftest import StandIn, chain_config


def test_every_input_kind_gives_the_same_vector(
    ollama: StandIn, home: Path, sunset: Path, sunset_b64: str, image_server: str
) -> None:
    with imbed.Imbed(chain_config(ollama.base_url, home)) as im:
        inputs: list[imbed.ImageInput] = [
            sunset,
            str(sunset),
            sunset.read_bytes(),
            bytearray(sunset.read_bytes()),
            memoryview(sunset.read_bytes()),
            imbed.Base64(sunset_b64),
            f"data:image/png;base64,{sunset_b64}",
            f"{image_server}/sunset.png",
        ]
        vectors = [im.embed_image(i).vector for i in inputs]
    assert all(v == vectors[0] for v in vectors), "every input kind must read the same image"
    assert len(vectors[0]) == 768


def test_describe_then_embed_through_the_stand_in(ollama: StandIn, home: Path, sunset: Path) -> None:
    with imbed.Imbed(chain_config(ollama.base_url, home)) as im:
        e = im.embed_image(sunset)
    p = e.provenance
    assert (p.step, p.step_kind, p.plugin.key) == (0, "describe-then-embed", "ollama")
    assert not e.degraded and not p.degraded and p.attempts == []
    assert e.space.startswith("ollama/nomic-embed-text") and e.space == p.space
    assert p.dimensions == e.dimensions == len(e) == 768
    assert p.description is not None and p.description.source == "model"
    # The stand-in writes the image's size into its description: the image arrived intact.
    assert "64x64" in p.description.text or "x" in p.description.text
    assert p.description.purpose == "document"


def test_vector_bytes_are_the_vector_as_little_endian_f32(ollama: StandIn, home: Path) -> None:
    with imbed.Imbed(chain_config(ollama.base_url, home)) as im:
        e = im.embed_text("a red sunset over the sea")
    raw = e.vector_bytes
    assert len(raw) == 4 * len(e.vector)
    assert list(struct.unpack(f"<{len(e.vector)}f", raw)) == e.vector
    assert abs(sum(x * x for x in e.vector) - 1.0) < 1e-4


def test_ollama_down_degrades_to_hash_with_the_reasons(
    closed_port: str, home: Path, sunset: Path
) -> None:
    with imbed.Imbed(chain_config(closed_port, home)) as im:
        e = im.embed_image(sunset)
    assert e.degraded and e.provenance.step_kind == "hash"
    assert e.space.startswith("imbed-hash/image")
    kinds = [(a.step, a.step_kind, a.kind) for a in e.provenance.attempts]
    assert kinds[0] == (0, "describe-then-embed", "unavailable"), kinds
    # The description step shares the unreachable embedder.
    assert kinds[1] == (1, "description", "unavailable"), kinds
    assert "Ollama" in e.provenance.attempts[0].message


def test_the_callers_description_answers_when_the_describer_is_down(
    closed_port: str, ollama: StandIn, home: Path, sunset: Path
) -> None:
    config = chain_config(ollama.base_url, home)
    # The describer is unreachable; the embedder is up.
    config["plugins"]["vision"] = dict(config["plugins"]["ollama"])
    config["plugins"]["vision"]["grants"] = {"http": [closed_port]}
    config["plugins"]["vision"]["settings"] = dict(
        config["plugins"]["ollama"]["settings"], base_url=closed_port
    )
    config["chain"]["steps"][0]["describer"] = "vision"
    with imbed.Imbed(config) as im:
        e = im.embed_image(sunset, description="a sunset over the sea")
    assert e.provenance.step_kind == "description" and e.degraded
    assert e.provenance.description is not None
    assert e.provenance.description.text == "a sunset over the sea"
    assert e.provenance.description.source == "caller"


def test_texts_queries_and_documents(ollama: StandIn, home: Path) -> None:
    with imbed.Imbed(chain_config(ollama.base_url, home)) as im:
        q = im.embed_text("cat on a laptop")
        d = im.embed_text("cat on a laptop", purpose="document")
        many = im.embed_texts(["one cat", "two dogs"])
        with pytest.raises(imbed.UsageError, match="purpose"):
            im.embed_text("x", purpose="nonsense")  # type: ignore[arg-type]
        with pytest.raises(imbed.UsageError, match="empty"):
            im.embed_text("   ")
    assert q.provenance.description is not None and q.provenance.description.purpose == "query"
    assert d.provenance.description is not None and d.provenance.description.purpose == "document"
    assert q.space != "" and len(many) == 2 and many[0].vector != many[1].vector
    assert q.similarity(d) > 0.0


def test_embed_images_in_order_with_errors_in_place(ollama: StandIn, home: Path, sunset: Path) -> None:
    images: list[imbed.ImageInput] = [sunset, b"not an image", IMAGES_RINGS]
    with imbed.Imbed(chain_config(ollama.base_url, home)) as im:
        with pytest.raises(imbed.InputError):
            im.embed_images(images)
        out = im.embed_images(images, jobs=2, return_exceptions=True)
        with pytest.raises(TypeError, match="list of images"):
            im.embed_images(str(sunset))  # type: ignore[arg-type]
    assert isinstance(out[0], imbed.Embedding) and isinstance(out[2], imbed.Embedding)
    assert isinstance(out[1], imbed.InputError) and isinstance(out[1], ValueError)
    assert out[0].vector != out[2].vector


IMAGES_RINGS = Path(__file__).resolve().parents[2] / "examples" / "images" / "rings.png"


def test_exceptions_are_typed_and_natural(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[chain]\nsteps = 3\n")
    with pytest.raises(imbed.ConfigError) as e:
        imbed.Imbed(bad)
    assert isinstance(e.value, ValueError) and isinstance(e.value, imbed.ImbedError)
    assert "bad.toml" in str(e.value)
    with pytest.raises(imbed.ConfigError):
        imbed.Imbed({"chain": {"steps": [{"kind": "hash"}]}, "nonsense": 1})
    with pytest.raises(TypeError):
        imbed.Imbed(42)  # type: ignore[arg-type]
    config = {
        "cache": {"database": ""},
        "cache_dir": str(home / "compiled"),
        "chain": {"steps": [{"kind": "image-embed", "plugin": "missing"}]},
        "plugins": {"missing": {"file": str(home / "missing.wasm")}},
    }
    with imbed.Imbed(config) as im:
        with pytest.raises(imbed.ExhaustedError) as ex:
            im.embed_image(IMAGES_RINGS)
        assert isinstance(ex.value, RuntimeError)
        assert [a.kind for a in ex.value.attempts] == ["not-installed"]
        assert ex.value.attempts[0].plugin == "missing"
        with pytest.raises(imbed.InputError) as ie:
            im.embed_image(home / "nowhere.png")
        assert isinstance(ie.value, ValueError)
        with pytest.raises(TypeError, match="an image is"):
            im.embed_image(3.5)  # type: ignore[arg-type]
    with pytest.raises(imbed.ClosedError):
        im.embed_image(IMAGES_RINGS)


def test_async_twins_on_a_running_loop(ollama: StandIn, home: Path, sunset: Path) -> None:
    im = imbed.Imbed(chain_config(ollama.base_url, home))

    async def main() -> None:
        a, b, many, texts = await asyncio.gather(
            im.aembed_image(sunset),
            im.aembed_text("sunset"),
            im.aembed_images([sunset, IMAGES_RINGS]),
            im.aembed_texts(["a", "b"]),
        )
        assert a.vector == im.embed_image(sunset).vector  # the sync API inside a running loop
        assert b.provenance.description is not None
        assert len(many) == 2 and len(texts) == 2
        with pytest.raises(imbed.InputError):
            await im.aembed_image(b"garbage")
        out = await im.aembed_images([b"garbage"], return_exceptions=True)
        assert isinstance(out[0], imbed.InputError)

    asyncio.run(main())
    with pytest.raises(RuntimeError, match="no running event loop"):
        im.aembed_text("outside a loop")
    im.close()


def test_cancelling_an_async_call(slow_ollama: StandIn, home: Path, sunset: Path) -> None:
    with imbed.Imbed(chain_config(slow_ollama.base_url, home)) as im:

        async def main() -> None:
            task = asyncio.ensure_future(im.aembed_image(sunset))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The runtime is still fine afterwards.
            e = await asyncio.wait_for(im.aembed_text("still here"), 30)
            assert e.dimensions == 768

        asyncio.run(main())


def test_the_gil_is_released_during_a_slow_call(
    slow_ollama: StandIn, home: Path, sunset: Path
) -> None:
    ticks = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.01)

    with imbed.Imbed(chain_config(slow_ollama.base_url, home)) as im:
        counter = threading.Thread(target=count)
        counter.start()
        e = im.embed_image(sunset)  # the stand-in takes 1.5 s per model request
        stop.set()
        counter.join()
    assert e.provenance.step_kind == "describe-then-embed"
    # Two model requests of 1.5 s: a thread that could not run would not have counted at all.
    assert ticks > 20, ticks


def test_a_forked_child_loads_its_own_runtime(ollama: StandIn, home: Path, sunset: Path) -> None:
    im = imbed.Imbed(chain_config(ollama.base_url, home))
    parent = im.embed_image(sunset).vector
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: as a gunicorn worker after --preload
        status = 1
        try:
            child = im.embed_image(sunset).vector
            os.write(write, b"same" if child == parent else b"different")
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read, 100)
    assert os.WEXITSTATUS(status) == 0 and answer == b"same", answer
    assert im.embed_image(sunset).vector == parent  # the parent is unaffected
    im.close()


def test_index_and_search(ollama: StandIn, home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    images = Path(__file__).resolve().parents[2] / "examples" / "images"
    for name in ("sunset.png", "rings.png", "checkerboard.png"):
        (folder / name).write_bytes((images / name).read_bytes())
    seen: list[imbed.IndexReport] = []
    with imbed.Imbed(chain_config(ollama.base_url, home, cache=True)) as im:
        summary = im.index(folder, progress=seen.append)
        assert (summary.total, summary.embedded, summary.failed) == (3, 3, 0)
        assert sorted(r.path.name for r in seen) == ["checkerboard.png", "rings.png", "sunset.png"]
        assert all(r.status == "embedded" and r.space for r in seen)
        again = im.index(folder)
        assert again.unchanged == 3
        result = im.search(folder / "rings.png", k=2)
        assert result.hits[0].paths == [folder / "rings.png"]
        assert result.hits[0].score > 0.99
        by_text = im.search("colors", k=3)
        assert len(by_text) == 3 and by_text.space.startswith("ollama/")
        vector = im.embed_image(folder / "sunset.png")
        assert im.search(vector, k=1).hits[0].paths == [folder / "sunset.png"]

        async def main() -> imbed.SearchResult:
            return await im.asearch("sunset", k=1)

        assert len(asyncio.run(main())) == 1


def test_search_needs_the_cache_and_the_space(ollama: StandIn, home: Path, closed_port: str) -> None:
    with imbed.Imbed(chain_config(ollama.base_url, home)) as im:
        with pytest.raises(imbed.ConfigError, match="cache"):
            im.search("x")
    with imbed.Imbed(chain_config(closed_port, home, cache=True)) as im:
        with pytest.raises(imbed.EmptySpaceError) as e:
            im.search("nothing indexed")
        assert isinstance(e.value, LookupError)


def test_the_wheel_carries_the_small_plugins(home: Path) -> None:
    # A fresh machine: nothing installed under IMBED_HOME, so the wheel's plugins answer.
    config = {
        "plugin_dir": str(home / "plugins"),
        "cache_dir": "",
        "cache": {"database": ""},
        "chain": {"steps": [{"kind": "hash", "plugin": "hash"}]},
        "plugins": {"hash": {"file": "hash.wasm"}},
    }
    with imbed.Imbed(config) as im:
        [status] = im.plugins()
        assert Path(status["path"]).parent == Path(imbed.__file__).parent / "plugins"
        e = im.embed_text("hello")
        assert not e.degraded and e.space.startswith("imbed-hash/text")


def test_embedding_is_frozen_and_comparable_only_within_a_space(
    ollama: StandIn, closed_port: str, home: Path, sunset: Path
) -> None:
    with imbed.Imbed(chain_config(ollama.base_url, home)) as im:
        good = im.embed_image(sunset)
    with imbed.Imbed(chain_config(closed_port, home)) as im:
        hashed = im.embed_image(sunset)
    with pytest.raises(AttributeError):
        good.vector = []  # type: ignore[misc]
    with pytest.raises(imbed.SpaceMismatchError):
        good.similarity(hashed)
    assert abs(good.similarity(good) - 1.0) < 1e-5
