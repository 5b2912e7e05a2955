"""Which examples a generation run prompts for: an id list (e.g. the ids whose teacher
label disagreed), a shard, the first N."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..data.errors import DataError
from ..data.tasks import Example
from .shards import shard_of


def read_ids(path: str) -> list[str]:
    """One id per line (blank lines ignored): what ``dhrd rationales check
    --regenerate_ids`` writes."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def select(examples: Sequence[Example], *, shard: tuple[int, int] | None = None,
           ids: Iterable[str] | None = None, limit: int | None = None,
           ids_source: str = "ids") -> list[Example]:
    chosen = list(examples)
    if ids is not None:
        wanted = set(ids)
        unknown = wanted - {ex.id for ex in chosen}
        if unknown:
            raise DataError(f"{len(unknown)} id(s) not in the task file, e.g. {sorted(unknown)[:3]}",
                            path=ids_source)
        chosen = [ex for ex in chosen if ex.id in wanted]
    if shard is not None:
        chosen = [ex for ex in chosen if shard_of(ex.id, shard[1]) == shard[0]]
    return chosen[:limit] if limit is not None else chosen
