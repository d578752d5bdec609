"""Exception types of everest_magic. Every user-facing error derives from EverestError."""
from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Any, Iterable, Iterator


class EverestError(Exception):
    """Base class of every error everest_magic raises on bad input or state.

    `param`: the argument the error is about ("neurons", "k", "view", "target", "by",
    "metric", "filter", an inspect option...), or None; the magics point at its value.
    """

    def __init__(self, *args: object, param: str | None = None):
        super().__init__(*args)
        self.param = param


class UnknownNameError(EverestError, KeyError):
    """A layer, view or session name that does not exist; lists the closest valid names."""

    def __init__(self, kind: str, name: str, valid: Iterable[str], param: str | None = None):
        valid = list(valid)
        self.kind, self.name, self.valid = kind, name, valid
        self.suggestions = suggest(name, valid)
        msg = f"unknown {kind} {name!r}"
        if self.suggestions:
            msg += f"; did you mean {', '.join(repr(s) for s in self.suggestions)}?"
        elif valid:
            shown = ", ".join(valid[:12]) + (", ..." if len(valid) > 12 else "")
            msg += f"; valid {kind}s: {shown}"
        super().__init__(msg, param=param)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]

    def __reduce__(self):
        return type(self), (self.kind, self.name, self.valid, self.param)


class QueryError(EverestError, ValueError):
    """A query whose arguments are invalid (k <= 0, neuron out of range, negative weight...)."""


class StaleIndexError(EverestError):
    """The index file was built for a different model or dataset."""


class IndexFormatError(EverestError):
    """The index file is not a complete everest index of a supported format version."""


class IndexWriteError(EverestError):
    """The index could not be written (disk full, quota, read-only folder); nothing was lost."""


class IndexBusyError(EverestError):
    """Another process is building the same view."""


class ModelError(EverestError):
    """The model raised an exception in forward (chained as __cause__); names the inputs and layers."""


class JobCancelled(EverestError):
    """The job was cancelled before it finished."""


@contextmanager
def about(param: str) -> Iterator[None]:
    """Mark the EverestErrors raised inside as being about `param` (unless they already name one)."""
    try:
        yield
    except EverestError as e:
        if e.param is None:
            e.param = param
        raise


def suggest(name: str, valid: Iterable[str], n: int = 3) -> list[str]:
    """The closest valid names to `name` (by difflib ratio, then by shared prefix)."""
    valid = list(valid)
    close = difflib.get_close_matches(name, valid, n=n, cutoff=0.5)
    if not close:
        close = [v for v in valid if v.startswith(name) or name.startswith(v)][:n]
    return close


def brief(value: Any, n: int = 60) -> str:
    """repr(value), cut to n characters for an error message."""
    text = repr(value)
    return text if len(text) <= n else text[:n - 3] + "..."
