"""Hypotheses: what a human thinks a unit might track, as values per input, pixel or token.

Three levels of *symbols* a hypothesis can describe:

- ``"input"``: one value per input: a label array (`Labels`), or a function of the raw
  input (`InputFunction`);
- ``"position"``: a 2-D concept mask per input, compared with a conv layer's channels
  resized to the mask grid (`Masks` from an array, `MaskFunction` from a function);
- ``"token"``: one value per token of a text input (`TokenFunction`, called with the text
  and its `Tokens`).

Kinds: ``"numeric"``, ``"binary"`` or ``"categorical"``; inferred from values unless given
(bool, or numbers that are all 0/1 -> binary; other floats -> numeric; strings -> categorical;
other ints -> categorical up to 50 distinct values, numeric beyond).

Outputs of function hypotheses are cached per session, keyed by (hypothesis, input id):
a later inspection with the same hypothesis does not call the function again (within the
cache's `CACHE_BYTES`, least recently used values dropped first).
"""
from __future__ import annotations

import hashlib
import inspect as _pyinspect
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import cachetools
import numpy as np

from ..engine.errors import QueryError

LEVELS = ("input", "position", "token")
KINDS = ("numeric", "binary", "categorical")
MAX_CLASSES = 50


@dataclass
class Tokens:
    """The tokens of one text input the model reads (special and padding tokens left out).

    `strings[i]` is the i-th token, `spans[i]` its (start, end) character span in `text`,
    `positions[i]` its index in the model's token axis, `ids[i]` its vocabulary id.
    """

    text: str
    strings: list[str]
    spans: np.ndarray
    positions: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.strings)


class Hypothesis:
    """A named hypothesis at one level. Subclasses say how values are computed."""

    level = "input"

    def __init__(self, name: str | None = None, kind: str | None = None):
        if kind is not None and kind not in KINDS:
            raise QueryError(f"hypothesis kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.name = name
        self.kind = kind

    def key(self) -> str | None:
        """Cache key of the function's outputs (None: nothing to cache)."""
        return None

    def bind(self, session: Any) -> "Hypothesis":
        """Check the hypothesis against a session (lengths, labels); returns the one to use."""
        return self

    def compute(self, session: Any, i: int, tokens: Tokens | None = None) -> Any:
        """The raw value(s) for input i (overridden by function hypotheses)."""
        raise NotImplementedError

    def values(self, session: Any, ids: np.ndarray, tokens: Sequence[Tokens] | None = None) -> list:
        """Values for inputs `ids` (one entry per input), from the session's cache when possible."""
        key = self.key()
        cache = _cache_of(session) if key is not None else None
        out = []
        for j, i in enumerate(ids):
            i = int(i)
            hit = cache.get(key, i) if cache is not None else None
            if hit is None:
                try:
                    hit = self.compute(session, i, None if tokens is None else tokens[j])
                except QueryError:
                    raise
                except Exception as e:
                    raise QueryError(f"hypothesis {self.name!r} failed on input {i}: {type(e).__name__}: {e}") from e
                hit = self.check(hit, i, None if tokens is None else tokens[j])
                if cache is not None:
                    cache.put(key, i, hit)
            out.append(hit)
        return out

    def check(self, value: Any, i: int, tokens: Tokens | None) -> Any:
        """Validate and normalise one input's value (a scalar for input-level hypotheses)."""
        v = _scalar(value)
        if v is None:
            raise QueryError(f"hypothesis {self.name!r} must return one value per input (a number, bool or "
                             f"label); on input {i} it returned {_describe(value)}")
        return v

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.level} {self.kind or 'kind inferred'}>"


class Labels(Hypothesis):
    """Per-input values given up front: an array, list or pandas Series with one entry per input."""

    def __init__(self, values: Any, name: str | None = None, kind: str | None = None):
        super().__init__(name or getattr(values, "name", None), kind)
        arr = np.asarray(values.to_numpy() if hasattr(values, "to_numpy") else values)
        if arr.ndim != 1:
            raise QueryError(f"per-input labels must be one-dimensional, got shape {arr.shape}"
                             + (" (for concept masks pass an array of shape (n, H, W))" if arr.ndim == 3 else ""))
        self.array = arr

    def bind(self, session: Any) -> "Labels":
        if len(self.array) != session.n:
            raise QueryError(f"hypothesis {self.name!r} has {len(self.array)} values; "
                             f"the session has {session.n} inputs")
        if self.kind is None:
            self.kind = infer_kind(self.array)
        return self

    def values(self, session: Any, ids: np.ndarray, tokens: Any = None) -> list:
        return list(self.array[np.asarray(ids)])


class SessionLabels(Hypothesis):
    """The session's own labels (``labels=`` of the Session), as a categorical hypothesis."""

    def bind(self, session: Any) -> Labels:
        if session.labels is None:
            raise QueryError(f"hypothesis {self.name!r} uses the session's labels, but the session has none; "
                             "pass labels= to Session(...) or give the labels array as the hypothesis")
        return Labels(session.labels, self.name, self.kind or "categorical").bind(session)


class InputFunction(Hypothesis):
    """`fn(raw_input) -> value` per input (raw input: `session.data.item(i)`)."""

    def __init__(self, fn: Callable[[Any], Any], name: str | None = None, kind: str | None = None,
                 key: str | None = None):
        super().__init__(name or _fn_name(fn), kind)
        self.fn = fn
        self._key = key or _fn_key(fn)

    def key(self) -> str | None:
        return f"{self.level}:{self._key}"

    def compute(self, session: Any, i: int, tokens: Tokens | None = None) -> Any:
        return self.fn(session.data.item(i))


class MaskFunction(InputFunction):
    """`fn(raw_input) -> 2-D mask (H, W)` per input: a concept mask for conv layers."""

    level = "position"

    def check(self, value: Any, i: int, tokens: Tokens | None) -> np.ndarray:
        return _mask(self.name, value, i)


class Masks(Hypothesis):
    """Concept masks given up front: an array (n, H, W), bool or numeric."""

    level = "position"

    def __init__(self, masks: Any, name: str | None = None, kind: str | None = None):
        super().__init__(name, kind)
        arr = _numpy(masks)
        if arr.ndim != 3:
            raise QueryError(f"concept masks must have shape (n, H, W), got {arr.shape}")
        self.array = arr

    def bind(self, session: Any) -> "Masks":
        if len(self.array) != session.n:
            raise QueryError(f"hypothesis {self.name!r} has {len(self.array)} masks; "
                             f"the session has {session.n} inputs")
        _mask(self.name, self.array[0], 0)
        return self

    def values(self, session: Any, ids: np.ndarray, tokens: Any = None) -> list:
        return list(self.array[np.asarray(ids)])


class TokenFunction(InputFunction):
    """`fn(text, tokens: Tokens) -> one value per token` for text inputs."""

    level = "token"

    def __init__(self, fn: Callable[[str, Tokens], Any], name: str | None = None, kind: str | None = None,
                 key: str | None = None):
        super().__init__(fn, name, kind, key)

    def compute(self, session: Any, i: int, tokens: Tokens | None = None) -> Any:
        return self.fn(tokens.text, tokens)

    def check(self, value: Any, i: int, tokens: Tokens | None) -> np.ndarray:
        arr = _numpy(value)
        if arr.ndim != 1 or len(arr) != len(tokens):
            raise QueryError(f"token hypothesis {self.name!r} must return one value per token ({len(tokens)} on "
                             f"input {i}), got {_describe(value)}")
        return arr


class AnyFunction(InputFunction):
    """A plain callable: an input-level hypothesis if it returns a value, a concept mask if it
    returns a 2-D array (decided on its first output by `settle`)."""

    def settle(self, session: Any, i: int) -> InputFunction:
        """The input-level or mask hypothesis this function is, from its output on input i
        (that output is cached)."""
        cache = _cache_of(session)
        for cls in (InputFunction, MaskFunction):
            h = cls(self.fn, self.name, self.kind, self._key)
            if cache.get(h.key(), i) is not None:
                return h
        try:
            value = self.fn(session.data.item(i))
        except Exception as e:
            raise QueryError(f"hypothesis {self.name!r} failed on input {i}: {type(e).__name__}: {e}") from e
        cls = MaskFunction if _numpy(value).ndim == 2 else InputFunction
        h = cls(self.fn, self.name, self.kind, self._key)
        cache.put(h.key(), i, h.check(value, i, None))
        return h


# -- kinds and encodings -----------------------------------------------------------------------------

def infer_kind(values: Any, complete: bool = True) -> str:
    """The kind of a set of values (see the module docstring); `complete=False` for a sample
    of a function's outputs (ints are then categorical whatever their count)."""
    arr = np.asarray(values)
    if arr.dtype == bool:
        return "binary"
    if arr.dtype.kind not in "iuf":
        return "categorical"
    flat = arr.ravel()
    if len(flat) and np.isin(flat, (0, 1)).all():
        return "binary"
    if arr.dtype.kind == "f":
        return "numeric"
    return "categorical" if not complete or len(np.unique(flat)) <= MAX_CLASSES else "numeric"


class Encoder:
    """Turns one hypothesis's values into numbers: floats (numeric), 0/1 (binary) or label codes."""

    def __init__(self, hyp: Hypothesis):
        self.hyp = hyp
        self.kind = hyp.kind
        self.labels: list = []
        self._codes: dict = {}

    def encode(self, values: np.ndarray, where: str = "") -> np.ndarray:
        if self.kind == "numeric":
            try:
                return np.asarray(values, np.float64)
            except (TypeError, ValueError) as e:
                raise QueryError(f"hypothesis {self.hyp.name!r} is numeric but returned non-numbers{where}: {e}") from e
        if self.kind == "binary":
            arr = np.asarray(values)
            ok = arr.dtype == bool or (arr.dtype.kind in "iuf" and np.isin(arr, (0, 1)).all())
            if not ok:
                bad = [v for v in arr.ravel().tolist() if v not in (0, 1, True, False)][:3]
                raise QueryError(f"hypothesis {self.hyp.name!r} was taken as binary but has values {bad}{where}; "
                                 "pass kind='categorical' or kind='numeric'")
            return arr.astype(np.int64)
        out = np.empty(len(values), np.int64)
        for j, v in enumerate(np.asarray(values, dtype=object).tolist()):
            code = self._codes.get(v)
            if code is None:
                code = self._codes[v] = len(self.labels)
                self.labels.append(v)
            out[j] = code
        return out

    def ordered_labels(self) -> list[tuple[int, Any]]:
        """(code, label) pairs, labels sorted (by value, or by text when types are mixed)."""
        pairs = list(enumerate(self.labels))
        try:
            return sorted(pairs, key=lambda p: p[1])
        except TypeError:
            return sorted(pairs, key=lambda p: str(p[1]))


# -- the per-session cache of hypothesis outputs ----------------------------------------------------

CACHE_BYTES = 256 << 20   # the most a session's hypothesis cache holds


class HypothesisCache:
    """(hypothesis key, input id) -> value, for one session: a least-recently-used cache of at
    most `max_bytes` (an array counts its bytes, another value `sys.getsizeof`, each entry 64 more)."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes = int(max_bytes)
        self._values: cachetools.LRUCache = cachetools.LRUCache(self.max_bytes, getsizeof=_entry_bytes)
        self._lock = threading.Lock()

    def get(self, key: str, i: int) -> Any:
        """The value of hypothesis `key` on input `i`, or None when not cached."""
        with self._lock:
            return self._values.get((key, i))

    def put(self, key: str, i: int, value: Any) -> None:
        """Keep a value (one larger than the whole cache is not kept)."""
        if _entry_bytes(value) > self.max_bytes:
            return
        with self._lock:
            self._values[(key, i)] = value

    @property
    def bytes(self) -> int:
        """The bytes the cached values count for."""
        return int(self._values.currsize)

    def __len__(self) -> int:
        return len(self._values)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


def _entry_bytes(value: Any) -> int:
    return 64 + (value.nbytes if isinstance(value, np.ndarray) else sys.getsizeof(value))


_CACHES: "weakref.WeakKeyDictionary[Any, HypothesisCache]" = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def _cache_of(session: Any) -> HypothesisCache:
    with _CACHES_LOCK:
        cache = _CACHES.get(session)
        if cache is None:
            cache = _CACHES[session] = HypothesisCache()
        return cache


def hypothesis_cache(session: Any) -> HypothesisCache:
    """The session's cache of hypothesis outputs (`.clear()` empties it)."""
    return _cache_of(session)


# -- helpers --------------------------------------------------------------------------------------------

def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _scalar(value: Any) -> Any:
    """A hashable Python/numpy scalar, or None when value is not one."""
    if isinstance(value, (bool, int, float, str, np.generic)):
        return value.item() if isinstance(value, np.generic) else value
    if hasattr(value, "detach") or isinstance(value, np.ndarray):
        arr = _numpy(value)
        return arr.reshape(()).item() if arr.size == 1 and arr.ndim <= 1 else None
    return None


def _mask(name: str | None, value: Any, i: int) -> np.ndarray:
    arr = _numpy(value)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.dtype.kind not in "biuf":
        raise QueryError(f"concept mask {name!r} must be a 2-D boolean or numeric array per input; "
                         f"on input {i} it is {_describe(value)}")
    return arr


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"a {type(value).__name__} of shape {tuple(shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of length {len(value)}"
    return f"{type(value).__name__} {value!r}"[:80]


def _fn_name(fn: Callable) -> str | None:
    name = getattr(fn, "__name__", None)
    return None if name in (None, "<lambda>") else name


def _fn_key(fn: Callable) -> str:
    """Qualified name plus a hash of the source, closure values and defaults (the object's id
    when there is no source). Closure values and defaults count by value when they are plain
    scalars or strings (or tuples of them), by identity otherwise."""
    qual = getattr(fn, "__qualname__", type(fn).__name__)
    try:
        src = _pyinspect.getsource(fn)
    except (OSError, TypeError):
        return f"{qual}:id{id(fn)}"
    cells = [_token(c.cell_contents) for c in (getattr(fn, "__closure__", None) or ()) if _has_contents(c)]
    defaults = [_token(v) for v in (getattr(fn, "__defaults__", None) or ())]
    defaults += [(k, _token(v)) for k, v in (getattr(fn, "__kwdefaults__", None) or {}).items()]
    state = repr((src, cells, defaults))
    return f"{qual}:{hashlib.sha256(state.encode()).hexdigest()[:16]}"


def _token(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str, bytes)):
        return v
    if isinstance(v, tuple) and all(x is None or isinstance(x, (bool, int, float, str, bytes)) for x in v):
        return v
    return f"id:{id(v)}"


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents
        return True
    except ValueError:
        return False
