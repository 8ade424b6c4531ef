"""LlamaIndex: ``ImbedEmbedding``, a ``MultiModalEmbedding`` whose vectors come from imbed.

Images (paths, URLs or ``BytesIO``), texts (documents) and queries, sync and async. As the
LangChain adapter, it refuses to mix embedding spaces: a vector of another space than the ones
before raises ``SpaceMismatchError``.
"""

from __future__ import annotations

import os
import threading
from io import BytesIO
from typing import Any, Sequence

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.embeddings.multi_modal_base import MultiModalEmbedding
from llama_index.core.schema import ImageType

from imbed._errors import SpaceMismatchError
from imbed._imbed import Embedding, Imbed


def _image(img: ImageType) -> str | bytes:
    if isinstance(img, BytesIO):
        return img.getvalue()
    return str(img)


class ImbedEmbedding(MultiModalEmbedding):
    """LlamaIndex multi-modal embeddings from imbed."""

    _imbed: Imbed = PrivateAttr()
    _space: str | None = PrivateAttr(default=None)
    _lock: Any = PrivateAttr()

    def __init__(
        self,
        imbed: Imbed | None = None,
        *,
        config: str | os.PathLike[str] | dict[str, Any] | None = None,
        space: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("model_name", "imbed")
        super().__init__(**kwargs)
        self._imbed = imbed if imbed is not None else Imbed(config)
        self._space = space
        self._lock = threading.Lock()

    @classmethod
    def class_name(cls) -> str:
        return "ImbedEmbedding"

    @property
    def imbed(self) -> Imbed:
        return self._imbed

    @property
    def space(self) -> str | None:
        return self._space

    def _checked(self, embeddings: Sequence[Embedding]) -> list[list[float]]:
        with self._lock:
            for e in embeddings:
                if self._space is None:
                    self._space = e.space
                elif e.space != self._space:
                    raise SpaceMismatchError(
                        f"imbed answered in space {e.space!r}, but the vectors so far are in "
                        f"{self._space!r} (step {e.provenance.step_kind!r} answered): scores "
                        "across spaces mean nothing; bring the backend back or re-embed"
                    )
        return [e.vector for e in embeddings]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._checked([self._imbed.embed_text(query, purpose="query")])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._checked([await self._imbed.aembed_text(query, purpose="query")])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._checked([self._imbed.embed_text(text, purpose="document")])[0]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return self._checked([await self._imbed.aembed_text(text, purpose="document")])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._checked(self._imbed.embed_texts(texts, purpose="document"))

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._checked(await self._imbed.aembed_texts(texts, purpose="document"))

    def _get_image_embedding(self, img_file_path: ImageType) -> list[float]:
        return self._checked([self._imbed.embed_image(_image(img_file_path))])[0]

    async def _aget_image_embedding(self, img_file_path: ImageType) -> list[float]:
        return self._checked([await self._imbed.aembed_image(_image(img_file_path))])[0]


__all__ = ["ImbedEmbedding"]
