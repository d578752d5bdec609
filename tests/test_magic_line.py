"""The %everest magic line through a real IPython shell (`run_cell`, as a notebook runs it):
IPython expands neither `{expr}` nor `$x` on it; the magic evaluates `{expr}` itself, in the
notebook namespace (or the caller's locals), and errors point into the text as typed."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from everest_magic.engine.baselines import ReprocessAll
from everest_magic.magics import kernel_state
from everest_magic.magics.parser import MAX_MAGIC_LINE, QuerySyntaxError


@pytest.fixture(scope="module")
def ip(digits_cnn, tmp_path_factory):
    model, x, y = digits_cnn
    shell = InteractiveShell.instance()
    shell.user_ns.update(net=model, images=x, labels=y, torch=torch,
                         idx=str(tmp_path_factory.mktemp("line") / "idx"))
    shell.run_line_magic("load_ext", "everest_magic")
    yield shell
    shell.run_line_magic("unload_ext", "everest_magic")


def run(ip, code: str):
    """Run a cell as the notebook does; return its value, or raise its error."""
    r = ip.run_cell(code, silent=True)
    if r.error_before_exec is not None:
        raise r.error_before_exec
    if r.error_in_exec is not None:
        raise r.error_in_exec
    return r.result


def test_a_tensor_slice_a_list_and_a_dict_on_the_magic_line(ip):
    run(ip, "%everest use model=net data={images[:600]} labels={labels[:600]} index={idx} name=sliced")
    s = kernel_state().session("sliced")
    assert s.n == 600 and np.array_equal(s.labels, ip.user_ns["labels"][:600])
    ip.user_ns.update(views=["conv1", "fc1"], cfg={"k": 7, "layer": "fc1"})
    run(ip, "%everest index {views} --wait")
    assert {"conv1", "fc1"} <= set(s.indexed())
    run(ip, '%%everest topk {cfg["k"]} -o r --wait\nlayer {cfg["layer"]}\nneurons 0, 3')
    r = ip.user_ns["r"]
    assert len(r.ids) == 7 and r.view == "fc1"
    assert r.ids.tolist() == ReprocessAll(s).topk("fc1", [0, 3], k=7).ids.tolist()


def test_a_tensor_slice_a_list_and_a_dict_in_the_body(ip):
    run(ip, "%everest use sliced")
    s = kernel_state().session("sliced")
    ip.user_ns.update(group=[1, 4, 9], cfg={"layer": "conv1", "ids": list(range(0, 600, 3))})
    run(ip, "%%everest knn 5 -o nn --wait\ntarget {images[700]}\nlayer {cfg['layer']}\nneurons {group}\n"
            "where ids in {torch.arange(600)[::3]}")
    nn = ip.user_ns["nn"]
    brute = ReprocessAll(s).knn(ip.user_ns["images"][700], "conv1", [1, 4, 9], k=5,
                                filter=np.arange(0, 600, 3))
    assert nn.ids.tolist() == brute.ids.tolist() and all(i % 3 == 0 for i in nn.ids)
    run(ip, "%%everest topk 4 -o t --wait\nlayer fc1\nneurons {[2, 5]}\nwhere ids in {cfg['ids']}")
    assert ip.user_ns["t"].ids.tolist() == ReprocessAll(s).topk("fc1", [2, 5], k=4,
                                                              filter=np.arange(0, 600, 3)).ids.tolist()


def test_a_line_magic_inside_a_function_sees_its_locals(ip):
    run(ip, "%everest use sliced")
    run(ip, "def pick():\n    mine = ['conv2:mean']\n    %everest index {mine} --wait\npick()")
    assert "conv2:mean" in kernel_state().session("sliced").indexed()


def test_dollar_names_are_not_expanded_and_get_a_hint(ip):
    ip.user_ns["kk"] = 3
    with pytest.raises(UsageError) as e:
        run(ip, "%%everest topk $kk\nlayer fc1\nneurons 1")
    assert "line 1, column 6: k must be a positive integer, got '$kk' (did you mean '{kk}'?)" in str(e.value)


@pytest.mark.parametrize("code, where, caret", [
    ("%%everest topk {undefined_k} --wait\nlayer fc1\nneurons 1", "line 1, column 6", " " * 5 + "^" * 13),
    ("%everest use model=net data={images[:10} index={idx}", "line 1, column 20", " " * 19 + "^" * 12),
    ("%everest   index {views} conv9 --wait", "line 1, column 17", " " * 14 + "^" * 5),  # shown without its indent
])
def test_error_columns_point_into_the_typed_line(ip, code: str, where: str, caret: str):
    run(ip, "%everest use sliced")
    with pytest.raises(UsageError) as e:
        run(ip, code)
    msg = str(e.value)
    assert where in msg, msg
    typed = code.split("\n")[0].split(" ", 1)[1].strip()
    assert typed in msg   # the line shown is the one typed, not an expansion of it
    assert msg.split("\n")[2] == "    " + caret, msg


def test_a_100000_character_magic_line_is_refused_at_once(ip):
    for code in ("%everest index " + "conv1 " * 20_000,
                 "%everest index " + "{v} " * 25_000,
                 "%everest help " + "x" * 100_000 + "?",
                 "%%everest topk " + "{k} " * 25_000 + "\nlayer fc1\nneurons 1"):
        t0 = time.perf_counter()
        with pytest.raises(UsageError, match=f"line 1, column {MAX_MAGIC_LINE + 1}: the magic line has .* characters, "
                                             f"more than {MAX_MAGIC_LINE:,}") as e:
            run(ip, code)
        seconds = time.perf_counter() - t0
        assert seconds < 0.25, (code[:40], seconds)
        assert len(str(e.value)) < 500 and isinstance(e.value.__cause__, QuerySyntaxError)


def test_a_long_line_under_the_limit_is_parsed_fast(ip):
    run(ip, "%everest use sliced")
    names = " ".join(["conv1", "fc1"] * 800)   # 8,000 characters
    t0 = time.perf_counter()
    run(ip, f"%everest index {names} --wait")
    assert time.perf_counter() - t0 < 1.0


def test_a_trailing_question_mark_reaches_the_magic(ip):
    with pytest.raises(UsageError, match="no help on 'topk\\?'"):
        run(ip, "%everest help topk?")


def test_every_session_option_can_be_set_from_use_and_engine_errors_point_at_theirs(ip, digits_cnn):
    from everest_magic.engine import QueryError, Session
    run(ip, "%everest use model=net data={images[:200]} name=configured size_budget=0.2 min_list=8 lazy=false")
    s = kernel_state().session("configured")
    assert (s.config.size_budget, s.size_budget, s.min_list, s.lazy) == (0.2, 0.2, 8, False)
    with pytest.raises(UsageError) as e:   # the engine's error names its parameter: labels
        run(ip, "%everest use model=net data={images[:200]} labels={labels[:5]} name=configured2")
    assert str(e.value).startswith("line 1, column 42: 5 labels for 200 inputs\n")
    assert e.value.__cause__.__cause__.param == "labels" and isinstance(e.value.__cause__.__cause__, QueryError)
    with pytest.raises(TypeError, match="unexpected keyword argument 'batchsize' .*did you mean 'batch_size'"):
        Session(digits_cnn[0], digits_cnn[1][:10], batchsize=3)


def test_config_sets_the_magics_traits(ip):
    """The magics are a traitlets Configurable, as jupysql's SqlMagic: `%config EverestMagics.verbose = True`
    lets errors through as they are (with their traceback), instead of as a one-line UsageError."""
    from everest_magic.engine import QueryError
    magics = ip.magics_manager.registry["EverestMagics"]
    assert (magics.verbose, magics.sidebar) == (False, True)
    run(ip, "%everest use model=net data={images[:200]} name=traits")
    code = "%%everest topk 3 --wait\nlayer fc1\nneurons 9999"
    with pytest.raises(UsageError, match="line 3, column 9: neuron 9999 is out of range"):
        run(ip, code)
    run(ip, "%config EverestMagics.verbose = True")
    try:
        assert magics.verbose is True
        with pytest.raises(QuerySyntaxError, match="line 3, column 9: neuron 9999 is out of range") as e:
            run(ip, code)
        assert isinstance(e.value.__cause__, QueryError) and e.value.__cause__.param == "neurons"
    finally:
        run(ip, "%config EverestMagics.verbose = False")
    assert magics.verbose is False
    with pytest.raises(UsageError):
        run(ip, code)
