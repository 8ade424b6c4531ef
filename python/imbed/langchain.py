"""LangChain: ``ImbedEmbeddings``, an ``Embeddings`` whose vectors come from imbed's chain.

Documents are embedded with the ``document`` purpose and queries with ``query`` (asymmetric
models get their task prefixes); ``embed_image(uris)`` embeds images (langchain-chroma's
``add_images`` looks for it). Every vector it hands out must be of one embedding space: when
the chain answers in another (Ollama went down and the hash plugin answered), it raises
``SpaceMismatchError`` instead of returning a vector whose scores would mean nothing.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Sequence

from langchain_core.embeddings import Embeddings

from imbed._errors import SpaceMismatchError
from imbed._imbed import Embedding, Imbed


class ImbedEmbeddings(Embeddings):
    """LangChain embeddings from imbed. ``imbed``: an ``Imbed`` to share, else one is made from
    ``config`` (``None``: the default config, a path, or a dict)."""

    def __init__(
        self,
        imbed: Imbed | None = None,
        *,
        config: str | os.PathLike[str] | dict[str, Any] | None = None,
        space: str | None = None,
    ) -> None:
        self.imbed = imbed if imbed is not None else Imbed(config)
        self._space = space
        self._lock = threading.Lock()

    @property
    def space(self) -> str | None:
        """The embedding space of the vectors handed out (fixed by the first one, or given)."""
        return self._space

    def _checked(self, embeddings: Sequence[Embedding]) -> list[list[float]]:
        with self._lock:
            for e in embeddings:
                if self._space is None:
                    self._space = e.space
                elif e.space != self._space:
                    raise SpaceMismatchError(
                        f"imbed answered in space {e.space!r}, but this store's vectors are in "
                        f"{self._space!r} (step {e.provenance.step_kind!r} answered; the steps "
                        f"before it failed: {[str(a) for a in e.provenance.attempts]}); its "
                        "scores against them would mean nothing: bring the backend back or "
                        "re-embed the documents"
                    )
        return [e.vector for e in embeddings]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return self._checked(self.imbed.embed_texts(texts, purpose="document"))

    def embed_query(self, text: str) -> list[float]:
        return self._checked([self.imbed.embed_text(text, purpose="query")])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return self._checked(await self.imbed.aembed_texts(texts, purpose="document"))

    async def aembed_query(self, text: str) -> list[float]:
        return self._checked([await self.imbed.aembed_text(text, purpose="query")])[0]

    def embed_image(self, uris: list[str]) -> list[list[float]]:
        """Embed images given as paths or URLs (what langchain-chroma's ``add_images`` passes)."""
        return self._checked(self.imbed.embed_images(uris))


__all__ = ["ImbedEmbeddings"]
