"""Built-in hypotheses for images and text.

Images (raw inputs are tensors or arrays (H, W), (1|3, H, W) or (H, W, 3); values above 1
are taken as 0..255 and scaled to [0, 1]):

- `ink()`: fraction of pixels brighter than `threshold` (numeric);
- `brightness()`: mean pixel value (numeric);
- `thickness()`: mean stroke thickness, 2 * ink area / ink perimeter (numeric);
- `label()`: the session's labels, e.g. the digit class (categorical);
- `ink_mask()`, `edge_mask()`, `region_mask(region)`: concept masks (binary, per pixel).

Text (raw inputs are strings; token hypotheses flag the tokens the model reads):

- `keyword(*words)`, `regex(pattern)`: tokens inside a match (binary);
- `inside_quotes()`, `inside_brackets()`: tokens between quotes, or inside (), [] or {};
- `punctuation()`, `capitalised()`, `code_like()`: token shapes (binary);
- `position(relative=False)`: the token's index among the text's tokens (numeric);
- `contains(pattern)`: per input, whether the text matches (binary).

`builtin(name)` resolves names such as ``"ink"``, ``"class"``, ``"quotes"`` or
``"keyword:return|yield"`` (the form the ``%%everest inspect`` magic uses; ``,`` also separates
keywords when the name is given from Python).
"""
from __future__ import annotations

import re
import string
from typing import Any, Callable

import numpy as np

from ..engine.errors import UnknownNameError
from .hypotheses import Hypothesis, InputFunction, MaskFunction, SessionLabels, Tokens, TokenFunction

# -- images -----------------------------------------------------------------------------------------


def image_array(x: Any) -> np.ndarray:
    """A raw image as a 2-D float array in [0, 1] (channels averaged)."""
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    a = np.asarray(a, np.float64)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3:
        a = a.mean(0) if a.shape[0] in (3, 4) else a.mean(-1)
    if a.ndim != 2:
        raise ValueError(f"not an image: shape {a.shape}")
    return a / 255.0 if a.max(initial=0.0) > 1.0 else a


def _ink(img: np.ndarray, threshold: float) -> np.ndarray:
    return img > threshold


def _perimeter(mask: np.ndarray) -> int:
    """Number of ink/background pixel edges (4-neighbourhood; the border counts as background)."""
    p = np.pad(mask, 1)
    return int((p[1:, :] != p[:-1, :]).sum() + (p[:, 1:] != p[:, :-1]).sum())


def ink(threshold: float = 0.5) -> InputFunction:
    """Fraction of pixels brighter than `threshold`."""
    def ink(x):
        return float(_ink(image_array(x), threshold).mean())
    return InputFunction(ink, "ink", "numeric", key=f"library.ink({threshold})")


def brightness() -> InputFunction:
    """Mean pixel value."""
    def brightness(x):
        return float(image_array(x).mean())
    return InputFunction(brightness, "brightness", "numeric", key="library.brightness()")


def thickness(threshold: float = 0.5) -> InputFunction:
    """Mean stroke thickness in pixels: 2 * area / perimeter of the ink (0 without ink)."""
    def thickness(x):
        m = _ink(image_array(x), threshold)
        per = _perimeter(m)
        return 2.0 * m.sum() / per if per else 0.0
    return InputFunction(thickness, "thickness", "numeric", key=f"library.thickness({threshold})")


def label(name: str = "class") -> Hypothesis:
    """The session's labels (e.g. the digit class), categorical."""
    return SessionLabels(name, "categorical")


def ink_mask(threshold: float = 0.5) -> MaskFunction:
    """Concept mask: the pixels brighter than `threshold`."""
    def ink_mask(x):
        return _ink(image_array(x), threshold)
    return MaskFunction(ink_mask, "ink_mask", "binary", key=f"library.ink_mask({threshold})")


def edge_mask(threshold: float = 0.5) -> MaskFunction:
    """Concept mask: ink pixels with a background pixel among their 4 neighbours (stroke outline)."""
    def edge_mask(x):
        m = _ink(image_array(x), threshold)
        p = np.pad(m, 1)
        inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
        return m & ~inner
    return MaskFunction(edge_mask, "edge_mask", "binary", key=f"library.edge_mask({threshold})")


REGIONS = ("top", "bottom", "left", "right", "center")


def region_mask(region: str) -> MaskFunction:
    """Concept mask of a fixed image region: top, bottom, left or right half, or the center."""
    if region not in REGIONS:
        raise UnknownNameError("region", region, REGIONS)

    def region_mask(x):
        h, w = image_array(x).shape
        m = np.zeros((h, w), bool)
        if region == "top":
            m[: h // 2] = True
        elif region == "bottom":
            m[h - h // 2:] = True
        elif region == "left":
            m[:, : w // 2] = True
        elif region == "right":
            m[:, w - w // 2:] = True
        else:
            m[h // 4: h - h // 4, w // 4: w - w // 4] = True
        return m
    return MaskFunction(region_mask, f"{region}_region", "binary", key=f"library.region_mask({region!r})")


# -- text ---------------------------------------------------------------------------------------------


def _tokens_touching(tokens: Tokens, chars: np.ndarray) -> np.ndarray:
    """Per token: whether any of its characters is flagged in `chars` (a bool per character)."""
    c = np.concatenate([[0], np.cumsum(chars)])
    s, e = tokens.spans[:, 0], tokens.spans[:, 1]
    return c[e] - c[s] > 0


def _match_chars(text: str, pattern: re.Pattern, group: int = 0) -> np.ndarray:
    chars = np.zeros(len(text), bool)
    for m in pattern.finditer(text):
        chars[m.start(group):m.end(group)] = True
    return chars


def _token_regex(name: str, pattern: re.Pattern, key: str, group: int = 0) -> TokenFunction:
    def fn(text, tokens):
        return _tokens_touching(tokens, _match_chars(text, pattern, group))
    fn.__name__ = name
    return TokenFunction(fn, name, "binary", key=key)


def keyword(*words: str, case: bool = False) -> TokenFunction:
    """Tokens of a whole-word occurrence of any of `words` (case-insensitive unless `case`)."""
    if not words:
        raise ValueError("keyword() needs at least one word")
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", 0 if case else re.IGNORECASE)
    return _token_regex("keyword_" + "_".join(re.sub(r"\W", "", w) for w in words), pattern,
                        f"library.keyword({words!r}, {case})")


def regex(pattern: str, flags: int = 0, name: str | None = None) -> TokenFunction:
    """Tokens inside a match of a regular expression."""
    return _token_regex(name or f"regex_{pattern}", re.compile(pattern, flags), f"library.regex({pattern!r}, {flags})")


_QUOTED = re.compile(r'"([^"\n]*)"|`([^`\n]*)`|(?<![\w\'])\'([^\'\n]*)\'(?![\w])')


def inside_quotes() -> TokenFunction:
    """Tokens between matching "double", 'single' (not apostrophes) or `back` quotes."""
    def inside_quotes(text, tokens):
        chars = np.zeros(len(text), bool)
        for m in _QUOTED.finditer(text):
            chars[m.start() + 1:m.end() - 1] = True
        return _tokens_touching(tokens, chars)
    return TokenFunction(inside_quotes, "inside_quotes", "binary", key="library.inside_quotes()")


def inside_brackets() -> TokenFunction:
    """Tokens inside (), [] or {} (the brackets themselves excluded)."""
    def inside_brackets(text, tokens):
        chars = np.zeros(len(text), bool)
        depth = 0
        for j, ch in enumerate(text):
            if ch in ")]}":
                depth = max(0, depth - 1)
            elif ch in "([{":
                depth += 1
            else:
                chars[j] = depth > 0
        return _tokens_touching(tokens, chars)
    return TokenFunction(inside_brackets, "inside_brackets", "binary", key="library.inside_brackets()")


def punctuation() -> TokenFunction:
    """Tokens made only of punctuation characters."""
    def punctuation(text, tokens):
        return np.array([all(ch in string.punctuation for ch in text[s:e]) for s, e in tokens.spans], bool)
    return TokenFunction(punctuation, "punctuation", "binary", key="library.punctuation()")


def capitalised() -> TokenFunction:
    """Tokens that start a word with an upper-case letter."""
    def capitalised(text, tokens):
        return np.array([text[s].isupper() and (s == 0 or not text[s - 1].isalnum()) for s, _ in tokens.spans], bool)
    return TokenFunction(capitalised, "capitalised", "binary", key="library.capitalised()")


_CODE = re.compile(r"__\w+__|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?:\(\))?|[A-Za-z_]\w*\(\)|\w*[a-z]_\w+|\b[a-z]+[A-Z]\w*")


def code_like() -> TokenFunction:
    """Tokens of code-like words: dotted names, calls `f()`, snake_case, camelCase, `__dunder__`."""
    return _token_regex("code_like", _CODE, "library.code_like()")


def position(relative: bool = False) -> TokenFunction:
    """The token's index among the text's tokens (0-based), or that index / (count - 1)."""
    def position(text, tokens):
        p = np.arange(len(tokens), dtype=np.float64)
        return p / max(len(tokens) - 1, 1) if relative else p
    return TokenFunction(position, "relative_position" if relative else "position", "numeric",
                         key=f"library.position({relative})")


def contains(pattern: str, flags: int = re.IGNORECASE, name: str | None = None) -> InputFunction:
    """Per input: whether the text matches a regular expression (case-insensitive by default)."""
    rx = re.compile(pattern, flags)

    def contains(x):
        return rx.search(str(x)) is not None
    return InputFunction(contains, name or f"contains_{pattern}", "binary",
                         key=f"library.contains({pattern!r}, {flags})")


# -- names ------------------------------------------------------------------------------------------------

BUILTINS: dict[str, Callable[[], Hypothesis]] = {
    "ink": ink, "brightness": brightness, "thickness": thickness, "class": label, "label": lambda: label("label"),
    "ink_mask": ink_mask, "edge_mask": edge_mask,
    **{f"{r}_region": (lambda r=r: region_mask(r)) for r in REGIONS},
    "quotes": inside_quotes, "inside_quotes": inside_quotes, "brackets": inside_brackets,
    "inside_brackets": inside_brackets, "punctuation": punctuation, "capitalised": capitalised,
    "capitalized": capitalised, "code": code_like, "code_like": code_like, "position": position,
    "relative_position": lambda: position(True),
}
WITH_ARGUMENT: dict[str, Callable[[str], Hypothesis]] = {
    "keyword": lambda arg: keyword(*[w.strip() for w in re.split(r"[,|]", arg) if w.strip()]),
    "regex": lambda arg: regex(arg, name=f"regex_{arg}"),
    "contains": lambda arg: contains(arg),
}


def builtin(name: str) -> Hypothesis:
    """A built-in hypothesis by name: e.g. "ink", "class", "quotes", "keyword:return,yield", "regex:\\d+"."""
    head, sep, arg = name.partition(":")
    if sep and head.strip() in WITH_ARGUMENT:
        if not arg.strip():
            raise UnknownNameError("hypothesis", name, [f"{k}:..." for k in WITH_ARGUMENT])
        return WITH_ARGUMENT[head.strip()](arg.strip())
    if name in BUILTINS:
        return BUILTINS[name]()
    raise UnknownNameError("hypothesis", name, list(BUILTINS) + [f"{k}:..." for k in WITH_ARGUMENT])
