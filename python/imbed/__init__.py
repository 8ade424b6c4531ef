"""imbed: images to embedding vectors through sandboxed WebAssembly plugins, in-process.

>>> from imbed import Imbed
>>> with Imbed() as imbed:                      # doctest: +SKIP
...     e = imbed.embed_image("photo.jpg")
...     e.space, e.degraded, len(e.vector)
"""

from __future__ import annotations

import os
from typing import Union

from imbed._errors import (
    CacheError,
    ClosedError,
    ConfigError,
    EmptySpaceError,
    EngineError,
    ExhaustedError,
    ImbedError,
    InputError,
    SpaceMismatchError,
    UsageError,
)
from imbed._imbed import (
    Attempt,
    Base64,
    Description,
    Embedding,
    Hit,
    Imbed,
    IndexReport,
    IndexSummary,
    PluginId,
    Provenance,
    SearchResult,
    __version__,
)

#: What ``embed_image`` takes: a path (``str`` or ``os.PathLike``), an ``http(s)://`` URL, a
#: ``data:`` URI, encoded bytes, or ``Base64`` text.
ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Base64]

__all__ = [
    "Attempt",
    "Base64",
    "CacheError",
    "ClosedError",
    "ConfigError",
    "Description",
    "Embedding",
    "EmptySpaceError",
    "EngineError",
    "ExhaustedError",
    "Hit",
    "ImageInput",
    "Imbed",
    "ImbedError",
    "IndexReport",
    "IndexSummary",
    "InputError",
    "PluginId",
    "Provenance",
    "SearchResult",
    "SpaceMismatchError",
    "UsageError",
    "__version__",
]
