"""The Python application's ``generate_image_embedding``, as a drop-in.

Same arguments, same answer (a list of floats), same fallback order: Ollama's vision model
describes the image and its embedding model embeds the description, else CLIP embeds the image,
else the caller's description is embedded, else the hash plugin answers. The chain is imbed's
default config (or ``$IMBED_CONFIG``, ``./imbed.toml``...), loaded once per process.
"""

from __future__ import annotations

import threading

from imbed._errors import UsageError
from imbed._imbed import Base64, Imbed

_lock = threading.Lock()
_imbed: Imbed | None = None


def _shared() -> Imbed:
    global _imbed
    with _lock:
        if _imbed is None:
            _imbed = Imbed()
        return _imbed


def generate_image_embedding(
    image_url: str | None = None,
    image_base64: str | None = None,
    description: str | None = None,
) -> list[float]:
    """Embed an image given by URL or base64 (raw or a ``data:`` URI), or, with no image, the
    description alone. Raises ``imbed.ExhaustedError`` when no step answers, and
    ``imbed.UsageError`` (a ``ValueError``) when given nothing to embed."""
    imbed = _shared()
    if image_url:
        return imbed.embed_image(image_url, description=description).vector
    if image_base64:
        return imbed.embed_image(Base64(image_base64), description=description).vector
    if description and description.strip():
        return imbed.embed_text(description, purpose="document").vector
    raise UsageError("give image_url, image_base64 or description")


__all__ = ["generate_image_embedding"]
