"""Resolves the asyncio futures of the ``a*`` methods; called on the loop's thread through
``call_soon_threadsafe`` when the Rust task ends."""

from __future__ import annotations

import asyncio


def resolve(future: asyncio.Future[object], ok: bool, value: object) -> None:
    # Cancelled meanwhile: the Rust task was aborted or finished just before; nobody waits.
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        assert isinstance(value, BaseException)
        future.set_exception(value)
