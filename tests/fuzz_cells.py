"""A fuzzer of %everest cells: Hypothesis writes cells (valid queries, queries with one part
mistyped, and free mixtures of the language's words, values and `{expressions}`), a real
IPython shell runs them as a notebook would, and each must end as a success or as one of the
project's errors with a position ("line L, column C: ..."). Used by tests/test_fuzz_cells.py
and by benchmarks/fuzz_cells.py (the large run whose counts the issue records).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as seed_fn
from hypothesis import strategies as st
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from everest_magic.engine.errors import EverestError, JobCancelled
from everest_magic.magics import kernel_state

SESSION = "fuzz"
VIEWS = ["fc1", "conv1", "conv2", "conv2:mean"]          # indexed before the run
POSITION = re.compile(r"^line \d+, column \d+: ")
BATCH = 10   # cells a Hypothesis example: generating them together costs a third as much a cell

EXPRS = ["k", "kbig", "kneg", "kf", "v", "vbad", "vmean", "none", "group", "grp_t", "grp_nested", "grp_tuple",
         "ids", "ids_set", "d", "d['a']", "d['zz']", "img", "img64", "img_u8", "img_nan", "images[5]", "images[:3]",
         "labels[:4]", "agg", "w", "wneg", "lab", "labs", "text", "f", "arr", "empty", "1/0", "undefined_name",
         "range(3)", "[1, 'a']", "(3, 1, 1)", "{1: 2}", "{1, 2}", "'fc1'", "lambda: 1", "torch.zeros(2, 2)",
         "np.nan", "float('inf')", "10**20", "-1", "True", "b'x'", "...", "[[]]", "'x' * 3", "len(images)", "k +",
         "torch.arange(50)[::5]", "{'layer': 'fc1'}['layer']", "[v, vmean]"]
WORDS = ["0", "1", "5", "-1", "10", "99999", "1e3", "0.5", "0:5", "5:0", ":3", "0:64:2", "1:2:0", "(1, 2)",
         "(16, 0, 0)", "(1,", ")", "(", "'str'", '"x y"', "'unterminated", "fc1", "conv1", "conv2", "conv2:mean",
         "fc1:mean", "conv2:token_mean", "conv1:max", "nope", "sum", "mean", "max", "l2", "weights", "cosine", "l1",
         "linf", "top", "of", "input", "target", "==", "!=", "=", "in", "not", "labels", "ids", "label", "id", ",",
         "#", "# comment", "$k", "{", "}", "é", "--wait", "-o", "-o r", "--nope", "session", SESSION, "nope", "true",
         "none", "-", ":", "::", "\\", "?", "%", "%%everest", "{}", "{ }", "{{k}}", "{'}'}", "model=net", "data=images"]
KEYWORDS = ["layer", "neurons", "channels", "by", "metric", "target", "include", "where", "session", "in session",
            "layr", "nerons", "units", "hypotheses", "measures", "epsilon", "top", "LAYER", "Neurons", "#", "x"]
VERBS = ["topk", "bottomk", "knn", "layers", "index", "neurons", "jobs", "cancel", "status", "help", "inspect",
         "use", "extend", "tpok", "TOPK", "kNN", "", "everest", "{k}"]


def namespace(model: torch.nn.Module, x: torch.Tensor, y: np.ndarray) -> dict:
    """The notebook variables the fuzzed `{expressions}` use."""
    img = x[3].clone()
    nan = img.clone()
    nan[0, 0, 0] = float("nan")
    return dict(net=model, images=x, labels=y, torch=torch, np=np, k=5, kbig=10**9, kneg=-3, kf=2.5, v="fc1",
                vbad="nope", vmean="conv2:mean", none=None, group=[1, 2, 3], grp_t=torch.tensor([0, 4]),
                grp_nested=[[1, 2], [3]], grp_tuple=(1, 2, 3), ids=list(range(0, 300, 2)), ids_set={1, 2, 3},
                d={"a": 1}, img=img, img64=img.double(), img_u8=img.to(torch.uint8), img_nan=nan, agg="sum",
                w=[1.0, 0.5], wneg=[-1.0], lab=3, labs=[1, 2], text="cat", f=1.5, arr=np.arange(5), empty=[])


def _expr() -> st.SearchStrategy[str]:
    return st.sampled_from(EXPRS).map(lambda e: "{" + e + "}")


def _token() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(WORDS), _expr(), st.integers(-5, 300).map(str),
                     st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=6))


@st.composite
def valid_query(draw) -> str:
    """A query the language accepts (it may still fail when it runs: a neuron out of range...)."""
    kind = draw(st.sampled_from(["topk", "bottomk", "knn"]))
    k = draw(st.one_of(st.integers(1, 20).map(str), st.just("{k}")))
    head = f"%%everest {kind} {k}" + draw(st.sampled_from(["", " -o r", f" in session {SESSION}"])) + " --wait"
    view = draw(st.sampled_from(VIEWS + ["{v}", "{vmean}"]))
    if view.endswith(("mean", "mean}")):
        group = draw(st.sampled_from(["0, 3", "0:8", "{[1, 2]}", "5"]))
        lines = [f"layer {view}", f"{draw(st.sampled_from(['neurons', 'channels']))} {group}"]
    else:
        group = draw(st.sampled_from(["0, 3, 7", "0:16:4", "{group}", "{grp_t}", "top 5 of input 7", "(0, 1, 1)", "2"]))
        lines = [f"layer {view}", f"neurons {group}"]
    if kind == "knn":
        lines.append("target " + draw(st.sampled_from(["3", "{k}", "{img}", "{img64}", "{images[9]}"])))
        lines += draw(st.sampled_from([[], ["metric l1"], ["metric cosine"], ["include target"]]))
    else:
        lines += draw(st.sampled_from([[], ["by mean"], ["by max"], ["by l2"], ["by {agg}"]]))
    lines += draw(st.sampled_from([[], ["where labels == 3"], ["where ids in {ids}"], ["where label in (1, 2)"],
                                   ["where ids not in {ids_set}"], ["where id != 4"]]))
    return "\n".join([head] + draw(st.permutations(lines)))


@st.composite
def mutated_query(draw) -> str:
    """A valid query with one token replaced, dropped or added."""
    lines = [line.split(" ") for line in draw(valid_query()).split("\n")]
    i = draw(st.integers(0, len(lines) - 1))
    j = draw(st.integers(0 if i else 1, len(lines[i]) - 1)) if len(lines[i]) > 1 else 0
    action = draw(st.sampled_from(["replace", "drop", "insert", "drop line", "add line"]))
    if action == "replace":
        lines[i][j] = draw(_token())
    elif action == "drop" and len(lines[i]) > 1:
        del lines[i][j]
    elif action == "insert":
        lines[i].insert(j + 1, draw(_token()))
    elif action == "drop line" and i:
        del lines[i]
    else:
        lines.append([draw(st.sampled_from(KEYWORDS))] + draw(st.lists(_token(), max_size=3)))
    return "\n".join(" ".join(words) for words in lines)


@st.composite
def free_cell(draw) -> str:
    """A verb, then words, values and expressions in any order; a cell magic or a line magic."""
    verb = draw(st.sampled_from(VERBS))
    head = " ".join([verb] + draw(st.lists(_token(), max_size=4)))
    if draw(st.booleans()):
        return "%everest " + head
    body = [" ".join([draw(st.sampled_from(KEYWORDS))] + draw(st.lists(_token(), max_size=4)))
            for _ in range(draw(st.integers(1, 4)))]
    return "\n".join(["%%everest " + head] + body)


@st.composite
def safe_use(draw) -> str:
    """`use` lines that never replace the fuzzed session with another one."""
    return "%everest use " + draw(st.sampled_from([
        SESSION, "nope", "{none}", f"name={SESSION}", "model=net", "data=images", "model={none} data=images",
        "model=net data={none}", "model=net data=images batch_size=0", "model=net data=images device=tpu",
        "model=net data={empty} name=other", "model={images} data=images", "model=net data=images labels={labs}",
        "model=net data=images index={k}", "model=net data=images ratio={text}", "model=net data=images lazy=maybe",
        "model=net data=images partitions={kneg}", "model=nope data=images", "model=net.nope data=images"]))


@st.composite
def safe_extend(draw) -> str:
    """`extend` with values that must be refused (a valid one would grow the fuzzed dataset)."""
    return "%everest extend " + draw(st.sampled_from(["{none}", "{k}", "{text}", "{d}", "{img_u8}", "{images[:2]}",
                                                       "{images[:2]} labels {none}", "{empty}", "{grp_nested}"]))


def cells() -> st.SearchStrategy[str]:
    return st.one_of(valid_query(), mutated_query(), mutated_query(), free_cell(), free_cell(), safe_use(),
                     safe_extend())


@dataclass
class Tally:
    """What the cells ended as."""
    cells: int = 0
    successes: int = 0
    project_errors: int = 0
    other: list = field(default_factory=list)     # (cell, what happened)
    slowest: tuple = (0.0, "")                    # (seconds, cell)
    seconds: float = 0.0

    def line(self) -> str:
        return (f"cells {self.cells}, successes {self.successes}, project errors {self.project_errors}, "
                f"anything else {len(self.other)}, slowest cell {self.slowest[0]:.3f} s, "
                f"{self.seconds / max(self.cells, 1) * 1000:.1f} ms a cell")


def open_shell(model: torch.nn.Module, x: torch.Tensor, y: np.ndarray, folder: Path) -> InteractiveShell:
    """The shell the cells run in: the extension loaded, a session with VIEWS indexed."""
    shell = InteractiveShell.instance()
    shell.user_ns.update(namespace(model, x, y), idx=str(folder / "idx"))
    shell.run_line_magic("load_ext", "everest_magic")
    shell.run_cell(f"%everest use model=net data=images labels=labels index={{idx}} name={SESSION}")
    shell.run_cell(f"%everest index {' '.join(VIEWS)} --wait")
    return shell


def verdict(shell: InteractiveShell, cell: str, checked: set[int]) -> str:
    """Run one cell; 'success', 'project error', or a description of anything else. `checked`:
    the ids of the jobs of earlier cells (whose ends were checked then)."""
    result = shell.run_cell(cell, silent=True)
    state = kernel_state()
    for job_id, job in state.all_jobs().items():   # background work the cell started must end well too
        if job_id in checked:
            continue
        checked.add(job_id)
        job.wait(60)
        if job.error is not None and not isinstance(job.error, (EverestError, JobCancelled)):
            return f"job {job.description!r} failed: {type(job.error).__name__}: {job.error}"
    state.current = SESSION
    error = result.error_before_exec or result.error_in_exec
    if error is None:
        return "success"
    chain, e = [], error
    while e is not None:
        chain.append(e)
        e = e.__cause__
    if isinstance(error, UsageError) and POSITION.match(str(error)) and any(isinstance(c, EverestError) for c in chain):
        return "project error"
    return f"{type(error).__name__}: {str(error)[:300]}"


def fuzz(shell: InteractiveShell, count: int, seed: int | None = None) -> Tally:
    """Run `count` generated cells through `shell` (BATCH a Hypothesis example); the tally of
    how they ended. Without a seed the cells are the same on every run."""
    tally, checked = Tally(), set(kernel_state().all_jobs())

    @settings(max_examples=-(-count // BATCH), deadline=None, database=None, derandomize=seed is None,
              suppress_health_check=list(HealthCheck), phases=["generate"])
    @given(st.lists(cells(), min_size=BATCH, max_size=BATCH))
    def some(batch: list[str]) -> None:
        for cell in batch[:count - tally.cells]:
            t0 = time.perf_counter()
            what = verdict(shell, cell, checked)
            seconds = time.perf_counter() - t0
            tally.cells += 1
            tally.seconds += seconds
            tally.slowest = max(tally.slowest, (seconds, cell))
            if what == "success":
                tally.successes += 1
            elif what == "project error":
                tally.project_errors += 1
            else:
                tally.other.append((cell, what))

    if seed is not None:
        some = seed_fn(seed)(some)
    some()
    return tally
