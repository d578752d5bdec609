"""Tests of the %everest query-language parser (plain Python: no IPython, no torch here)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from everest_magic.magics.parser import (
    CancelCommand, Channels, Command, EverestError, Expr, Filter, HelpCommand, IndexCommand,
    JobsCommand, LayersCommand, Name, NeuronList, QueryCommand, QuerySyntaxError, Range,
    StatusCommand, TopOfInput, UseCommand, Weights, expand_neurons, expand_weights, help_text,
    parse_cell, resolve,
)
from everest_magic.magics import parser as P


def q(kind="topk", k=10, layer="conv2", neurons=None, **kw) -> QueryCommand:
    return QueryCommand(kind=kind, k=k, layer=layer, neurons=neurons or NeuronList([5]), **kw)


# (line, cell, expected command)
VALID = [
    # use
    ("use model=net data=train_images index=mnist_index.h5", None,
     UseCommand(None, {"model": Name("net", 1, 11), "data": Name("train_images", 1, 20), "index": "mnist_index.h5"})),
    ("use model=net data=train_images index=mnist_index.h5 name=mnist labels=train_labels batch_size=128", None,
     UseCommand("mnist", {"model": Name("net", 1, 11), "data": Name("train_images", 1, 20),
                          "index": "mnist_index.h5", "labels": Name("train_labels", 1, 72), "batch_size": 128})),
    ("use mnist            # switch the current session to the one named mnist", None, UseCommand("mnist", {})),
    ("use name=mnist", None, UseCommand("mnist", {})),
    ("USE model = net  data = ds.train  device=cpu lazy=false tolerance=1e-4", None,
     UseCommand(None, {"model": Name("net", 1, 13), "data": Name("ds.train", 1, 25), "device": "cpu",
                       "lazy": False, "tolerance": 1e-4})),
    ('use model={make()} data=x index="my dir/idx.h5" collate=fn forward=fwd render=show', None,
     UseCommand(None, {"model": Expr("make()", 1, 11), "data": Name("x", 1, 25), "index": "my dir/idx.h5",
                       "collate": Name("fn", 1, 57), "forward": Name("fwd", 1, 68), "render": Name("show", 1, 79)})),
    ("use", "model=net\ndata=images", UseCommand(None, {"model": Name("net", 2, 7), "data": Name("images", 3, 6)})),
    # layers / index / jobs / cancel / status / help
    ("layers", None, LayersCommand()),
    ("layers in session mnist", None, LayersCommand("mnist")),
    ("index conv2 conv3 fc1", None, IndexCommand(["conv2", "conv3", "fc1"])),
    ("index conv2:mean --wait", None, IndexCommand(["conv2:mean"], wait=True)),
    ("index conv2, enc.3:token_mean {v} in session s --WAIT", None,
     IndexCommand(["conv2", "enc.3:token_mean", Expr("v", 1, 31)], wait=True, session="s")),
    ("jobs", None, JobsCommand()),
    ("cancel 3", None, CancelCommand(3)),
    ("cancel", None, CancelCommand(None)),
    ("status", None, StatusCommand()),
    ("help topk", None, HelpCommand("topk")),
    ("help", None, HelpCommand(None)),
    ("", None, HelpCommand(None)),
    ("   # just a comment", "\n  \n# more\n", HelpCommand(None)),
    # topk / bottomk
    ("topk 12 -o top", "layer conv2\nneurons 5, 17, 301\nby sum\n",
     q(k=12, neurons=NeuronList([5, 17, 301]), output="top")),
    ("bottomk 5 --wait",
     "layer fc1\nneurons 0:10            # python-style range, also 0:64:2\n"
     "by weights 1.0, 0.5, 2  # non-negative weights, one per neuron",
     q("bottomk", 5, "fc1", NeuronList([Range(0, 10)]), by=Weights([1.0, 0.5, 2.0]), wait=True)),
    ("topk 20",
     "layer conv2\nneurons (3, 4, 5), (3, 4, 6)   # index tuples (channel, y, x)\n"
     "where labels == 7               # filter by a label array of the session: == != in (1, 2)\nby max",
     q(k=20, neurons=NeuronList([(3, 4, 5), (3, 4, 6)]), filter=Filter("labels", "==", 7), by="max")),
    ("topk 10", "layer conv2:mean\nchannels 3, 7                   # channel view neurons (just channel numbers)",
     q(layer="conv2:mean", neurons=Channels([3, 7]))),
    ("topk {k}", "layer {layer_name}\nneurons {my_neuron_list}\nwhere ids in {allowed_ids}",
     q(k=Expr("k", 1, 6), layer=Expr("layer_name", 2, 7), neurons=NeuronList([Expr("my_neuron_list", 3, 9)]),
       filter=Filter("ids", "in", Expr("allowed_ids", 4, 14)))),
    ("topk", "layer conv2\nneurons 5", q()),
    ("TopK 3", "LAYER conv2\nNeurons 1 2 3\nBY Mean", q(k=3, neurons=NeuronList([1, 2, 3]), by="mean")),
    ("topk 3", "layer conv2\nneurons 0:64:2, :4, 7\nby l2",
     q(k=3, neurons=NeuronList([Range(0, 64, 2), Range(0, 4), 7]), by="l2")),
    ("topk 3", "\n\n  layer conv2   \n\n\tneurons 5\n", q(k=3)),
    ("topk 3 -o r --wait", "layer conv2\nneurons 5\nin session mnist", q(k=3, output="r", wait=True, session="mnist")),
    ("topk 3 in session a", "layer conv2\nneurons 5", q(k=3, session="a")),
    ("topk 3", "layer conv2\nneurons 5\nsession b", q(k=3, session="b")),
    ("topk 3", "layer conv2\nneurons 5, {i}, ({c}, 2, 3)\nby weights {w}",
     q(k=3, neurons=NeuronList([5, Expr("i", 3, 12), (Expr("c", 3, 18), 2, 3)]), by=Weights([Expr("w", 4, 12)]))),
    ("topk 3", "layer conv2\nneurons 5\nby {agg}", q(k=3, by=Expr("agg", 4, 4))),
    ("topk 3", 'layer conv2\nneurons {d["a"]}\nwhere labels in ({ {1,2} }, 3)',
     q(k=3, neurons=NeuronList([Expr('d["a"]', 3, 9)]), filter=Filter("labels", "in", [Expr("{1,2}", 4, 18), 3]))),
    ("topk 3", "layer conv2\nneurons 5\nwhere labels != 2", q(k=3, filter=Filter("labels", "!=", 2))),
    ("topk 3", "layer conv2\nneurons 5\nwhere labels in (1, 2)", q(k=3, filter=Filter("labels", "in", [1, 2]))),
    ("topk 3", "layer conv2\nneurons 5\nwhere labels in 1 2", q(k=3, filter=Filter("labels", "in", [1, 2]))),
    ("topk 3", "layer conv2\nneurons 5\nwhere ids not in {bad}",
     q(k=3, filter=Filter("ids", "not in", Expr("bad", 4, 18)))),
    ("topk 3", "layer conv2\nneurons 5\nwhere labels == 'cat'", q(k=3, filter=Filter("labels", "==", "cat"))),
    ("topk 3", "layer conv2\nneurons 5\nwhere labels == -1", q(k=3, filter=Filter("labels", "==", -1))),
    ("topk 3", 'layer conv2\nneurons 5\nwhere labels == {"#"}  # a comment',
     q(k=3, filter=Filter("labels", "==", Expr('"#"', 4, 17)))),
    # knn
    ("knn 20 -o nn",
     "target 4711                     # a dataset input id, or {python_expr} giving a tensor\n"
     "layer conv2\nneurons top 10 of input 4711    # the 10 most activated neurons of input 4711\n"
     "metric l2                       # l2 | l1 | linf | cosine\n"
     "include target                  # optional: let the target appear in its own answer",
     q("knn", 20, neurons=TopOfInput(10, 4711), target=4711, metric="l2", include_target=True, output="nn")),
    ("knn 5", "target {x_new}\nlayer fc1\nchannels 0:8\nmetric COSINE",
     q("knn", 5, "fc1", Channels([Range(0, 8)]), target=Expr("x_new", 2, 8), metric="cosine")),
    ("knn 5", "target 1\nlayer fc1\nneurons top {n} of input {i}\nwhere ids in (1, 2, 3)",
     q("knn", 5, "fc1", TopOfInput(Expr("n", 4, 13), Expr("i", 4, 26)), target=1,
       filter=Filter("ids", "in", [1, 2, 3]))),
    # the verb on the first body line when the magic line is blank
    ("", "topk 3\nlayer conv2\nneurons 5", q(k=3)),
]


@pytest.mark.parametrize("line,cell,expected", VALID)
def test_valid(line, cell, expected):
    assert parse_cell(line, cell) == expected


# (line, cell, message fragment, error line, error column, suggestion)
ERRORS = [
    ("tpok 3", None, "unknown command 'tpok'", 1, 1, "topk"),
    ("knnn 3", None, "unknown command", 1, 1, "knn"),
    ("(", None, "expected a command", 1, 1, None),
    ("topk 12", "layer conv2\nnurons 5, 17", "unknown keyword 'nurons'", 3, 1, "neurons"),
    ("topk 12", "layer conv2\n      nurons 5, 17", "unknown keyword 'nurons'", 3, 7, "neurons"),
    ("topk 0", "layer a\nneurons 1", "k must be a positive integer", 1, 6, None),
    ("topk -3", "layer a\nneurons 1", "k must be a positive integer", 1, 6, None),
    ("topk ten", "layer a\nneurons 1", "k must be a positive integer, got 'ten'", 1, 6, None),
    ("topk 1.5", "layer a\nneurons 1", "k must be a positive integer", 1, 6, None),
    ("topk 3 4", "layer a\nneurons 1", "unexpected '4'", 1, 8, None),
    ("topk 3 layer a", None, "keyword lines go in the cell body", 1, 8, None),
    ("topk 3", "neurons 1", "topk needs a 'layer' line", 1, 1, None),
    ("bottomk 3", "layer a", "bottomk needs a 'neurons' or 'channels' line", 1, 1, None),
    ("knn 3", "layer a\nneurons 1", "knn needs a 'target' line", 1, 1, None),
    ("topk 3", None, "topk needs a 'layer' line", 1, 1, None),
    ("topk 3", "layer a\nlayer b\nneurons 1", "duplicate 'layer' line (first given on line 2)", 3, 1, None),
    ("topk 3", "layer a\nneurons 1\nchannels 2", "either 'neurons' or 'channels'", 4, 1, None),
    ("topk 3", "layer a\nneurons 1\nby sum\nby max", "duplicate 'by' line", 5, 1, None),
    ("topk 3", "layer a\nneurons 1\nmetric l2", "'metric' is not used by topk", 4, 1, "by"),
    ("knn 3", "target 1\nlayer a\nneurons 1\nby sum", "'by' is not used by knn", 5, 1, "metric"),
    ("topk 3", "layer a\nneurons 1\ninclude target", "'include' is not used by topk", 4, 1, None),
    ("topk 3", "layer\nneurons 1", "expected a layer name", 2, 6, None),
    ("topk 3", "layer a b\nneurons 1", "unexpected 'b'", 2, 9, None),
    ("topk 3", "layer a\nneurons", "expected neurons after 'neurons'", 3, 8, None),
    ("topk 3", "layer a\nneurons 1, x", "expected a neuron index", 3, 12, None),
    ("topk 3", "layer a\nneurons -1", "a neuron index must be a non-negative integer", 3, 9, None),
    ("topk 3", "layer a\nneurons (1, 2", "missing ')'", 3, 9, None),
    ("topk 3", "layer a\nneurons ()", "empty index tuple", 3, 9, None),
    ("topk 3", "layer a\nneurons 5:2", "is empty", 3, 9, None),
    ("topk 3", "layer a\nneurons 5:", "needs an end", 3, 9, None),
    ("topk 3", "layer a\nneurons 0:10:0", "step must be positive", 3, 9, None),
    ("topk 3", "layer a\nneurons 1:2:3:4", "a range is start:stop", 3, 9, None),
    ("topk 3", "layer a\nchannels (1, 2)", "channels are single numbers", 3, 10, None),
    ("topk 3", "layer a\nneurons top x of input 3", "the neuron count must be a positive integer", 3, 13, None),
    ("topk 3", "layer a\nneurons top 3 off input 3", "expected 'of'", 3, 15, "of"),
    ("topk 3", "layer a\nneurons top 3 of 3", "expected 'input'", 3, 18, None),
    ("topk 3", "layer a\nneurons 1\nby summ", "unknown aggregation 'summ'", 4, 4, "sum"),
    ("topk 3", "layer a\nneurons 1\nby weights 1.0, -0.5, 2", "weights must be non-negative", 4, 17, None),
    ("topk 3", "layer a\nneurons 1\nby weights", "expected weights", 4, 11, None),
    ("topk 3", "layer a\nneurons 1\nby weights 1, x", "a weight must be a number", 4, 15, None),
    ("topk 3", "layer a\nneurons 1\nby weights 1e999", "too large", 4, 12, None),
    ("knn 3", "target 1\nlayer a\nneurons 1\nmetric l3", "unknown metric 'l3'", 5, 8, "l2"),
    ("knn 3", "target -1\nlayer a\nneurons 1", "the target input id must be a non-negative integer", 2, 8, None),
    ("knn 3", "target 1\nlayer a\nneurons 1\ninclude targets", "expected 'target'", 5, 9, "target"),
    ("topk 3", "layer a\nneurons 1\nwhere lables == 3", "can only filter on labels or ids", 4, 7, "labels"),
    ("topk 3", "layer a\nneurons 1\nwhere labels = 3", "expected ==, !=, in or not in", 4, 14, "=="),
    ("topk 3", "layer a\nneurons 1\nwhere labels ==", "expected a value after ==", 4, 16, None),
    ("topk 3", "layer a\nneurons 1\nwhere ids == -2", "an input id must be a non-negative integer", 4, 14, None),
    ("topk 3", "layer a\nneurons 1\nwhere labels == cat", "quote text labels", 4, 17, None),
    ("topk 3", "layer a\nneurons 1\nwhere labels in (1, 2", "missing ')'", 4, 17, None),
    ("topk 3", "layer a\nneurons 1\nwhere labels in ()", "empty list of values", 4, 17, None),
    ("topk 3 -o", "layer a\nneurons 1", "expected a variable name after -o", 1, 10, None),
    ("topk 3 -o 9x", "layer a\nneurons 1", "needs a Python variable name", 1, 11, None),
    ("topk 3 --wiat", "layer a\nneurons 1", "unknown option '--wiat'", 1, 8, "--wait"),
    ("topk 3 --wait --wait", "layer a\nneurons 1", "duplicate option", 1, 15, None),
    ("topk 3 in session a", "layer a\nneurons 1\nsession b", "already given on the magic line", 4, 1, None),
    ("topk {}", "layer a\nneurons 1", "empty {} expression", 1, 6, None),
    ("topk {1 +}", "layer a\nneurons 1", "invalid Python expression", 1, 6, None),
    ("topk {k", "layer a\nneurons 1", "unclosed '{'", 1, 6, None),
    ("topk k}", "layer a\nneurons 1", "unmatched '}'", 1, 7, None),
    ("topk 3", "layer 'a\nneurons 1", "unclosed string", 2, 7, None),
    ("topk 3", "layer a\nneurons 1\nfoo", "unknown keyword 'foo'", 4, 1, None),
    ("topk 3", "layer a\nneurons 1\n(", "expected a keyword", 4, 1, None),
    ("topk 3\nlayer a", None, "single line", 1, 7, None),
    ("use", None, "use needs a session name", 1, 1, None),
    ("use model=net", None, "use needs data=", 1, 1, None),
    ("use data=x", None, "use needs model=", 1, 1, None),
    ("use modle=net data=x", None, "unknown use option 'modle'", 1, 5, "model"),
    ("use model=net data=x model=y", None, "duplicate option 'model'", 1, 22, None),
    ("use model=net data=train[:100]", None, "data= needs a variable name", 1, 20, None),
    ("use model= data=x", None, "expected a value after model=", 1, 11, None),
    ("use model=net data=x batch_size=0", None, "batch_size must be a positive integer", 1, 33, None),
    ("use model=net data=x lazy=maybe", None, "needs true or false", 1, 27, None),
    ("use model=net data=x index=(", None, "expected a value for index=", 1, 28, None),
    ("use a b", None, "unexpected 'b'", 1, 7, None),
    ("layers x", None, "unexpected 'x'", 1, 8, None),
    ("layers --wait", None, "this command takes no option", 1, 8, None),
    ("index", None, "index needs at least one layer", 1, 1, None),
    ("index conv2 -o x", None, "this command takes no option", 1, 13, None),
    ("jobs 1", None, "unexpected '1'", 1, 6, None),
    ("status now", None, "unexpected 'now'", 1, 8, None),
    ("cancel x", None, "the job id must be a non-negative integer", 1, 8, None),
    ("cancel 1 2", None, "unexpected '2'", 1, 10, None),
    ("help tpok", None, "no help on 'tpok'", 1, 6, "topk"),
    ("help ''", None, "no help on", 1, 6, None),
    ("topk 3", "layer a\nneurons " + "9" * 40, "too large", 3, 9, None),
]


@pytest.mark.parametrize("line,cell,message,err_line,err_col,suggestion", ERRORS)
def test_errors(line, cell, message, err_line, err_col, suggestion):
    with pytest.raises(QuerySyntaxError) as info:
        parse_cell(line, cell)
    e = info.value
    assert message in e.message
    assert (e.line, e.column, e.suggestion) == (err_line, err_col, suggestion)
    assert isinstance(e, EverestError)


def test_error_rendering():
    with pytest.raises(QuerySyntaxError) as info:
        parse_cell("topk 12", "layer conv2\n      nurons 5, 17")
    assert str(info.value) == ("line 3, column 7: unknown keyword 'nurons' (did you mean 'neurons'?)\n"
                               "    nurons 5, 17\n"
                               "    ^^^^^^")
    e = QuerySyntaxError("k must be a positive integer", 1, 6, "topk 0")
    assert str(e) == "line 1, column 6: k must be a positive integer\n    topk 0\n         ^"
    assert str(QuerySyntaxError("oops", 1, 1, "")) == "line 1, column 1: oops"


def test_error_from_engine_base():
    from everest_magic.engine.errors import EverestError as EngineBase
    assert issubclass(QuerySyntaxError, EngineBase)


def test_text_is_the_original_magic():
    assert parse_cell("status", None).text == "%everest status"
    assert parse_cell("", None).text == "%everest"
    cell = "layer conv2\nneurons 5  # c\n"
    cmd = parse_cell("topk 3", cell)
    assert cmd.text == "%%everest topk 3\n" + cell
    assert isinstance(cmd, Command)
    assert parse_cell(*_split(cmd.text)) == cmd  # reparsing the history text gives the same command


def _split(text: str) -> tuple[str, str | None]:
    head, sep, body = text.partition("\n")
    if head.startswith("%%everest"):
        return head[len("%%everest"):].strip(), body
    return head[len("%everest"):].strip(), None


# -- resolving {expressions} and names ----------------------------------------------------------
def test_resolve_expr_and_name():
    ns = {"k": 7, "d": {"a": [1, 2]}, "net": object(), "ds": type("DS", (), {"train": [1, 2, 3]})}
    cmd = parse_cell("topk {k}", 'layer conv2\nneurons {d["a"]}, { {1,2} }')
    assert resolve(cmd.k, ns) == 7
    assert resolve(cmd.neurons, ns) == NeuronList([[1, 2], {1, 2}])
    use = parse_cell("use model=net data=ds.train index=i.h5 batch_size=4", None)
    opts = resolve(use.options, ns)
    assert opts == {"model": ns["net"], "data": [1, 2, 3], "index": "i.h5", "batch_size": 4}
    assert resolve(5, ns) == 5 and resolve("conv2", ns) == "conv2"


def test_resolve_errors_are_positioned():
    cmd = parse_cell("topk {kk}", "layer conv2\nneurons {1 / 0}")
    with pytest.raises(QuerySyntaxError) as info:
        resolve(cmd.k, {"k": 3})
    e = info.value
    assert (e.line, e.column, e.suggestion) == (1, 6, "k")
    assert "NameError" in e.message and str(e).endswith("    topk {kk}\n         ^^^^")
    with pytest.raises(QuerySyntaxError, match="ZeroDivisionError") as info:
        resolve(cmd.neurons, {})
    assert (info.value.line, info.value.column) == (3, 9)
    use = parse_cell("use model=nett data=x", None)
    with pytest.raises(QuerySyntaxError, match="name 'nett' is not defined") as info:
        resolve(use.options["model"], {"net": 1, "x": 2})
    assert (info.value.line, info.value.column, info.value.suggestion) == (1, 11, "net")
    with pytest.raises(QuerySyntaxError, match="AttributeError"):
        resolve(Name("x.nope", 1, 1), {"x": 1})


def test_expand_neurons_and_weights():
    cmd = parse_cell("topk 3", "layer conv2\nneurons 1, 2:6:2, (3, {y}, 5), {ids}, {t}, {pairs}\nby weights 1, {w}, {ws}")
    ns = {"y": 4, "ids": range(7, 9), "t": (0, 1, 2), "pairs": [(1, 1, 1), [2, 2, 2]], "w": 0.5, "ws": [2, 3]}
    assert expand_neurons(cmd.neurons, ns) == [1, 2, 4, (3, 4, 5), 7, 8, (0, 1, 2), (1, 1, 1), (2, 2, 2)]
    assert expand_weights(cmd.by, ns) == [1.0, 0.5, 2.0, 3.0]
    ch = parse_cell("topk 3", "layer conv2:mean\nchannels 0:2 {c}")
    assert expand_neurons(ch.neurons, {"c": (5, 6)}) == [0, 1, 5, 6]
    with pytest.raises(QuerySyntaxError, match="expected neuron indices") as info:
        expand_neurons(cmd.neurons, {**ns, "ids": ["a"]})
    assert (info.value.line, info.value.column) == (3, 32)
    with pytest.raises(QuerySyntaxError, match="non-negative"):
        expand_weights(cmd.by, {**ns, "w": -1})
    with pytest.raises(QuerySyntaxError, match="gave a string"):
        expand_neurons(ch.neurons, {"c": "ab"})


def test_help_text():
    assert "topk" in help_text() and "knn" in help_text("knn")
    for topic in ("use", "layers", "index", "topk", "bottomk", "knn", "jobs", "cancel", "status", "help",
                  "layer", "neurons", "channels", "by", "metric", "target", "include", "where", "session"):
        assert parse_cell(f"help {topic}", None) == HelpCommand(topic)
        assert help_text(topic) != help_text(None)


# -- property-based: any text parses or raises a positioned QuerySyntaxError -------------------
def _parse_or_syntax_error(line: str, cell: str | None) -> None:
    try:
        assert isinstance(parse_cell(line, cell), Command)
    except QuerySyntaxError as e:
        assert e.line >= 1 and e.column >= 1
        assert isinstance(str(e), str)


@settings(max_examples=400, deadline=None)
@given(st.text(), st.none() | st.text())
def test_arbitrary_text_never_crashes(line, cell):
    _parse_or_syntax_error(line, cell)


_ALPHABET = st.sampled_from(list("{}()[],:=!#'\"\n -0123456789abklnotwx") + ["==", "!=", " in ", "top", "\t"])


@st.composite
def _mutated(draw):
    line, cell, _ = draw(st.sampled_from(VALID))
    parts = [line, cell or ""]
    for _ in range(draw(st.integers(1, 4))):
        which = draw(st.integers(0, 1))
        text = parts[which]
        at = draw(st.integers(0, len(text)))
        if draw(st.booleans()) and text:
            parts[which] = text[:at] + text[at + draw(st.integers(1, 4)):]
        else:
            parts[which] = text[:at] + draw(_ALPHABET | st.characters()) + text[at:]
    return parts[0], (None if cell is None and not parts[1] else parts[1])


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_mutated_examples_never_crash(example):
    _parse_or_syntax_error(*example)


def test_inspect_command_parses_every_line():
    c = P.parse_cell("inspect -o sc --wait in session s2",
                     "layers conv2:mean, fc1\nhypotheses class, ink, keyword:return|yield, {y % 2}\n"
                     "measures pearson auroc\nunits 0:4\nepsilon 0.1\npatience none\nmax_inputs 5000\n"
                     "early_stop false\nseed 0\ntokenizer {tok}\nwhere labels != 3")
    assert isinstance(c, P.InspectCommand)
    assert c.views == ["conv2:mean", "fc1"] and c.hypotheses[:3] == ["class", "ink", "keyword:return|yield"]
    assert isinstance(c.hypotheses[3], P.Expr) and c.hypotheses[3].text == "y % 2"
    assert c.measures == ["pearson", "auroc"] and c.units == P.NeuronList([P.Range(0, 4, 1)])
    assert c.options == {"epsilon": 0.1, "patience": None, "max_inputs": 5000, "early_stop": False, "seed": 0}
    assert isinstance(c.tokenizer, P.Expr) and c.filter == P.Filter("labels", "!=", 3)
    assert (c.output, c.wait, c.session) == ("sc", True, "s2")


@pytest.mark.parametrize("body, where", [
    ("hypotheses ink", (1, 1)),                       # no layer line
    ("layer fc1", (1, 1)),                            # no hypotheses line
    ("layer fc1\nhypotheses ink\ntop 0", (4, 5)),
    ("layer fc1\nhypotheses ink\nmeasures {m}", (4, 10)),
    ("layer fc1\nhypotheses ink\nbins x", (4, 6)),
    ("layer fc1\nlayer fc1\nhypotheses ink", (3, 1)),
])
def test_inspect_errors_have_positions(body, where):
    with pytest.raises(P.QuerySyntaxError) as e:
        P.parse_cell("inspect", body)
    assert (e.value.line, e.value.column) == where


@pytest.mark.parametrize("spelling, field", [("labels", "labels"), ("label", "labels"), ("Label", "labels"),
                                             ("ids", "ids"), ("id", "ids")])
def test_where_accepts_label_and_id(spelling, field):
    cmd = parse_cell("topk 5", f"layer conv2\nneurons 1\nwhere {spelling} == 7")
    assert cmd.filter == Filter(field, "==", 7)


def test_neurons_verb_and_its_errors():
    cmd = parse_cell("neurons top 10 of input 4711 layer conv2:mean in session mnist")
    assert cmd == P.NeuronsCommand(10, 4711, "conv2:mean", "mnist")
    assert parse_cell("neurons top {n} of input {i}", "layer {v}") == P.NeuronsCommand(
        Expr("n", 1, 13), Expr("i", 1, 26), Expr("v", 2, 7))
    with pytest.raises(QuerySyntaxError, match="expected 'neurons top N of input ID layer VIEW'"):
        parse_cell("neurons 5, 17")
    with pytest.raises(QuerySyntaxError, match="expected 'layer' after 'the input id'"):
        parse_cell("neurons top 10 of input 3 conv2")
    assert "most activated neurons" in help_text("neurons")


def test_use_takes_a_tokenizer():
    cmd = parse_cell("use model=m data=d tokenizer=tok")
    assert cmd.options["tokenizer"] == Name("tok", 1, 30)


def test_index_rebuild_and_extend_parse():
    from everest_magic.magics.parser import Expr, ExtendCommand, IndexCommand, Name, parse_cell
    cmd = parse_cell("index conv2 fc1 --rebuild --wait", None)
    assert isinstance(cmd, IndexCommand) and cmd.rebuild and cmd.wait and cmd.views == ["conv2", "fc1"]
    assert not parse_cell("index conv2", None).rebuild
    cmd = parse_cell("extend {x[100:]} labels y2 --wait in session s", None)
    assert isinstance(cmd, ExtendCommand) and cmd.wait and cmd.session == "s"
    assert isinstance(cmd.data, Expr) and cmd.data.text == "x[100:]"
    assert isinstance(cmd.labels, Name) and cmd.labels.text == "y2"
    assert parse_cell("extend more", None).labels is None


def test_commands_carry_the_span_of_every_value():
    S = P.Span
    cmd = parse_cell("topk {k} -o top in session s", "layer conv2\n  neurons 5, 17   # a comment\nby weights 1, 2\n"
                                                     "where labels == 3")
    assert cmd.spans == {"topk": S(1, 6, 23), "k": S(1, 6, 3), "output": S(1, 13, 3), "session": S(1, 28, 1),
                         "layer": S(2, 7, 5), "neurons": S(3, 11, 5), "by": S(4, 4, 12), "where": S(5, 7, 11)}
    assert cmd.spans["neurons"].source_line == "  neurons 5, 17   # a comment"
    assert parse_cell("knn", "target 3\nlayer fc1\nchannels 1").spans == {
        "knn": S(1, 1, 3), "target": S(2, 8, 1), "layer": S(3, 7, 3), "neurons": S(4, 10, 1)}
    cmd = parse_cell("inspect --wait", "layers fc1, fc2\nhypotheses ink\nepsilon 0.1\nin session s")
    assert cmd.spans == {"inspect": S(1, 9, 6), "wait": S(1, 9, 6), "layer": S(2, 8, 8), "hypotheses": S(3, 12, 3),
                         "epsilon": S(4, 9, 3), "session": S(5, 12, 1)}
    assert parse_cell("use m model=net data=x batch_size=8").spans == {
        "use": S(1, 5, 31), "name": S(1, 5, 1), "model": S(1, 13, 3), "data": S(1, 22, 1), "batch_size": S(1, 35, 1)}
    assert parse_cell("index conv2, {v} 'fc 1' --wait").spans == {
        "index": S(1, 7, 24), "views[0]": S(1, 7, 5), "views[1]": S(1, 14, 3), "views[2]": S(1, 18, 6),
        "wait": S(1, 25, 6)}
    assert parse_cell("neurons top 5 of input {i} layer fc1").spans == {
        "neurons": S(1, 9, 28), "count": S(1, 13, 1), "input": S(1, 24, 3), "layer": S(1, 34, 3)}
    assert parse_cell("cancel 7").spans == {"cancel": S(1, 8, 1), "job": S(1, 8, 1)}
    assert parse_cell("jobs").spans == {"jobs": S(1, 1, 4)}   # no arguments: the verb


def test_option_tables_are_derived_from_their_declarations():
    from dataclasses import fields

    from everest_magic.engine import query
    from everest_magic.engine.config import SessionConfig
    from everest_magic.inspect.plan import InspectOptions
    assert set(P.USE_OPTIONS) == {f.name for f in fields(SessionConfig)} | {"model", "data", "index", "render",
                                                                             "tokenizer"}
    assert list(P.INSPECT_OPTIONS) == InspectOptions.names() and "growth" not in P.INSPECT_OPTIONS
    assert P.AGGREGATIONS is query.AGGREGATIONS and P.METRICS is query.METRICS
    assert parse_cell("use model=m data=d size_budget=0.3 cluster=local").options == {
        "model": Name("m", 1, 11), "data": Name("d", 1, 18), "size_budget": 0.3, "cluster": "local"}
    assert parse_cell("inspect", "layer fc1\nhypotheses ink\nseed 0\npatience none").options == {"seed": 0,
                                                                                               "patience": None}
    with pytest.raises(QuerySyntaxError, match="top must be a positive integer"):
        parse_cell("inspect", "layer fc1\nhypotheses ink\ntop 0")
    # the help is generated from the same tables: every key, option and flag appears in it
    assert all(key in help_text("use") for key in P.USE_OPTIONS)
    assert all(f"[{name} " in help_text("inspect") for name in P.INSPECT_OPTIONS)
    for name, (spellings, _, what) in P.LINE_OPTIONS.items():
        assert all(s in help_text("options") for s in spellings) and what in help_text("options")
    assert "[--wait] [--rebuild] [in session NAME]" in help_text("index")
    with pytest.raises(QuerySyntaxError, match="this command takes no option '--rebuild'"):
        parse_cell("topk 3 --rebuild", "layer fc1\nneurons 1")
