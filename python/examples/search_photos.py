"""Index a folder and search it, typed end to end (checked with `mypy --strict`).

    python search_photos.py ~/Pictures "a red sunset over the sea"
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import imbed


def show(report: imbed.IndexReport) -> None:
    if report.status == "failed":
        print(f"skipped {report.path}: {report.message}", file=sys.stderr)


async def similar_texts(im: imbed.Imbed, texts: list[str]) -> list[float]:
    first, *rest = await asyncio.gather(*(im.aembed_text(t) for t in texts))
    return [first.similarity(other) for other in rest]


def main(folder: Path, query: str) -> int:
    with imbed.Imbed() as im:
        summary = im.index(folder, progress=show)
        print(f"{summary.embedded} embedded, {summary.unchanged} unchanged, {summary.failed} failed")
        try:
            result = im.search(query, k=5)
        except imbed.EmptySpaceError as e:
            print(e, file=sys.stderr)
            return 1
        for hit in result.hits:
            print(f"{hit.score:.3f} {', '.join(str(p) for p in hit.paths)}")
        emb: imbed.Embedding = im.embed_text(query)
        vector: list[float] = emb.vector
        attempts: list[imbed.Attempt] = emb.provenance.attempts
        print(len(vector), emb.space, [a.kind for a in attempts])
        print(asyncio.run(similar_texts(im, [query, "a cat", "a dog"])))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
