"""Parser of the ``%everest`` line magic and ``%%everest`` cell magic (see docs/query-language.md).

Plain Python: imports no IPython and never reads a user namespace. Its vocabularies are
declared elsewhere, once: the ``use`` keys by ``engine.config.SessionConfig``, the inspect
options by ``inspect.plan.InspectOptions``, aggregations and metrics by ``engine.query``.
``parse_cell(line, cell)`` turns the magic's text into one frozen command dataclass.
``{python expressions}`` are kept unevaluated as ``Expr`` and bare variable names in ``use``
as ``Name``; the magic layer evaluates them with ``resolve`` (or ``expand_neurons`` /
``expand_weights`` for lists), which re-raise failures as positioned ``QuerySyntaxError``.

Commands (every one also has ``text``, the original ``%everest ...``/``%%everest ...`` text,
and ``spans``, keyword -> ``Span(line, column, width)`` of its value, both excluded from ``==``
and ``repr``; ``spans[verb]`` covers the magic line's arguments, ``spans["views[i]"]`` the
i-th view of ``index``):

- ``UseCommand(name, options)``: ``name`` str | Expr | None; ``options`` maps a key of
  ``USE_OPTIONS`` to its value, as the key's kind says: "object" -> Name | Expr, "str" ->
  str | Expr, "int" -> int | Expr, "float" -> float | Expr, "bool" -> bool | Expr. ``name=``
  is moved to ``name``; a ``use`` with no options switches to the named session.
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

from everest_magic.engine.config import SessionConfig, option_kind
from everest_magic.engine.errors import EverestError
from everest_magic.engine.query import AGGREGATIONS, METRICS
from everest_magic.inspect.measures import MEASURES
from everest_magic.inspect.plan import InspectOptions

__all__ = [
    "parse_cell", "resolve", "expand_neurons", "expand_weights", "help_text", "QuerySyntaxError",
    "EverestError", "Command", "UseCommand", "LayersCommand", "IndexCommand", "QueryCommand",
    "NeuronsCommand", "ExtendCommand", "JobsCommand", "CancelCommand", "StatusCommand", "HelpCommand", "InspectCommand", "Expr", "Name", "Range",
    "NeuronList", "Channels", "TopOfInput", "Filter", "Weights", "Span", "error_at", "VERBS", "QUERY_VERBS",
    "KEYWORDS", "AGGREGATIONS", "METRICS", "USE_OPTIONS", "INSPECT_OPTIONS", "LINE_OPTIONS", "VERB_OPTIONS", "HELP",
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
class Span:
    """Where a value is in the magic text: 1-based line (1: the magic line) and column, width."""
    line: int
    column: int
    width: int = 1
    source_line: str = field(default="", compare=False, repr=False)


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
    """Base class of the parsed commands; each has ``text``, the original magic text, and
    ``spans``: keyword -> Span of its value (``spans[verb]``: the magic line's arguments)."""
    text: str
    spans: dict


@dataclass(frozen=True)
class UseCommand(Command):
    """``use NAME`` (switch session) or ``use [NAME] key=value ...`` (create a session)."""
    name: Any
    options: dict
    text: str = field(default="", compare=False, repr=False)
    spans: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class LayersCommand(Command):
    """``layers [in session NAME]``: list the model's layers and what is indexed."""
    session: str | None = None
    text: str = field(default="", compare=False, repr=False)
    spans: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class IndexCommand(Command):
    """``index VIEW ... [--wait] [--rebuild] [in session NAME]``: build the index of some views
    (views already complete are left alone unless --rebuild)."""
    views: list
    wait: bool = False
    session: str | None = None
    text: str = field(default="", compare=False, repr=False)
    spans: dict = field(default_factory=dict, compare=False, repr=False)
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
    spans: dict = field(default_factory=dict, compare=False, repr=False)


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
    spans: dict = field(default_factory=dict, compare=False, repr=False)


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
    spans: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class NeuronsCommand(Command):
    """``neurons top N of input ID layer VIEW [in session NAME]``: the N most activated neurons
    of one input in a view (what a gallery's "most activated neurons" shows)."""
    count: Any
    input_id: Any
    layer: Any
    session: str | None = None
    text: str = field(default="", compare=False, repr=False)
    spans: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class JobsCommand(Command):
    """``jobs``: list background jobs."""
    text: str = field(default="", compare=False, repr=False)
    spans: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class CancelCommand(Command):
    """``cancel [JOB]``: cancel a job (None: every unfinished one)."""
    job: int | None = None
    text: str = field(default="", compare=False, repr=False)
    spans: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class StatusCommand(Command):
    """``status``: show the sessions and their indexes."""
    text: str = field(default="", compare=False, repr=False)
    spans: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class HelpCommand(Command):
    """``help [TOPIC]``; a bare ``%everest`` is ``help``."""
    topic: str | None = None
    text: str = field(default="", compare=False, repr=False)
    spans: dict = field(default_factory=dict, compare=False, repr=False)


# -- vocabulary -----------------------------------------------------------------------------
VERBS = ("use", "layers", "index", "extend", "topk", "bottomk", "knn", "inspect", "neurons", "jobs", "cancel", "status", "help")
QUERY_VERBS = ("topk", "bottomk", "knn")
_RANKING = ("layer", "neurons", "channels", "by", "where", "session")
KEYWORDS = {
    "topk": _RANKING,
    "bottomk": _RANKING,
    "knn": ("target", "layer", "neurons", "channels", "metric", "include", "where", "session"),
}
_ALL_KEYWORDS = ("layer", "neurons", "channels", "by", "metric", "target", "include", "where", "session")
# inspect: option lines -> their InspectOptions field metadata (kind, "none" allowed, "min" of an int)
INSPECT_OPTIONS = {f.name: f.metadata for f in fields(InspectOptions) if option_kind(f)}
_INSPECT_KEYWORDS = ("layer", "hypotheses", "measures", "units", "tokenizer", "where", "session", "models") + \
    tuple(INSPECT_OPTIONS)
_INSPECT_ALIASES = {"layers": "layer", "views": "layer", "view": "layer", "hypothesis": "hypotheses",
                    "measure": "measures", "unit": "units", "model": "models"}
_OTHER_VERB_HINT = {"by": "metric", "metric": "by"}
# use: key -> value kind (see engine.config): the Session's model, data and index, the magic's own
# render and tokenizer, then every SessionConfig field
USE_OPTIONS = {"model": "object", "data": "object", "index": "str", "render": "object", "tokenizer": "object",
               **{f.name: option_kind(f) for f in fields(SessionConfig)}}
# magic-line options: name -> (spellings, what follows, help); `in session` is two words
LINE_OPTIONS = {
    "output": (("-o", "--output"), "VAR", "bind the result to a variable"),
    "wait": (("--wait",), None, "block until done"),
    "rebuild": (("--rebuild",), None, "build views already indexed again"),
    "session": (("in session",), "NAME", "run on a named session"),
}
_QUERY_LINE = ("output", "wait", "session")
VERB_OPTIONS = {"topk": _QUERY_LINE, "bottomk": _QUERY_LINE, "knn": _QUERY_LINE, "inspect": _QUERY_LINE,
                "index": ("wait", "rebuild", "session"), "extend": ("wait", "session"), "layers": ("session",),
                "neurons": ("session",)}
_OPTIONS = {spelling: name for name, (spellings, _, _) in LINE_OPTIONS.items() for spelling in spellings
            if spelling.startswith("-")}
_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
_INT_RE = re.compile(r"[+-]?[0-9]+")
_NUM_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MAX_DIGITS = 30
MAX_MAGIC_LINE = 10_000   # characters; a longer magic line is refused before it is parsed


def _one_of(names: Iterable[str]) -> str:
    """("a", "b", "c") -> "a, b or c"."""
    *rest, last = names
    return f"{', '.join(rest)} or {last}" if rest else last


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
        query_head  = ("topk" | "bottomk" | "knn") [ k ] { option }
        k           = INT | EXPR                       (* positive; default 10 *)
        option      = FLAG [ IDENT ] | "in" "session" WORD   (* LINE_OPTIONS, as VERB_OPTIONS
                                                          allows them for the verb *)
        use         = "use" [ WORD ] { KEY "=" value } (* KEY in USE_OPTIONS *)
        value       = WORD | STRING | EXPR
        layers      = "layers" { option }
        index       = "index" view { [","] view } { option }
        extend      = "extend" value [ "labels" value ] { option }
        view        = WORD | STRING | EXPR              (* "conv2", "conv2:mean" *)
        top_neurons = "neurons" "top" count "of" "input" id "layer" view { option }
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
        cmd = _parse_query(verb_tok, _Stream(head[1:], verb_tok), body, text)
    elif verb == "inspect":
        cmd = _parse_inspect(verb_tok, _Stream(head[1:], verb_tok), body, text)
    else:
        args = _Stream(head[1:] + [tok for toks in body for tok in toks], verb_tok)
        cmd = _SIMPLE_PARSERS[verb](args, verb_tok, text)
    cmd.spans[verb] = _span(head[1:] or [verb_tok])   # the magic line's arguments
    return cmd


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
def _span(tokens: list[_Token]) -> Span:
    """The span from the first token to the end of the last one on its line."""
    first = tokens[0]
    last = [tok for tok in tokens if tok.line == first.line][-1]
    return Span(first.line, first.column, last.column + len(last.text) - first.column, first.source)


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


def _line_options(s: _Stream, verb: str, spans: dict) -> tuple[list[_Token], dict]:
    """Split a command line into positional tokens and the verb's options of LINE_OPTIONS (-o NAME,
    --wait, in session X); the spans of the options' values go to ``spans``."""
    positional, opts, allowed = [], {}, VERB_OPTIONS[verb]
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
            spans[opt] = _span([s.tokens[s.i - 1]])
        elif word == "in" and s.peek_word("session") and "session" in allowed:
            s.next()
            if "session" in opts:
                raise _error(tok, "duplicate 'in session'")
            opts["session"] = _session_name(s)
            spans["session"] = _span([s.tokens[s.i - 1]])
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
    spans: dict[str, Span] = {}
    positional, opts = _line_options(head, kind, spans)
    k: int | Expr = 10
    if positional:
        k = _int_or_expr(positional[0], "k", 1)
        spans["k"] = _span(positional[:1])
    if len(positional) > 1:
        extra = positional[1]
        hint = "; keyword lines go in the cell body" if extra.word() in _ALL_KEYWORDS else ""
        raise _error(extra, f"unexpected {extra.text!r} after k{hint}")
    found: dict[str, tuple[_Token, Any]] = {}
    for tokens in body:
        kw_tok, kw, value, span = _parse_body_line(kind, tokens)
        key = "neurons" if kw == "channels" else kw
        if key in found:
            first = found[key][0]
            if first.word() != kw_tok.word():
                raise _error(kw_tok, "give either 'neurons' or 'channels', not both")
            raise _error(kw_tok, f"duplicate {kw!r} line (first given on line {first.line})")
        found[key] = (kw_tok, value)
        spans[key] = span
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
                        session=opts.get("session", get("session")), text=text, spans=spans)


def _parse_body_line(kind: str, tokens: list[_Token]) -> tuple[_Token, str, Any, Span]:
    """A body line's keyword token, keyword, value and the value's span."""
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
    span = _span(s.tokens[s.i:] or [kw_tok])
    value = _BODY_PARSERS[kw](s, kw_tok)
    s.finish(f"in the {kw!r} line")
    return kw_tok, kw, value, span


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
    tok = s.expect(f"an aggregation after 'by' ({_one_of(AGGREGATIONS + ('weights',))} ...)")
    if tok.kind == "expr":
        return _expr(tok)
    if tok.word() in AGGREGATIONS:
        return tok.word()
    if tok.word() == "weights":
        return Weights(_weights(s, tok))
    raise _error(tok, f"unknown aggregation {tok.text!r}; use {_one_of(AGGREGATIONS + ('weights',))}",
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
    tok = s.expect(f"a metric after 'metric' ({_one_of(METRICS)})")
    if tok.word() in METRICS:
        return tok.word()
    raise _error(tok, f"unknown metric {tok.text!r}; use {_one_of(METRICS)}", _suggest(tok.word(), METRICS))


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
    spans: dict[str, Span] = {}
    positional, opts = _line_options(head, "inspect", spans)
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
        span = _span(s.tokens[s.i:] or [kw_tok])
        found[kw] = (kw_tok, _inspect_value(s, kw_tok, kw))
        spans[kw] = span
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
                          session=opts.get("session", get("session")), models=get("models"), text=text,
                          spans=spans)


def _inspect_value(s: _Stream, kw_tok: _Token, kw: str) -> Any:
    if kw in ("layer", "hypotheses", "measures"):
        what = {"layer": "a layer name", "hypotheses": "a hypothesis", "measures": "a measure"}[kw]
        tokens = [tok for tok in _rest(s) if tok.kind != ","]
        if kw == "measures":
            bad = next((tok for tok in tokens if tok.kind != "word"), None)
            if bad is not None:
                raise _error(bad, f"measures are names ({', '.join(MEASURES)}), got {bad.text!r}")
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
    meta = INSPECT_OPTIONS[kw]
    if tok.kind == "expr":
        return _expr(tok)
    if meta.get("none") and tok.word() == "none":
        return None
    if meta["kind"] == "float":
        return _number(tok, kw)
    if meta["kind"] == "bool":
        if tok.word() in _BOOLS:
            return _BOOLS[tok.word()]
        raise _error(tok, f"{kw} needs true or false, got {tok.text!r}")
    return _int(tok, kw, meta.get("min", 1))


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
    spans: dict[str, Span] = {}
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
            spans[key] = _span([value_tok])
            if key == "name":
                name = value
            else:
                options[key] = value
        elif tok.kind in ("word", "string", "expr") and name is None and not options:
            name = _str_or_expr(tok, "a session name")
            spans["name"] = _span([tok])
        else:
            raise _error(tok, f"unexpected {tok.text!r}; use takes a session name and key=value options")
    if name is None and not options:
        raise _error(verb_tok, "use needs a session name, or model=... data=... to create one")
    for required in ("model", "data"):
        if options and required not in options:
            raise _error(verb_tok, f"use needs {required}=... to create a session")
    return UseCommand(name, options, text=text, spans=spans)


def _use_value(tok: _Token, key: str) -> Any:
    kind = USE_OPTIONS[key]
    if tok.kind == "expr":
        return _expr(tok)
    if kind == "object":
        if tok.kind == "word" and all(p.isidentifier() and not keyword.iskeyword(p) for p in tok.text.split(".")):
            return Name(tok.text, tok.line, tok.column, tok.source, len(tok.text))
        raise _error(tok, f"{key}= needs a variable name or a {{expression}}, got {tok.text!r}")
    if kind in ("str", "str|object"):
        return _str_or_expr(tok, f"a value for {key}=")
    if kind == "int":
        return _int(tok, key, 1)
    if kind == "float":
        return _number(tok, key)
    if tok.word() in _BOOLS:
        return _BOOLS[tok.word()]
    raise _error(tok, f"{key}= needs true or false, got {tok.text!r}")


def _parse_layers(s: _Stream, verb_tok: _Token, text: str) -> LayersCommand:
    spans: dict[str, Span] = {}
    positional, opts = _line_options(s, "layers", spans)
    if positional:
        raise _error(positional[0], f"unexpected {positional[0].text!r} after 'layers'")
    return LayersCommand(opts.get("session"), text=text, spans=spans)


def _parse_index(s: _Stream, verb_tok: _Token, text: str) -> IndexCommand:
    spans: dict[str, Span] = {}
    positional, opts = _line_options(s, "index", spans)
    tokens = [tok for tok in positional if tok.kind != ","]
    views = [_str_or_expr(tok, "a layer name") for tok in tokens]
    if not views:
        raise _error(verb_tok, "index needs at least one layer, e.g. 'index conv2 fc1'")
    spans.update({f"views[{i}]": _span([tok]) for i, tok in enumerate(tokens)})
    return IndexCommand(views, wait=opts.get("wait", False), session=opts.get("session"), text=text,
                        rebuild=opts.get("rebuild", False), spans=spans)


def _parse_extend(s: _Stream, verb_tok: _Token, text: str) -> ExtendCommand:
    spans: dict[str, Span] = {}
    positional, opts = _line_options(s, "extend", spans)
    rest = _Stream(positional, verb_tok)
    tok = rest.expect("the new inputs after 'extend' (a variable name or {expression})")
    data = _value(tok, "the new inputs")
    spans["data"] = _span([tok])
    labels = None
    if rest.peek_word("labels"):
        rest.next()
        tok = rest.expect("the labels of the new inputs after 'labels'")
        labels = _value(tok, "the labels")
        spans["labels"] = _span([tok])
    rest.finish("after the new inputs (and 'labels ...')")
    return ExtendCommand(data, labels, wait=opts.get("wait", False), session=opts.get("session"), text=text,
                         spans=spans)


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
    return CancelCommand(job, text=text, spans={} if tok is None else {"job": _span([tok])})


def _parse_top_neurons(s: _Stream, verb_tok: _Token, text: str) -> NeuronsCommand:
    spans: dict[str, Span] = {}
    positional, opts = _line_options(s, "neurons", spans)
    rest = _Stream(positional, verb_tok)
    if not rest.peek_word("top"):
        tok = rest.peek()
        raise _error(tok or verb_tok, "expected 'neurons top N of input ID layer VIEW'")
    spec = _p_neurons(rest, verb_tok)   # top N of input ID
    spans["count"], spans["input"] = _span(positional[1:2]), _span(positional[4:5])
    rest.expect_word("layer", "the input id")
    tok = rest.expect("a layer name after 'layer'")
    layer = _str_or_expr(tok, "a layer name")
    spans["layer"] = _span([tok])
    rest.finish("after the layer")
    return NeuronsCommand(spec.n, spec.input_id, layer, opts.get("session"), text=text, spans=spans)


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


def error_at(where: Expr | Name | Span, message: str, suggestion: str | None = None) -> QuerySyntaxError:
    """A QuerySyntaxError under a value of the magic text (an Expr, a Name or a Span)."""
    return QuerySyntaxError(message, where.line, where.column, where.source_line, suggestion, where.width)


def _visible(namespace: Mapping[str, Any]) -> list[str]:
    return [k for k in namespace if isinstance(k, str) and not k.startswith("_")]


def _evaluate(expr: Expr, namespace: Mapping[str, Any]) -> Any:
    scope = namespace if isinstance(namespace, dict) else dict(namespace)
    try:
        return eval(expr.text, scope)  # noqa: S307 - evaluating the user's own {expression}
    except Exception as e:  # noqa: BLE001 - re-raised with its position
        missing = getattr(e, "name", None) if isinstance(e, NameError) else None
        suggestion = _suggest(missing, _visible(namespace)) if isinstance(missing, str) else None
        raise error_at(expr, f"{{{expr.text}}} failed: {type(e).__name__}: {e}", suggestion) from e


def _lookup(name: Name, namespace: Mapping[str, Any]) -> Any:
    first, *rest = name.text.split(".")
    if first not in namespace:
        raise error_at(name, f"name {first!r} is not defined", _suggest(first, _visible(namespace)))
    value = namespace[first]
    for attr in rest:
        try:
            value = getattr(value, attr)
        except Exception as e:  # noqa: BLE001 - re-raised with its position
            raise error_at(name, f"{name.text}: {type(e).__name__}: {e}") from e
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
            raise error_at(v, f"{{{v.text}}} must give an integer index")
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
        raise error_at(expr, f"{{{expr.text}}} gave a string; expected {what}")
    try:
        elements = list(value)
    except TypeError:
        raise error_at(expr, f"{{{expr.text}}} gave {type(value).__name__}; expected {what}") from None
    out: list[int | tuple[int, ...]] = []
    for el in elements:
        index = _as_index(el)
        if index is None and tuples:
            index = _as_index_tuple(el)
        if index is None:
            raise error_at(expr, f"{{{expr.text}}} contains {el!r}; expected {what}")
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
                raise error_at(item, f"{{{item.text}}} gave {v!r}; weights must be non-negative numbers")
            out.append(w)
    return out


# -- help -----------------------------------------------------------------------------------
def _flags(verb: str, *skip: str) -> str:
    """A verb's magic-line options (but ``skip``) as help shows them: ``[-o VAR] [--wait]``."""
    shown = []
    for name in [o for o in VERB_OPTIONS[verb] if o not in skip]:
        spellings, value, _ = LINE_OPTIONS[name]
        shown.append(f"[{spellings[0]} {value}]" if value else f"[{spellings[0]}]")
    return " ".join(shown)


def _wrap(items: list[str], indent: str = "  ", width: int = 96) -> str:
    """Items joined by spaces into indented lines of at most ``width`` characters."""
    lines = [indent]
    for item in items:
        if len(lines[-1]) + len(item) > width and lines[-1].strip():
            lines.append(indent)
        lines[-1] += ("" if lines[-1] == indent else " ") + item
    return "\n".join(lines)


def _inspect_option(name: str) -> str:
    """``[patience 3|none]``: an inspect option line with its default."""
    f = next(f for f in fields(InspectOptions) if f.name == name)
    value = str(f.default).lower() if isinstance(f.default, bool) else "N" if f.default is None else str(f.default)
    return f"[{name} {value}{'|none' if f.metadata.get('none') else ''}]"


def _line_options_help() -> str:
    rows = []
    for name, (spellings, value, what) in LINE_OPTIONS.items():
        spelled = ", ".join(f"{s} {value}" if value else s for s in spellings)
        verbs = ", ".join(v for v, options in VERB_OPTIONS.items() if name in options)
        rows.append(f"  {spelled:<24}{what} ({verbs})")
    return "options of the magic line:\n" + "\n".join(rows)


_USE_SHOWN = ("model", "data", "index", "name", "labels", "batch_size")   # in the usage line of `help use`
HELP = {
    "": "%everest commands: use, layers, index, topk, bottomk, knn, inspect, neurons, jobs, cancel, status, help.\n"
        "  %everest use model=net data=images index=idx   open a session (name=..., labels=...)\n"
        "  %everest index conv2 conv3:mean --wait            build the index of some layers\n"
        "  %%everest topk 10                                 then lines: layer, neurons, by, where\n"
        "  %%everest knn 10                                  then lines: target, layer, neurons, metric\n"
        "  %%everest inspect                                 then lines: layer, hypotheses, measures\n"
        "`%everest help TOPIC` explains a command or keyword; `help expressions` the {...} syntax,\n"
        "`help options` the magic-line options (-o, --wait...).",
    "use": "use model=NAME data=NAME [index=PATH] [name=NAME] [labels=NAME] [batch_size=N] ...\n"
           "  opens a session (and makes it current); `use NAME` switches to a named session.\n"
           + _wrap(["Other", "keys:"] + [f"{k}," for k in USE_OPTIONS if k not in _USE_SHOWN])[:-1] + ".\n"
           "  Values may be {expressions}.",
    "layers": f"layers {_flags('layers')}: the model's layers, their output shapes and what is indexed.",
    "index": f"index VIEW ... {_flags('index')}: build the index of views such as conv2\n"
             "  or conv2:mean (channel means) in the background; --wait blocks until it is done. Views\n"
             "  already indexed are left as they are; --rebuild builds them again.",
    "extend": f"extend DATA [labels LABELS] {_flags('extend')}: append new inputs (a variable or\n"
              "  {expression} of the dataset's kind) to the dataset and to every indexed view, without a\n"
              "  rebuild; they get the next ids.",
    "topk": f"%%everest topk K {_flags('topk', 'session')}\n  layer VIEW\n  neurons 5, 17, 301 | channels 3, 7\n"
            f"  [by {'|'.join(AGGREGATIONS)}|weights w1, w2, ...]\n  [where labels == 7]\n"
            "the K inputs with the highest aggregate activation of the neuron group.",
    "bottomk": "%%everest bottomk K ...: like topk, the K inputs with the lowest aggregate activation.",
    "knn": f"%%everest knn K {_flags('knn', 'session')}\n  target ID | {{tensor}}\n  layer VIEW\n"
           f"  neurons ... | neurons top N of input ID\n  [metric {'|'.join(METRICS)}]\n  [include target]\n"
           "the K inputs nearest to the target in the group's activation space\n"
           "(a dataset target is left out of its own answer unless `include target`).",
    "inspect": f"%%everest inspect {_flags('inspect', 'session')}\n  layer VIEW, VIEW ...\n"
               "  hypotheses class, ink, keyword:return|yield, {labels_array}, ...\n"
               f"  [measures {', '.join(MEASURES)}]   (default: by hypothesis kind)\n"
               "  [units 0:10]  [where labels == 3]  [tokenizer {tok}]  [models NAME, NAME ...]\n"
               + _wrap([_inspect_option(name) for name in INSPECT_OPTIONS]) + "\n"
               "which units track each hypothesis, and how strongly: a ranked table per hypothesis\n"
               "(click a unit for its top-k gallery); -o binds the long DataFrame. A models line\n"
               "inspects several sessions over the same data in one pass (rows gain a model column).",
    "hypotheses": "hypotheses NAME | {expr}, ...: built-in names (ink, brightness, thickness, class,\n"
                  "  ink_mask, quotes, brackets, punctuation, capitalised, code, position,\n"
                  "  keyword:a|b, regex:..., contains:...) or {labels, functions, masks, Hypothesis}.",
    "measures": f"measures {', '.join(MEASURES)} (inspect; default: chosen by hypothesis kind)",
    "jobs": "jobs: list background index builds and queries.",
    "cancel": "cancel [JOB]: cancel a background job (default: every unfinished one).",
    "status": "status: the sessions, their models, datasets and indexes.",
    "help": "help [TOPIC]: help on a command or keyword.",
    "layer": "layer VIEW: the layer (module path) to query, or LAYER:mean / LAYER:max for channel views.",
    "neurons": "neurons 5, 17 | (3, 4, 5), (3, 4, 6) | 0:64:2 | {expr} | top N of input ID   (a query line)\n"
               "%everest neurons top N of input ID layer VIEW: the N most activated neurons of one input.",
    "channels": "channels 3, 7: channel numbers of a channel view (layer conv2:mean).",
    "by": f"by {' | '.join(AGGREGATIONS)} | weights w1, w2, ... (non-negative, one per neuron)",
    "metric": f"metric {' | '.join(METRICS)} (knn only; default l2)",
    "target": "target ID | {expr}: the knn target, a dataset input id or an input tensor.",
    "include": "include target: let a dataset target appear in its own knn answer.",
    "where": "where labels == 7 | labels != 7 | labels in (1, 2) | ids not in {expr}\n"
             "  (`label` and `id` work too: galleries and DataFrames call the column `label`)",
    "session": "in session NAME (or session NAME): run the query on a named session.",
    "options": _line_options_help(),
    "expressions": "{python expression} is evaluated in the notebook namespace when the command\n"
                   "runs: %%everest topk {k}, layer {name}, neurons {ids}, where ids in {allowed}.",
}


def help_text(topic: str | None = None) -> str:
    """The help text of a topic (a verb, a body keyword or 'expressions'); None: the overview."""
    return HELP.get((topic or "").lower(), HELP[""])
