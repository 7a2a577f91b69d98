"""One way to run a call over many items on a few threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_in_order(call: Callable[[T], R], items: Sequence[T], width: int, name: str) -> list[R]:
    """``call`` over ``items``, up to ``width`` at once on threads of their own.

    The results keep the items' order and the first failure is raised, as one
    after another would; with one item or a width of one, no thread is started.
    """
    if width < 2 or len(items) < 2:
        return [call(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(width, len(items)), thread_name_prefix=name) as pool:
        return list(pool.map(call, items))
