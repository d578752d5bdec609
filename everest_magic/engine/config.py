"""SessionConfig: the keyword options of a Session, declared once.

`Session(model, data, index, **options)` checks its options against this dataclass; the
magics derive the keys of `%everest use` from it. Each field's metadata carries the kind
of value the magic's parser reads for it (`option_kind`):

- "int": a positive integer; "float": a number; "bool": true or false;
- "str": a word or a quoted string;
- "object": a Python object, written as a variable name or a `{expression}`;
- "str|object": a word or a string, or any object given as a `{expression}`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

import numpy as np

from .build import DEFAULT_MEMORY, DEFAULT_MIN_LIST, DEFAULT_RATIO, DEFAULT_SCHEME, SIZE_BUDGET
from .errors import QueryError, suggest

KINDS = ("int", "float", "bool", "str", "object", "str|object")


def option(default: Any, kind: str, **extra: Any) -> Any:
    """A dataclass field whose value the magics parse as `kind` (one of KINDS); `extra` goes
    to its metadata too."""
    assert kind in KINDS, kind
    return field(default=default, metadata={"kind": kind, **extra})


def option_kind(f: Any) -> str | None:
    """The value kind of a dataclass field made with `option` (None: not a user option)."""
    return f.metadata.get("kind")


@dataclass(frozen=True)
class SessionConfig:
    """The settings of a Session (see `Session` for their meaning)."""

    labels: Sequence | np.ndarray | None = option(None, "object")
    collate: Any = option(None, "object")
    forward: Any = option(None, "object")
    device: str = option("auto", "str")
    batch_size: int = option(64, "int")
    memory_budget: int = option(DEFAULT_MEMORY, "int")
    cache_bytes: int = option(512 << 20, "int")
    partitions: int | None = option(None, "int")
    ratio: float = option(DEFAULT_RATIO, "float")
    scheme: str = option(DEFAULT_SCHEME, "str")
    min_list: int = option(DEFAULT_MIN_LIST, "int")
    size_budget: float = option(SIZE_BUDGET, "float")
    index_cache_bytes: int = option(64 << 20, "int")
    tolerance: float = option(1e-5, "float")
    lazy: bool = option(True, "bool")
    rebuild: bool = option(False, "bool")
    data_fingerprint: str | None = option(None, "str")
    name: str = option("default", "str")
    cluster: Any = option(None, "str|object")
    model_factory: Any = option(None, "object")
    load_shard: Any = option(None, "object")

    def __post_init__(self) -> None:
        b = self.batch_size
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
            raise QueryError(f"batch_size must be an int >= 1, got {b!r}", param="batch_size")

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> "SessionConfig":
        """The config of these keyword options; an unknown name raises TypeError (with the closest names)."""
        names = [f.name for f in fields(cls)]
        for key in options:
            if key not in names:
                close = suggest(key, names)
                hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
                raise TypeError(f"Session() got an unexpected keyword argument {key!r}{hint}")
        return cls(**options)
