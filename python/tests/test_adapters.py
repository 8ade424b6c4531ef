"""The LangChain and LlamaIndex adapters: LangChain's own standard suites, and the refusal to
mix embedding spaces."""

from __future__ import annotations

import asyncio
import atexit
import functools
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

import imbed
from conftest import IMAGES, StandIn, chain_config
from imbed.langchain import ImbedEmbeddings
from imbed.llama_index import ImbedEmbedding


@functools.cache
def _stand_in_config() -> dict[str, Any]:
    # The standard suites take their parameters from properties, not fixtures: one stand-in
    # for the module, stopped at exit.
    s = StandIn()
    atexit.register(s.close)
    return chain_config(s.base_url, Path(tempfile.mkdtemp(prefix="imbed-langchain-")))


class TestImbedEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[ImbedEmbeddings]:
        return ImbedEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"config": _stand_in_config()}


class TestImbedEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[ImbedEmbeddings]:
        return ImbedEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"config": _stand_in_config()}


def test_langchain_purposes_images_and_spaces(
    ollama: StandIn, closed_port: str, home: Path
) -> None:
    emb = ImbedEmbeddings(config=chain_config(ollama.base_url, home))
    docs = emb.embed_documents(["a red sunset", "rings"])
    query = emb.embed_query("a red sunset")
    assert len(docs) == 2 and len(query) == 768
    assert emb.space is not None and emb.space.startswith("ollama/nomic-embed-text")
    images = emb.embed_image([str(IMAGES / "sunset.png"), str(IMAGES / "rings.png")])
    assert len(images) == 2 and len(images[0]) == 768
    assert asyncio.run(emb.aembed_query("a red sunset")) == query
    assert asyncio.run(emb.aembed_documents(["a red sunset", "rings"])) == docs
    # Ollama goes down: the hash plugin answers in another space, and the adapter refuses it.
    down = ImbedEmbeddings(imbed.Imbed(chain_config(closed_port, home)), space=emb.space)
    with pytest.raises(imbed.SpaceMismatchError, match="imbed-hash"):
        down.embed_query("a red sunset")
    with pytest.raises(imbed.SpaceMismatchError):
        down.embed_image([str(IMAGES / "sunset.png")])


def test_llama_index_image_text_query_sync_and_async(
    ollama: StandIn, closed_port: str, home: Path
) -> None:
    emb = ImbedEmbedding(config=chain_config(ollama.base_url, home))
    path = str(IMAGES / "sunset.png")
    image = emb.get_image_embedding(path)
    from_bytes = emb.get_image_embedding(BytesIO((IMAGES / "sunset.png").read_bytes()))
    assert image == from_bytes and len(image) == 768
    text = emb.get_text_embedding("a red sunset")
    query = emb.get_query_embedding("a red sunset")
    assert len(text) == len(query) == 768
    assert emb.get_text_embedding_batch(["a", "b"]) == [
        emb.get_text_embedding("a"),
        emb.get_text_embedding("b"),
    ]

    async def main() -> None:
        assert await emb.aget_image_embedding(path) == image
        assert await emb.aget_query_embedding("a red sunset") == query
        assert await emb.aget_text_embedding("a red sunset") == text

    asyncio.run(main())
    down = ImbedEmbedding(imbed.Imbed(chain_config(closed_port, home)), space=emb.space)
    with pytest.raises(imbed.SpaceMismatchError):
        down.get_image_embedding(path)
