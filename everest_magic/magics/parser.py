"""Parser of the ``%everest`` line magic and ``%%everest`` cell magic (see docs/query-language.md).

Plain Python: imports no IPython and no engine code, and never reads a user namespace.
``parse_cell(line, cell)`` turns the magic's text into one frozen command dataclass.
``{python expressions}`` are kept unevaluated as ``Expr`` and bare variable names in ``use``
as ``Name``; the magic layer evaluates them with ``resolve`` (or ``expand_neurons`` /
``expand_weights`` for lists), which re-raise failures as positioned ``QuerySyntaxError``.

Commands (every one also has ``text``: the original ``%everest ...``/``%%everest ...`` text,
excluded from ``==`` and ``repr``):

- ``UseCommand(name, options)``: ``name`` str | Expr | None; ``options`` maps a key to its
  value: model, data, labels, collate, forward, render, tokenizer -> Name | Expr; index, device, scheme,
  data_fingerprint -> str | Expr; batch_size, partitions, memory_budget, cache_bytes, min_list,
  index_cache_bytes -> int | Expr; tolerance, ratio -> float | Expr; lazy, rebuild -> bool | Expr. ``name=`` is moved to
  ``name``; a ``use`` with no options switches to the named session.
- ``LayersCommand(session)``, ``IndexCommand(views, wait, session)``: ``views`` a list of
  str | Expr such as ``"conv2"`` or ``"conv2:mean"``.
- ``QueryCommand(kind, k, layer, neurons, by, metric, target, include_target, filter, output,
  wait, session)``: ``kind`` 'topk' | 'bottomk' | 'knn'; ``k`` int | Expr (default 10);
  ``layer`` str | Expr; ``neurons`` NeuronList | Channels | TopOfInput; ``by`` 'sum' | 'mean' |
  'max' | 'l2' | Weights | Expr; ``metric`` 'l2' | 'l1' | 'linf' | 'cosine'; ``target`` int |
  Expr | None; ``filter`` Filter | None; ``output`` a variable name or None.
- ``NeuronsCommand(count, input_id, layer, session)``: ``neurons top N of input ID layer VIEW``.
- ``JobsCommand()``, ``CancelCommand(job)``, ``StatusCommand()``, ``HelpCommand(topic)``.

Values: ``Expr(text, line, column)``, ``Name(text, line, column)``, ``Range(start, stop, step)``,
``NeuronList(items)`` (ints, int tuples, Range, Expr), ``Channels(items)`` (ints, Range, Expr),
``TopOfInput(n, input_id)``, ``Filter(field, op, value)``, ``Weights(values)`` (floats, Expr).
"""
from __future__ import annotations

import difflib
import keyword
import math
import operator
import re
import warnings
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, Iterable, Mapping, Union

try:
    from everest_magic.engine.errors import EverestError
except ImportError:  # the parser works without the engine
    class EverestError(Exception):  # type: ignore[no-redef]
        """Base class of every error everest_magic raises on bad input or state."""

__all__ = [
    "parse_cell", "resolve", "expand_neurons", "expand_weights", "help_text", "QuerySyntaxError",
    "EverestError", "Command", "UseCommand", "LayersCommand", "IndexCommand", "QueryCommand",
    "NeuronsCommand", "ExtendCommand", "JobsCommand", "CancelCommand", "StatusCommand", "HelpCommand", "InspectCommand", "Expr", "Name", "Range",
    "NeuronList", "Channels", "TopOfInput", "Filter", "Weights", "VERBS", "QUERY_VERBS",
    "KEYWORDS", "AGGREGATIONS", "METRICS", "USE_OPTIONS", "INSPECT_OPTIONS", "HELP",
]


class QuerySyntaxError(EverestError, ValueError):
    """A malformed ``%everest`` command, with its position (1-based line and column).

    Line 1 is the magic line, the cell body starts at line 2. ``str()`` renders the message,
    an optional "did you mean" suggestion and the source line with a caret under the culprit.
    """

    def __init__(self, message: str, line: int, column: int, source_line: str,
                 suggestion: str | None = None, width: int = 1):
        super().__init__(message, line, column, source_line, suggestion, width)
        self.message, self.line, self.column = message, line, column
        self.source_line, self.suggestion, self.width = source_line, suggestion, max(1, width)

    def __str__(self) -> str:
        text = f"line {self.line}, column {self.column}: {self.message}"
        if self.suggestion:
            text += f" (did you mean {self.suggestion!r}?)"
        shown = self.source_line.replace("\t", " ").rstrip()
        body = shown.lstrip()
        if not body:
            return text
        pad = max(0, self.column - 1 - (len(shown) - len(body)))
        width = self.width
        if len(body) > _SHOWN:   # a long line: show the part around the culprit
            start = max(0, pad - _SHOWN // 4)
            head = "..." if start else ""
            tail = "..." if start + _SHOWN < len(body) else ""
            body = head + body[start:start + _SHOWN] + tail
            pad += len(head) - start
            width = max(1, min(width, _SHOWN - (pad - len(head))))
        return f"{text}\n    {body}\n    {' ' * pad}{'^' * width}"


_SHOWN = 120   # characters of a source line an error shows


# -- values ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expr:
    """A ``{python expression}``: its text (braces and outer spaces removed) and position."""
    text: str
    line: int
    column: int
    source_line: str = field(default="", compare=False, repr=False)
    width: int = field(default=1, compare=False, repr=False)


@dataclass(frozen=True)
class Name:
    """A bare (possibly dotted) variable name in ``use``, looked up in the user namespace."""
    text: str
    line: int
    column: int
    source_line: str = field(default="", compare=False, repr=False)
    width: int = field(default=1, compare=False, repr=False)


@dataclass(frozen=True)
class Range:
    """``start:stop[:step]``: the neurons ``range(start, stop, step)``."""
    start: int
    stop: int
    step: int = 1


@dataclass(frozen=True)
class NeuronList:
    """``neurons ...``: items are ints (flat ids), int tuples (index tuples), Range or Expr."""
    items: list


@dataclass(frozen=True)
class Channels:
    """``channels ...``: channel numbers of a channel view (ints, Range or Expr)."""
    items: list


@dataclass(frozen=True)
class TopOfInput:
    """``neurons top N of input ID``: the N most activated neurons of a dataset input."""
    n: Any
    input_id: Any


@dataclass(frozen=True)
class Filter:
    """``where labels|ids OP VALUE``; op is '==', '!=', 'in' or 'not in'. ``label`` and ``id``
    are accepted for ``labels`` and ``ids`` (galleries and DataFrames call the column ``label``).

    value: an int/str/Expr for == and !=; a list of them, or one Expr (the whole
    collection), for in / not in.
    """
    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class Weights:
    """``by weights w1, w2, ...``: non-negative floats and/or Expr (one per neuron)."""
    values: list


NeuronSpec = Union[NeuronList, Channels, TopOfInput]


# -- commands -------------------------------------------------------------------------------
class Command:
    """Base class of the parsed commands; each has ``text``, the original magic text."""
    text: str


@dataclass(frozen=True)
class UseCommand(Command):
    """``use NAME`` (switch session) or ``use [NAME] key=value ...`` (create a session)."""
    name: Any
    options: dict
    text: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class LayersCommand(Command):
    """``layers [in session NAME]``: list the model's layers and what is indexed."""
    session: str | None = None
    text: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class IndexCommand(Command):
    """``index VIEW ... [--wait] [--rebuild] [in session NAME]``: build the index of some views
    (views already complete are left alone unless --rebuild)."""
    views: list
    wait: bool = False
    session: str | None = None
    text: str = field(default="", compare=False, repr=False)
    rebuild: bool = False


@dataclass(frozen=True)
class ExtendCommand(Command):
    """``extend DATA [labels LABELS] [--wait] [in session NAME]``: append inputs to the dataset
    and to every indexed view, without a rebuild."""
    data: Any
    labels: Any = None
    wait: bool = False
    session: str | None = None
    text: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class QueryCommand(Command):
    """A ``topk``, ``bottomk`` or ``knn`` query (``by`` is for topk/bottomk, ``metric``,
    ``target`` and ``include_target`` for knn)."""
    kind: str
    k: Any
    layer: Any
    neurons: Any
    by: Any = "sum"
    metric: str = "l2"
    target: Any = None
    include_target: bool = False
    filter: Filter | None = None
    output: str | None = None
    wait: bool = False
    session: str | None = None
    text: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class InspectCommand(Command):
    """``inspect``: score the units of ``views`` against ``hypotheses`` with ``measures``.

    ``views`` and ``hypotheses`` are lists of str | Expr (a hypothesis word is a built-in name
    such as ``ink`` or ``keyword:return|yield``); ``measures`` a list of names or None
    (auto); ``units`` a NeuronList or None (all); ``options`` maps an option of
    ``INSPECT_OPTIONS`` to its value; ``tokenizer`` an Expr or None; ``models`` the session
    names of a ``models a, b, c`` line (several models over the same data) or None."""
    views: list
    hypotheses: list
    measures: list | None = None
    units: Any = None
    options: dict = field(default_factory=dict)
    tokenizer: Any = None
    filter: Filter | None = None
    output: str | None = None
    wait: bool = False
    session: str | None = None
    models: list | None = None
    text: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class NeuronsCommand(Command):
    """``neurons top N of input ID layer VIEW [in session NAME]``: the N most activated neurons
    of one input in a view (what a gallery's "most activated neurons" shows)."""
    count: Any
    input_id: Any
    layer: Any
    session: str | None = None
    text: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class JobsCommand(Command):
    """``jobs``: list background jobs."""
    text: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class CancelCommand(Command):
    """``cancel [JOB]``: cancel a job (None: every unfinished one)."""
    job: int | None = None
    text: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class StatusCommand(Command):
    """``status``: show the sessions and their indexes."""
    text: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class HelpCommand(Command):
    """``help [TOPIC]``; a bare ``%everest`` is ``help``."""
    topic: str | None = None
    text: str = field(default="", compare=False, repr=False)


# -- vocabulary -----------------------------------------------------------------------------
VERBS = ("use", "layers", "index", "extend", "topk", "bottomk", "knn", "inspect", "neurons", "jobs", "cancel", "status", "help")
QUERY_VERBS = ("topk", "bottomk", "knn")
AGGREGATIONS = ("sum", "mean", "max", "l2")
METRICS = ("l2", "l1", "linf", "cosine")
_RANKING = ("layer", "neurons", "channels", "by", "where", "session")
KEYWORDS = {
    "topk": _RANKING,
    "bottomk": _RANKING,
    "knn": ("target", "layer", "neurons", "channels", "metric", "include", "where", "session"),
}
_ALL_KEYWORDS = ("layer", "neurons", "channels", "by", "metric", "target", "include", "where", "session")
# inspect: option lines and their value types (None allowed where marked "?")
INSPECT_OPTIONS = {"epsilon": "float", "confidence": "float", "q": "float", "holdout": "float", "top": "int",
                   "patience": "int?", "min_inputs": "int", "max_inputs": "int?", "bins": "int", "seed": "int0",
                   "early_stop": "bool", "chunk": "int?"}
_INSPECT_KEYWORDS = ("layer", "hypotheses", "measures", "units", "tokenizer", "where", "session", "models") + \
    tuple(INSPECT_OPTIONS)
_INSPECT_ALIASES = {"layers": "layer", "views": "layer", "view": "layer", "hypothesis": "hypotheses",
                    "measure": "measures", "unit": "units", "model": "models"}
_OTHER_VERB_HINT = {"by": "metric", "metric": "by"}
USE_OPTIONS = {
    "model": "name", "data": "name", "labels": "name", "collate": "name", "forward": "name",
    "render": "name", "tokenizer": "name", "index": "str", "name": "str", "device": "str", "scheme": "str",
    "data_fingerprint": "str", "batch_size": "int", "partitions": "int", "memory_budget": "int",
    "cache_bytes": "int", "tolerance": "float", "ratio": "float", "lazy": "bool", "rebuild": "bool",
    "min_list": "int", "index_cache_bytes": "int", "size_budget": "float",
    "cluster": "str", "model_factory": "name", "load_shard": "name",
}
_OPTIONS = {"-o": "output", "--output": "output", "--wait": "wait", "--rebuild": "rebuild"}
_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
_INT_RE = re.compile(r"[+-]?[0-9]+")
_NUM_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MAX_DIGITS = 30
MAX_MAGIC_LINE = 10_000   # characters; a longer magic line is refused before it is parsed


def _suggest(word: str, options: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return close[0] if close else None


# -- tokens ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Token:
    """kind: 'word', 'string', 'expr' or the punctuation itself (',', '(', ')', '=', '==', '!=')."""
    kind: str
    text: str  # exactly as in the source
    line: int
    column: int
    source: str

    @property
    def value(self) -> str:
        """A string's content, an expression's text, else the token text."""
        if self.kind == "string":
            return self.text[1:-1]
        if self.kind == "expr":
            return self.text[1:-1].strip()
        return self.text

    def word(self) -> str:
        """The lower-cased text of a word token ('' for other tokens)."""
        return self.text.lower() if self.kind == "word" else ""


def _error(tok: _Token, message: str, suggestion: str | None = None) -> QuerySyntaxError:
    if suggestion is None and tok.text.startswith("$") and tok.text[1:].isidentifier():
        suggestion = f"{{{tok.text[1:]}}}"   # IPython's $x is not expanded on %everest lines
    return QuerySyntaxError(message, tok.line, tok.column, tok.source, suggestion, len(tok.text))


def _tokenize(src: str, line: int) -> list[_Token]:
    """Split one source line into tokens; ``#`` outside braces and quotes starts a comment."""
    tokens, i, n = [], 0, len(src)
    while i < n:
        c = src[i]
        if c.isspace():
            i += 1
            continue
        if c == "#":
            break
        if c == "{":
            end = _match_brace(src, i)
            if end < 0:
                raise QuerySyntaxError("unclosed '{'", line, i + 1, src)
            j, kind = end + 1, "expr"
        elif c == "}":
            raise QuerySyntaxError("unmatched '}'", line, i + 1, src)
        elif c in "\"'":
            end = src.find(c, i + 1)
            if end < 0:
                raise QuerySyntaxError(f"unclosed string (missing {c})", line, i + 1, src)
            j, kind = end + 1, "string"
        elif src.startswith(("==", "!="), i):
            j = i + 2
            kind = src[i:j]
        elif c in ",()=":
            j, kind = i + 1, c
        else:
            j, kind = i, "word"
            while j < n and not src[j].isspace() and src[j] not in ",(){}#=" and not src.startswith("!=", j):
                j += 1
        tok = _Token(kind, src[i:j], line, i + 1, src)
        if kind == "expr":
            _check_expr(tok)
        tokens.append(tok)
        i = j
    return tokens


def _match_brace(src: str, start: int) -> int:
    """Index of the '}' closing the '{' at ``start`` (nesting and string literals aware), or -1."""
    depth, i, n = 0, start, len(src)
    while i < n:
        c = src[i]
        if c in "\"'":
            quote = c * 3 if src.startswith(c * 3, i) else c
            i += len(quote)
            while i < n and not src.startswith(quote, i):
                i += 2 if src[i] == "\\" else 1
            if i >= n:
                return -1
            i += len(quote)
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _check_expr(tok: _Token) -> None:
    """Reject an empty ``{}`` or one that is not a Python expression (nothing is evaluated)."""
    if not tok.value:
        raise _error(tok, "empty {} expression")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(tok.value, "<everest>", "eval")
    except SyntaxError as e:
        raise _error(tok, f"invalid Python expression: {e.msg}") from None
    except (ValueError, OverflowError, MemoryError, RecursionError) as e:
        raise _error(tok, f"invalid Python expression: {e}") from None


class _Stream:
    """A cursor over tokens; ``anchor`` positions end-of-input errors when there are none."""

    def __init__(self, tokens: list[_Token], anchor: _Token):
        self.tokens, self.i, self.anchor = tokens, 0, anchor

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def next(self) -> _Token | None:
        tok = self.peek()
        self.i += tok is not None
        return tok

    def done(self) -> bool:
        return self.i >= len(self.tokens)

    def peek_word(self, word: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.word() == word

    def expect(self, what: str) -> _Token:
        tok = self.next()
        if tok is None:
            raise self.end_error(f"expected {what}")
        return tok

    def expect_word(self, word: str, after: str) -> None:
        tok = self.expect(f"{word!r} after {after!r}")
        if tok.word() != word:
            raise _error(tok, f"expected {word!r} after {after!r}, got {tok.text!r}", _suggest(tok.word(), [word]))

    def end_error(self, message: str) -> QuerySyntaxError:
        last = self.tokens[-1] if self.tokens else self.anchor
        return QuerySyntaxError(message, last.line, last.column + len(last.text), last.source)

    def finish(self, context: str) -> None:
        tok = self.peek()
        if tok is not None:
            raise _error(tok, f"unexpected {tok.text!r} {context}")


# -- entry point ----------------------------------------------------------------------------
def parse_cell(line: str, cell: str | None = None) -> Command:
    """Parse the text of ``%everest LINE`` (cell None) or ``%%everest LINE`` + ``CELL``.

    Grammar (keywords case-insensitive; ``#`` comments to end of line outside ``{}`` and
    quotes; blank lines ignored; commas between list items optional)::

        magic       = head_line { body_line }          (* head: the magic line; if it is
                                                          blank, the first non-blank line *)
        head_line   = query_head | use | layers | index | top_neurons | "jobs" | cancel | "status" | help
        query_head  = ("topk" | "bottomk" | "knn") [ k ] { query_opt }
        k           = INT | EXPR                       (* positive; default 10 *)
        query_opt   = "-o" IDENT | "--wait" | in_session
        in_session  = "in" "session" WORD
        use         = "use" [ WORD ] { KEY "=" value } (* KEY in USE_OPTIONS *)
        value       = WORD | STRING | EXPR
        layers      = "layers" [ in_session ]
        index       = "index" view { [","] view } { "--wait" | "--rebuild" | in_session }
        extend      = "extend" value [ "labels" value ] { "--wait" | in_session }
        view        = WORD | STRING | EXPR              (* "conv2", "conv2:mean" *)
        top_neurons = "neurons" "top" count "of" "input" id "layer" view [ in_session ]
        cancel      = "cancel" [ INT ]
        help        = "help" [ WORD ]
        body_line   = "layer" view
                    | "neurons" ( items | "top" count "of" "input" id )
                    | "channels" items                  (* no tuples *)
                    | "by" ( "sum" | "mean" | "max" | "l2" | "weights" weights | EXPR )
                    | "metric" ( "l2" | "l1" | "linf" | "cosine" )
                    | "target" id
                    | "include" "target"
                    | "where" ( "labels" | "label" | "ids" | "id" ) condition
                    | [ "in" ] "session" WORD
        items       = item { [","] item }
        item        = INT | RANGE | "(" INT { [","] INT } ")" | EXPR
        RANGE       = [ INT ] ":" INT [ ":" INT ]
        weights     = weight { [","] weight }            (* weight = NUMBER >= 0 | EXPR *)
        count, id   = INT | EXPR
        condition   = ("==" | "!=") scalar
                    | [ "not" ] "in" ( EXPR | "(" scalar { [","] scalar } ")" | scalar { [","] scalar } )
        scalar      = INT | STRING | EXPR
        EXPR        = "{" python expression "}"        (* braces may nest *)

    topk/bottomk require ``layer`` and ``neurons``/``channels``; knn also ``target``.
    Each body keyword may appear once. Raises QuerySyntaxError on any malformed input.
    """
    text = _original_text(line, cell)
    lines = [(no, toks) for no, src in _source_lines(line, cell) if (toks := _tokenize(src, no))]
    if not lines:
        return HelpCommand(None, text=text)
    head, body = lines[0][1], [toks for _, toks in lines[1:]]
    verb_tok = head[0]
    verb = verb_tok.word()
    if verb not in VERBS:
        what = f"unknown command {verb_tok.text!r}" if verb else f"expected a command, got {verb_tok.text!r}"
        raise _error(verb_tok, what, _suggest(verb, VERBS))
    if verb in QUERY_VERBS:
        return _parse_query(verb_tok, _Stream(head[1:], verb_tok), body, text)
    if verb == "inspect":
        return _parse_inspect(verb_tok, _Stream(head[1:], verb_tok), body, text)
    args = _Stream(head[1:] + [tok for toks in body for tok in toks], verb_tok)
    return _SIMPLE_PARSERS[verb](args, verb_tok, text)


def _original_text(line: str, cell: str | None) -> str:
    text = ("%everest" if cell is None else "%%everest") + (f" {line}" if line else "")
    return text if cell is None else f"{text}\n{cell}"


def _source_lines(line: str, cell: str | None) -> list[tuple[int, str]]:
    if "\n" in line:
        first = line.split("\n", 1)[0]
        raise QuerySyntaxError("the magic line must be a single line", 1, len(first) + 1, first)
    if len(line) > MAX_MAGIC_LINE:
        raise QuerySyntaxError(f"the magic line has {len(line):,} characters, more than {MAX_MAGIC_LINE:,}: put long "
                               "values in a variable and write {name}", 1, MAX_MAGIC_LINE + 1, line)
    body = [] if cell is None else cell.split("\n")
    return [(1, line)] + [(no, src) for no, src in enumerate(body, start=2)]


# -- shared pieces --------------------------------------------------------------------------
def _expr(tok: _Token) -> Expr:
    return Expr(tok.value, tok.line, tok.column, tok.source, len(tok.text))


def _int(tok: _Token, what: str, minimum: int | None = None) -> int:
    kind = {None: "an", 0: "a non-negative", 1: "a positive"}.get(minimum, "an")
    if tok.kind != "word" or not _INT_RE.fullmatch(tok.text):
        raise _error(tok, f"{what} must be {kind} integer, got {tok.text!r}")
    if len(tok.text) > _MAX_DIGITS:
        raise _error(tok, f"{what} is too large")
    value = int(tok.text)
    if minimum is not None and value < minimum:
        raise _error(tok, f"{what} must be {kind} integer, got {tok.text!r}")
    return value


def _int_or_expr(tok: _Token, what: str, minimum: int | None = None) -> int | Expr:
    return _expr(tok) if tok.kind == "expr" else _int(tok, what, minimum)


def _number(tok: _Token, what: str) -> float:
    if tok.kind != "word" or not _NUM_RE.fullmatch(tok.text):
        raise _error(tok, f"{what} must be a number, got {tok.text!r}")
    value = float(tok.text)
    if not math.isfinite(value):
        raise _error(tok, f"{what} is too large")
    return value


def _str_or_expr(tok: _Token, what: str) -> str | Expr:
    if tok.kind == "expr":
        return _expr(tok)
    if tok.kind in ("word", "string"):
        return tok.value
    raise _error(tok, f"expected {what}, got {tok.text!r}")


def _line_options(s: _Stream, allowed: tuple[str, ...]) -> tuple[list[_Token], dict]:
    """Split a command line into positional tokens and options (-o NAME, --wait, in session X)."""
    positional, opts = [], {}
    while not s.done():
        tok = s.next()
        word = tok.word()
        if word.startswith("-") and not _NUM_RE.fullmatch(word):
            opt = _OPTIONS.get(word)
            if opt not in allowed:
                known = [o for o, name in _OPTIONS.items() if name in allowed]
                what = "unknown option" if opt is None else "this command takes no option"
                raise _error(tok, f"{what} {tok.text!r}", _suggest(word, known))
            if opt in opts:
                raise _error(tok, f"duplicate option {tok.text!r}")
            opts[opt] = _output_name(s, tok) if opt == "output" else True
        elif word == "in" and s.peek_word("session") and "session" in allowed:
            s.next()
            if "session" in opts:
                raise _error(tok, "duplicate 'in session'")
            opts["session"] = _session_name(s)
        else:
            positional.append(tok)
    return positional, opts


def _output_name(s: _Stream, opt: _Token) -> str:
    tok = s.expect(f"a variable name after {opt.text}")
    if tok.kind != "word" or not tok.text.isidentifier() or keyword.iskeyword(tok.text):
        raise _error(tok, f"{opt.text} needs a Python variable name, got {tok.text!r}")
    return tok.text


def _session_name(s: _Stream) -> str:
    tok = s.expect("a session name")
    if tok.kind not in ("word", "string"):
        raise _error(tok, f"expected a session name, got {tok.text!r}")
    return tok.value


# -- queries --------------------------------------------------------------------------------
def _parse_query(verb_tok: _Token, head: _Stream, body: list[list[_Token]], text: str) -> QueryCommand:
    kind = verb_tok.word()
    positional, opts = _line_options(head, ("output", "wait", "session"))
    k: int | Expr = 10
    if positional:
        k = _int_or_expr(positional[0], "k", 1)
    if len(positional) > 1:
        extra = positional[1]
        hint = "; keyword lines go in the cell body" if extra.word() in _ALL_KEYWORDS else ""
        raise _error(extra, f"unexpected {extra.text!r} after k{hint}")
    found: dict[str, tuple[_Token, Any]] = {}
    for tokens in body:
        kw_tok, kw, value = _parse_body_line(kind, tokens)
        key = "neurons" if kw == "channels" else kw
        if key in found:
            first = found[key][0]
            if first.word() != kw_tok.word():
                raise _error(kw_tok, "give either 'neurons' or 'channels', not both")
            raise _error(kw_tok, f"duplicate {kw!r} line (first given on line {first.line})")
        found[key] = (kw_tok, value)
    if "session" in found and "session" in opts:
        raise _error(found["session"][0], "the session is already given on the magic line")
    for key in ("target", "layer", "neurons") if kind == "knn" else ("layer", "neurons"):
        if key not in found:
            name = "'neurons' or 'channels'" if key == "neurons" else repr(key)
            raise _error(verb_tok, f"{kind} needs a {name} line")

    def get(key: str, default: Any = None) -> Any:
        return found[key][1] if key in found else default

    return QueryCommand(kind=kind, k=k, layer=get("layer"), neurons=get("neurons"),
                        by=get("by", "sum"), metric=get("metric", "l2"), target=get("target"),
                        include_target=get("include", False), filter=get("where"),
                        output=opts.get("output"), wait=opts.get("wait", False),
                        session=opts.get("session", get("session")), text=text)


def _parse_body_line(kind: str, tokens: list[_Token]) -> tuple[_Token, str, Any]:
    s = _Stream(tokens, tokens[0])
    kw_tok = s.next()
    kw = kw_tok.word()
    allowed = KEYWORDS[kind]
    if kw == "in" and s.peek_word("session"):
        s.next()
        kw = "session"
    if kw not in allowed:
        if kw in _ALL_KEYWORDS:
            raise _error(kw_tok, f"{kw!r} is not used by {kind}", _OTHER_VERB_HINT.get(kw))
        what = f"unknown keyword {kw_tok.text!r}" if kw else f"expected a keyword, got {kw_tok.text!r}"
        raise _error(kw_tok, what, _suggest(kw, allowed))
    value = _BODY_PARSERS[kw](s, kw_tok)
    s.finish(f"in the {kw!r} line")
    return kw_tok, kw, value


def _p_layer(s: _Stream, kw: _Token) -> str | Expr:
    return _str_or_expr(s.expect("a layer name after 'layer'"), "a layer name")


def _p_neurons(s: _Stream, kw: _Token) -> NeuronList | TopOfInput:
    if s.peek_word("top"):
        s.next()
        n = _int_or_expr(s.expect("a count after 'top'"), "the neuron count", 1)
        s.expect_word("of", "top N")
        s.expect_word("input", "of")
        return TopOfInput(n, _int_or_expr(s.expect("an input id after 'input'"), "the input id", 0))
    return NeuronList(_items(s, kw, tuples=True))


def _p_channels(s: _Stream, kw: _Token) -> Channels:
    return Channels(_items(s, kw, tuples=False))


def _items(s: _Stream, kw: _Token, tuples: bool) -> list:
    items: list = []
    while not s.done():
        tok = s.next()
        if tok.kind == ",":
            continue
        if tok.kind == "(" and tuples:
            items.append(_tuple(s, tok))
        elif tok.kind == "(":
            raise _error(tok, "channels are single numbers, not index tuples")
        elif tok.kind == "expr":
            items.append(_expr(tok))
        elif tok.kind == "word" and ":" in tok.text:
            items.append(_range(tok))
        elif tok.kind == "word" and _INT_RE.fullmatch(tok.text):
            items.append(_int(tok, "a neuron index", 0))
        else:
            raise _error(tok, f"expected a neuron index, {'an index tuple, ' if tuples else ''}"
                              f"a start:stop range or a {{expression}}, got {tok.text!r}")
    if not items:
        raise s.end_error(f"expected {kw.word()} after {kw.text!r}")
    return items


def _tuple(s: _Stream, open_tok: _Token) -> tuple:
    values = []
    while True:
        tok = s.next()
        if tok is None:
            raise _error(open_tok, "missing ')' for this '('")
        if tok.kind == ")":
            break
        if tok.kind != ",":
            values.append(_int_or_expr(tok, "an index in a tuple", 0))
    if not values:
        raise _error(open_tok, "empty index tuple")
    return tuple(values)


def _range(tok: _Token) -> Range:
    parts = tok.text.split(":")
    if len(parts) > 3 or any(p and not p.isdecimal() or not p.isascii() for p in parts):
        raise _error(tok, f"a range is start:stop or start:stop:step with non-negative integers, got {tok.text!r}")
    if any(len(p) > _MAX_DIGITS for p in parts):
        raise _error(tok, "range bound is too large")
    if not parts[1]:
        raise _error(tok, f"the range {tok.text!r} needs an end")
    start, stop = int(parts[0] or 0), int(parts[1])
    step = int(parts[2]) if len(parts) == 3 and parts[2] else 1
    if step < 1:
        raise _error(tok, "a range step must be positive")
    if start >= stop:
        raise _error(tok, f"the range {tok.text!r} is empty")
    return Range(start, stop, step)


def _p_by(s: _Stream, kw: _Token) -> str | Weights | Expr:
    tok = s.expect("an aggregation after 'by' (sum, mean, max, l2 or weights ...)")
    if tok.kind == "expr":
        return _expr(tok)
    if tok.word() in AGGREGATIONS:
        return tok.word()
    if tok.word() == "weights":
        return Weights(_weights(s, tok))
    raise _error(tok, f"unknown aggregation {tok.text!r}; use sum, mean, max, l2 or weights",
                 _suggest(tok.word(), AGGREGATIONS + ("weights",)))


def _weights(s: _Stream, kw: _Token) -> list:
    values: list = []
    while not s.done():
        tok = s.next()
        if tok.kind == "expr":
            values.append(_expr(tok))
        elif tok.kind != ",":
            w = _number(tok, "a weight")
            if w < 0:
                raise _error(tok, f"weights must be non-negative, got {tok.text}")
            values.append(w)
    if not values:
        raise s.end_error("expected weights after 'weights'")
    return values


def _p_metric(s: _Stream, kw: _Token) -> str:
    tok = s.expect("a metric after 'metric' (l2, l1, linf or cosine)")
    if tok.word() in METRICS:
        return tok.word()
    raise _error(tok, f"unknown metric {tok.text!r}; use l2, l1, linf or cosine", _suggest(tok.word(), METRICS))


def _p_target(s: _Stream, kw: _Token) -> int | Expr:
    return _int_or_expr(s.expect("an input id or {expression} after 'target'"), "the target input id", 0)


def _p_include(s: _Stream, kw: _Token) -> bool:
    s.expect_word("target", "include")
    return True


def _p_session(s: _Stream, kw: _Token) -> str:
    return _session_name(s)


_FIELDS = {"labels": "labels", "label": "labels", "ids": "ids", "id": "ids"}


def _p_where(s: _Stream, kw: _Token) -> Filter:
    tok = s.expect("'labels' or 'ids' after 'where'")
    name = _FIELDS.get(tok.word(), tok.word())
    if name not in ("labels", "ids"):
        raise _error(tok, f"can only filter on labels or ids, not {tok.text!r}", _suggest(name, ("labels", "ids")))
    op_tok = s.expect("an operator (==, !=, in, not in)")
    op = op_tok.kind if op_tok.kind in ("==", "!=") else op_tok.word()
    if op == "not" and s.peek_word("in"):
        s.next()
        op = "not in"
    elif op not in ("==", "!=", "in"):
        raise _error(op_tok, f"expected ==, !=, in or not in, got {op_tok.text!r}",
                     "==" if op_tok.kind == "=" else None)
    if op in ("==", "!="):
        value = _scalar(s.expect(f"a value after {op}"), name)
    else:
        value = _collection(s, name)
    return Filter(name, op, value)


def _scalar(tok: _Token, name: str) -> int | str | Expr:
    if tok.kind == "expr":
        return _expr(tok)
    if tok.kind == "string" and name == "labels":
        return tok.value
    what = "an input id" if name == "ids" else "a label"
    if tok.kind == "word" and _INT_RE.fullmatch(tok.text):
        return _int(tok, what, 0 if name == "ids" else None)
    quoted = " (quote text labels: 'cat')" if name == "labels" and tok.kind == "word" else ""
    raise _error(tok, f"expected {what}, got {tok.text!r}{quoted}")


def _collection(s: _Stream, name: str) -> list | Expr:
    first = s.peek()
    if first is None:
        raise s.end_error("expected values after 'in'")
    if first.kind == "expr" and s.i == len(s.tokens) - 1:
        s.next()
        return _expr(first)
    paren = first.kind == "("
    if paren:
        s.next()
    values = []
    while True:
        tok = s.next()
        if tok is None:
            if paren:
                raise _error(first, "missing ')' for this '('")
            break
        if paren and tok.kind == ")":
            break
        if tok.kind != ",":
            values.append(_scalar(tok, name))
    if not values:
        raise _error(first, "empty list of values")
    return values


_BODY_PARSERS = {
    "layer": _p_layer, "neurons": _p_neurons, "channels": _p_channels, "by": _p_by,
    "metric": _p_metric, "target": _p_target, "include": _p_include, "where": _p_where,
    "session": _p_session,
}


# -- inspect --------------------------------------------------------------------------------
def _parse_inspect(verb_tok: _Token, head: _Stream, body: list[list[_Token]], text: str) -> InspectCommand:
    positional, opts = _line_options(head, ("output", "wait", "session"))
    if positional:
        raise _error(positional[0], f"unexpected {positional[0].text!r} after 'inspect'; "
                                    "keyword lines (layer, hypotheses, measures...) go in the cell body")
    found: dict[str, tuple[_Token, Any]] = {}
    for tokens in body:
        s = _Stream(tokens, tokens[0])
        kw_tok = s.next()
        kw = kw_tok.word()
        if kw == "in" and s.peek_word("session"):
            s.next()
            kw = "session"
        kw = _INSPECT_ALIASES.get(kw, kw)
        if kw not in _INSPECT_KEYWORDS:
            what = f"unknown keyword {kw_tok.text!r}" if kw else f"expected a keyword, got {kw_tok.text!r}"
            raise _error(kw_tok, what + " in inspect", _suggest(kw, _INSPECT_KEYWORDS))
        if kw in found:
            raise _error(kw_tok, f"duplicate {kw!r} line (first given on line {found[kw][0].line})")
        found[kw] = (kw_tok, _inspect_value(s, kw_tok, kw))
        s.finish(f"in the {kw!r} line")
    for key in ("layer", "hypotheses"):
        if key not in found:
            raise _error(verb_tok, f"inspect needs a {key!r} line, e.g. "
                                   + ("'layer conv2:mean, fc1'" if key == "layer" else "'hypotheses class, ink'"))
    if "session" in found and "session" in opts:
        raise _error(found["session"][0], "the session is already given on the magic line")
    if "models" in found and ("session" in found or "session" in opts):
        raise _error(found["models"][0], "a 'models' line names the sessions to inspect; drop the session")

    def get(key: str, default: Any = None) -> Any:
        return found[key][1] if key in found else default

    options = {k: found[k][1] for k in INSPECT_OPTIONS if k in found}
    return InspectCommand(views=get("layer"), hypotheses=get("hypotheses"), measures=get("measures"),
                          units=get("units"), options=options, tokenizer=get("tokenizer"), filter=get("where"),
                          output=opts.get("output"), wait=opts.get("wait", False),
                          session=opts.get("session", get("session")), models=get("models"), text=text)


def _inspect_value(s: _Stream, kw_tok: _Token, kw: str) -> Any:
    if kw in ("layer", "hypotheses", "measures"):
        what = {"layer": "a layer name", "hypotheses": "a hypothesis", "measures": "a measure"}[kw]
        tokens = [tok for tok in _rest(s) if tok.kind != ","]
        if kw == "measures":
            bad = next((tok for tok in tokens if tok.kind != "word"), None)
            if bad is not None:
                raise _error(bad, f"measures are names (pearson, auroc, mi, iou, probe), got {bad.text!r}")
        items = [_str_or_expr(tok, what) for tok in tokens]
        if not items:
            raise s.end_error(f"expected {kw} after {kw_tok.text!r}")
        return items
    if kw == "units":
        return NeuronList(_items(s, kw_tok, tuples=True))
    if kw == "tokenizer":
        tok = s.expect("a {tokenizer} expression after 'tokenizer'")
        if tok.kind not in ("expr", "word"):
            raise _error(tok, f"tokenizer needs a variable name or {{expression}}, got {tok.text!r}")
        return _expr(tok) if tok.kind == "expr" else Name(tok.text, tok.line, tok.column, tok.source, len(tok.text))
    if kw == "where":
        return _p_where(s, kw_tok)
    if kw == "session":
        return _session_name(s)
    if kw == "models":
        return _model_names(s, kw_tok)
    tok = s.expect(f"a value after {kw_tok.text!r}")
    kind = INSPECT_OPTIONS[kw]
    if tok.kind == "expr":
        return _expr(tok)
    if kind.endswith("?") and tok.word() == "none":
        return None
    if kind == "float":
        return _number(tok, kw)
    if kind == "bool":
        if tok.word() in _BOOLS:
            return _BOOLS[tok.word()]
        raise _error(tok, f"{kw} needs true or false, got {tok.text!r}")
    return _int(tok, kw, 0 if kind == "int0" else 1)


def _model_names(s: _Stream, kw_tok: _Token) -> list[str]:
    """Session names of a ``models a, b, c`` line: distinct words or strings."""
    names: list[str] = []
    for tok in _rest(s):
        if tok.kind == ",":
            continue
        if tok.kind not in ("word", "string"):
            raise _error(tok, f"models are session names (as in 'models epoch1, epoch4'), got {tok.text!r}")
        if tok.value in names:
            raise _error(tok, f"model {tok.value!r} is named twice")
        names.append(tok.value)
    if not names:
        raise s.end_error(f"expected session names after {kw_tok.text!r}")
    return names


def _rest(s: _Stream) -> list[_Token]:
    out = []
    while not s.done():
        out.append(s.next())
    return out


# -- other verbs ----------------------------------------------------------------------------
def _parse_use(s: _Stream, verb_tok: _Token, text: str) -> UseCommand:
    name: Any = None
    options: dict[str, Any] = {}
    while not s.done():
        tok = s.next()
        nxt = s.peek()
        if nxt is not None and nxt.kind == "=":
            s.next()
            key = tok.word()
            if key not in USE_OPTIONS:
                raise _error(tok, f"unknown use option {tok.text!r}", _suggest(key, USE_OPTIONS))
            if key in options or (key == "name" and name is not None):
                raise _error(tok, f"duplicate option {key!r}")
            value_tok = s.expect(f"a value after {key}=")
            if s.peek() is not None and s.peek().kind == "=":  # `model= data=x`
                raise QuerySyntaxError(f"expected a value after {key}=", nxt.line, nxt.column + 1, nxt.source)
            value = _use_value(value_tok, key)
            if key == "name":
                name = value
            else:
                options[key] = value
        elif tok.kind in ("word", "string", "expr") and name is None and not options:
            name = _str_or_expr(tok, "a session name")
        else:
            raise _error(tok, f"unexpected {tok.text!r}; use takes a session name and key=value options")
    if name is None and not options:
        raise _error(verb_tok, "use needs a session name, or model=... data=... to create one")
    for required in ("model", "data"):
        if options and required not in options:
            raise _error(verb_tok, f"use needs {required}=... to create a session")
    return UseCommand(name, options, text=text)


def _use_value(tok: _Token, key: str) -> Any:
    kind = USE_OPTIONS[key]
    if tok.kind == "expr":
        return _expr(tok)
    if kind == "name":
        if tok.kind == "word" and all(p.isidentifier() and not keyword.iskeyword(p) for p in tok.text.split(".")):
            return Name(tok.text, tok.line, tok.column, tok.source, len(tok.text))
        raise _error(tok, f"{key}= needs a variable name or a {{expression}}, got {tok.text!r}")
    if kind == "str":
        return _str_or_expr(tok, f"a value for {key}=")
    if kind == "int":
        return _int(tok, key, 1)
    if kind == "float":
        return _number(tok, key)
    if tok.word() in _BOOLS:
        return _BOOLS[tok.word()]
    raise _error(tok, f"{key}= needs true or false, got {tok.text!r}")


def _parse_layers(s: _Stream, verb_tok: _Token, text: str) -> LayersCommand:
    positional, opts = _line_options(s, ("session",))
    if positional:
        raise _error(positional[0], f"unexpected {positional[0].text!r} after 'layers'")
    return LayersCommand(opts.get("session"), text=text)


def _parse_index(s: _Stream, verb_tok: _Token, text: str) -> IndexCommand:
    positional, opts = _line_options(s, ("wait", "session", "rebuild"))
    views = [_str_or_expr(tok, "a layer name") for tok in positional if tok.kind != ","]
    if not views:
        raise _error(verb_tok, "index needs at least one layer, e.g. 'index conv2 fc1'")
    return IndexCommand(views, wait=opts.get("wait", False), session=opts.get("session"), text=text,
                        rebuild=opts.get("rebuild", False))


def _parse_extend(s: _Stream, verb_tok: _Token, text: str) -> ExtendCommand:
    positional, opts = _line_options(s, ("wait", "session"))
    rest = _Stream(positional, verb_tok)
    tok = rest.expect("the new inputs after 'extend' (a variable name or {expression})")
    data = _value(tok, "the new inputs")
    labels = None
    if rest.peek_word("labels"):
        rest.next()
        labels = _value(rest.expect("the labels of the new inputs after 'labels'"), "the labels")
    rest.finish("after the new inputs (and 'labels ...')")
    return ExtendCommand(data, labels, wait=opts.get("wait", False), session=opts.get("session"), text=text)


def _value(tok: _Token, what: str) -> Any:
    if tok.kind == "expr":
        return _expr(tok)
    if tok.kind == "word" and tok.text.isidentifier():
        return Name(tok.text, tok.line, tok.column, tok.source, len(tok.text))
    raise _error(tok, f"expected {what} as a variable name or {{expression}}, got {tok.text!r}")


def _parse_jobs(s: _Stream, verb_tok: _Token, text: str) -> JobsCommand:
    s.finish("after 'jobs'")
    return JobsCommand(text=text)


def _parse_status(s: _Stream, verb_tok: _Token, text: str) -> StatusCommand:
    s.finish("after 'status'")
    return StatusCommand(text=text)


def _parse_cancel(s: _Stream, verb_tok: _Token, text: str) -> CancelCommand:
    tok = s.next()
    job = None if tok is None else _int(tok, "the job id", 0)
    s.finish("after the job id")
    return CancelCommand(job, text=text)


def _parse_top_neurons(s: _Stream, verb_tok: _Token, text: str) -> NeuronsCommand:
    positional, opts = _line_options(s, ("session",))
    rest = _Stream(positional, verb_tok)
    if not rest.peek_word("top"):
        tok = rest.peek()
        raise _error(tok or verb_tok, "expected 'neurons top N of input ID layer VIEW'")
    spec = _p_neurons(rest, verb_tok)
    rest.expect_word("layer", "the input id")
    layer = _str_or_expr(rest.expect("a layer name after 'layer'"), "a layer name")
    rest.finish("after the layer")
    return NeuronsCommand(spec.n, spec.input_id, layer, opts.get("session"), text=text)


def _parse_help(s: _Stream, verb_tok: _Token, text: str) -> HelpCommand:
    tok = s.next()
    topic = None if tok is None else tok.word()
    if tok is not None and (not topic or topic not in HELP):
        raise _error(tok, f"no help on {tok.text!r}", _suggest(topic, [t for t in HELP if t]))
    s.finish("after the help topic")
    return HelpCommand(topic, text=text)


_SIMPLE_PARSERS = {
    "use": _parse_use, "layers": _parse_layers, "index": _parse_index, "extend": _parse_extend, "neurons": _parse_top_neurons, "jobs": _parse_jobs,
    "cancel": _parse_cancel, "status": _parse_status, "help": _parse_help,
}


# -- evaluation -----------------------------------------------------------------------------
def resolve(value: Any, namespace: Mapping[str, Any]) -> Any:
    """Evaluate ``Expr`` (``eval(text, namespace)``) and look up ``Name`` in ``namespace``.

    Lists, tuples, dicts and this module's value dataclasses (NeuronList, Weights, Filter,
    TopOfInput...) are resolved item by item; any other value passes through. A failing
    expression or a missing name raises QuerySyntaxError at its position.
    """
    if isinstance(value, Expr):
        return _evaluate(value, namespace)
    if isinstance(value, Name):
        return _lookup(value, namespace)
    if isinstance(value, list):
        return [resolve(v, namespace) for v in value]
    if isinstance(value, tuple):
        return tuple(resolve(v, namespace) for v in value)
    if isinstance(value, dict):
        return {k: resolve(v, namespace) for k, v in value.items()}
    if is_dataclass(value) and not isinstance(value, type) and type(value).__module__ == __name__:
        return replace(value, **{f.name: resolve(getattr(value, f.name), namespace) for f in fields(value)})
    return value


def _at(node: Expr | Name, message: str, suggestion: str | None = None) -> QuerySyntaxError:
    return QuerySyntaxError(message, node.line, node.column, node.source_line, suggestion, node.width)


def _visible(namespace: Mapping[str, Any]) -> list[str]:
    return [k for k in namespace if isinstance(k, str) and not k.startswith("_")]


def _evaluate(expr: Expr, namespace: Mapping[str, Any]) -> Any:
    scope = namespace if isinstance(namespace, dict) else dict(namespace)
    try:
        return eval(expr.text, scope)  # noqa: S307 - evaluating the user's own {expression}
    except Exception as e:  # noqa: BLE001 - re-raised with its position
        missing = getattr(e, "name", None) if isinstance(e, NameError) else None
        suggestion = _suggest(missing, _visible(namespace)) if isinstance(missing, str) else None
        raise _at(expr, f"{{{expr.text}}} failed: {type(e).__name__}: {e}", suggestion) from e


def _lookup(name: Name, namespace: Mapping[str, Any]) -> Any:
    first, *rest = name.text.split(".")
    if first not in namespace:
        raise _at(name, f"name {first!r} is not defined", _suggest(first, _visible(namespace)))
    value = namespace[first]
    for attr in rest:
        try:
            value = getattr(value, attr)
        except Exception as e:  # noqa: BLE001 - re-raised with its position
            raise _at(name, f"{name.text}: {type(e).__name__}: {e}") from e
    return value


def _as_index(value: Any) -> int | None:
    """``value`` as an int if it is an integer (int, numpy/torch integer scalar), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _as_index_tuple(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, (str, bytes)):
        return None
    try:
        items = [_as_index(v) for v in value]
    except TypeError:
        return None
    return tuple(items) if items and None not in items else None


def expand_neurons(spec: NeuronList | Channels, namespace: Mapping[str, Any]) -> list[int | tuple[int, ...]]:
    """The flat list of neurons (ints and index tuples) of a NeuronList or Channels.

    Ranges are expanded. An Expr item giving an int (or, for neurons, a tuple of ints) is one
    neuron; one giving any other iterable (list, range, array, tensor) is spliced in, each of
    its elements an int or (for neurons) an int sequence taken as an index tuple.
    """
    tuples = isinstance(spec, NeuronList)
    out: list[int | tuple[int, ...]] = []
    for item in spec.items:
        if isinstance(item, Range):
            out.extend(range(item.start, item.stop, item.step))
        elif isinstance(item, Expr):
            out.extend(_neurons_of(resolve(item, namespace), item, tuples))
        elif isinstance(item, tuple):
            out.append(_tuple_of(item, namespace))
        else:
            out.append(item)
    return out


def _tuple_of(item: tuple, namespace: Mapping[str, Any]) -> tuple[int, ...]:
    values = []
    for v in item:
        i = _as_index(resolve(v, namespace))
        if i is None:
            raise _at(v, f"{{{v.text}}} must give an integer index")
        values.append(i)
    return tuple(values)


def _neurons_of(value: Any, expr: Expr, tuples: bool) -> list[int | tuple[int, ...]]:
    single = _as_index(value)
    if single is not None:
        return [single]
    if tuples and isinstance(value, tuple) and _as_index_tuple(value) is not None:
        return [_as_index_tuple(value)]
    what = "neuron indices or index tuples" if tuples else "channel numbers"
    if isinstance(value, (str, bytes)):
        raise _at(expr, f"{{{expr.text}}} gave a string; expected {what}")
    try:
        elements = list(value)
    except TypeError:
        raise _at(expr, f"{{{expr.text}}} gave {type(value).__name__}; expected {what}") from None
    out: list[int | tuple[int, ...]] = []
    for el in elements:
        index = _as_index(el)
        if index is None and tuples:
            index = _as_index_tuple(el)
        if index is None:
            raise _at(expr, f"{{{expr.text}}} contains {el!r}; expected {what}")
        out.append(index)
    return out


def expand_weights(weights: Weights, namespace: Mapping[str, Any]) -> list[float]:
    """The flat list of float weights; an Expr may give one number or an iterable of them."""
    out: list[float] = []
    for item in weights.values:
        if not isinstance(item, Expr):
            out.append(float(item))
            continue
        value = resolve(item, namespace)
        try:
            values = [value] if isinstance(value, (str, bytes)) else list(value)
        except TypeError:
            values = [value]
        for v in values:
            try:
                w = float(v) if not isinstance(v, (str, bytes, bool)) else math.nan
            except (TypeError, ValueError):
                w = math.nan
            if not math.isfinite(w) or w < 0:
                raise _at(item, f"{{{item.text}}} gave {v!r}; weights must be non-negative numbers")
            out.append(w)
    return out


# -- help -----------------------------------------------------------------------------------
HELP = {
    "": "%everest commands: use, layers, index, topk, bottomk, knn, inspect, neurons, jobs, cancel, status, help.\n"
        "  %everest use model=net data=images index=idx   open a session (name=..., labels=...)\n"
        "  %everest index conv2 conv3:mean --wait            build the index of some layers\n"
        "  %%everest topk 10                                 then lines: layer, neurons, by, where\n"
        "  %%everest knn 10                                  then lines: target, layer, neurons, metric\n"
        "  %%everest inspect                                 then lines: layer, hypotheses, measures\n"
        "`%everest help TOPIC` explains a command or keyword; `help expressions` the {...} syntax.",
    "use": "use model=NAME data=NAME [index=PATH] [name=NAME] [labels=NAME] [batch_size=N] ...\n"
           "  opens a session (and makes it current); `use NAME` switches to a named session.\n"
           "  Other keys: collate, forward, render, tokenizer, device, partitions, memory_budget, cache_bytes,\n"
           "  index_cache_bytes, tolerance, ratio, min_list, scheme, lazy, rebuild, data_fingerprint.\n"
           "  Values may be {expressions}.",
    "layers": "layers [in session NAME]: the model's layers, their output shapes and what is indexed.",
    "index": "index VIEW ... [--wait] [--rebuild] [in session NAME]: build the index of views such as conv2\n"
             "  or conv2:mean (channel means) in the background; --wait blocks until it is done. Views\n"
             "  already indexed are left as they are; --rebuild builds them again.",
    "extend": "extend DATA [labels LABELS] [--wait] [in session NAME]: append new inputs (a variable or\n"
              "  {expression} of the dataset's kind) to the dataset and to every indexed view, without a\n"
              "  rebuild; they get the next ids.",
    "topk": "%%everest topk K [-o VAR] [--wait]\n  layer VIEW\n  neurons 5, 17, 301 | channels 3, 7\n"
            "  [by sum|mean|max|l2|weights w1, w2, ...]\n  [where labels == 7]\n"
            "the K inputs with the highest aggregate activation of the neuron group.",
    "bottomk": "%%everest bottomk K ...: like topk, the K inputs with the lowest aggregate activation.",
    "knn": "%%everest knn K [-o VAR] [--wait]\n  target ID | {tensor}\n  layer VIEW\n"
           "  neurons ... | neurons top N of input ID\n  [metric l2|l1|linf|cosine]\n  [include target]\n"
           "the K inputs nearest to the target in the group's activation space\n"
           "(a dataset target is left out of its own answer unless `include target`).",
    "inspect": "%%everest inspect [-o VAR] [--wait]\n  layer VIEW, VIEW ...\n"
               "  hypotheses class, ink, keyword:return|yield, {labels_array}, ...\n"
               "  [measures pearson, auroc, mi, iou, probe]   (default: by hypothesis kind)\n"
               "  [units 0:10]  [where labels == 3]  [tokenizer {tok}]  [models NAME, NAME ...]\n"
               "  [epsilon 0.05] [confidence 0.95] [top 5] [patience 3|none] [min_inputs 500]\n"
               "  [max_inputs 10000|none] [early_stop true] [bins 10] [q 0.005] [holdout 0.2] [seed 0]\n"
               "which units track each hypothesis, and how strongly: a ranked table per hypothesis\n"
               "(click a unit for its top-k gallery); -o binds the long DataFrame. A models line\n"
               "inspects several sessions over the same data in one pass (rows gain a model column).",
    "hypotheses": "hypotheses NAME | {expr}, ...: built-in names (ink, brightness, thickness, class,\n"
                  "  ink_mask, quotes, brackets, punctuation, capitalised, code, position,\n"
                  "  keyword:a|b, regex:..., contains:...) or {labels, functions, masks, Hypothesis}.",
    "measures": "measures pearson, auroc, mi, iou, probe (inspect; default: chosen by hypothesis kind)",
    "jobs": "jobs: list background index builds and queries.",
    "cancel": "cancel [JOB]: cancel a background job (default: every unfinished one).",
    "status": "status: the sessions, their models, datasets and indexes.",
    "help": "help [TOPIC]: help on a command or keyword.",
    "layer": "layer VIEW: the layer (module path) to query, or LAYER:mean / LAYER:max for channel views.",
    "neurons": "neurons 5, 17 | (3, 4, 5), (3, 4, 6) | 0:64:2 | {expr} | top N of input ID   (a query line)\n"
               "%everest neurons top N of input ID layer VIEW: the N most activated neurons of one input.",
    "channels": "channels 3, 7: channel numbers of a channel view (layer conv2:mean).",
    "by": "by sum | mean | max | l2 | weights w1, w2, ... (non-negative, one per neuron)",
    "metric": "metric l2 | l1 | linf | cosine (knn only; default l2)",
    "target": "target ID | {expr}: the knn target, a dataset input id or an input tensor.",
    "include": "include target: let a dataset target appear in its own knn answer.",
    "where": "where labels == 7 | labels != 7 | labels in (1, 2) | ids not in {expr}\n"
             "  (`label` and `id` work too: galleries and DataFrames call the column `label`)",
    "session": "in session NAME (or session NAME): run the query on a named session.",
    "expressions": "{python expression} is evaluated in the notebook namespace when the command\n"
                   "runs: %%everest topk {k}, layer {name}, neurons {ids}, where ids in {allowed}.",
}


def help_text(topic: str | None = None) -> str:
    """The help text of a topic (a verb, a body keyword or 'expressions'); None: the overview."""
    return HELP.get((topic or "").lower(), HELP[""])
