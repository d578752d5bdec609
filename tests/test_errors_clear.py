"""Bad input, broken files and failing models end in everest's own errors, naming what was
wrong and how to fix it, checked when the request is made, with nothing changed on disk."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tables
import torch
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import everest_magic as em
from everest_magic.engine.baselines import ReprocessAll
from everest_magic.magics import kernel_state


def disk(path: Path) -> list[tuple[str, int, int]]:
    """Every file under an index folder with its size and mtime (locks aside)."""
    return sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")
                  if p.is_file() and "lock" not in p.name and p.suffix != ".owner")


@pytest.fixture(scope="module")
def indexed(digits_cnn, tmp_path_factory):
    model, x, y = digits_cnn
    path = tmp_path_factory.mktemp("clear") / "idx"
    with em.Session(model, x, index=path, labels=y) as s:
        s.build_index(["fc1", "conv2"], wait=True)
    return path


@pytest.fixture
def session(digits_cnn, indexed):
    model, x, y = digits_cnn
    with em.Session(model, x, index=indexed, labels=y) as s:
        yield s


@pytest.mark.parametrize("call, message", [
    (lambda s: s.topk("fc1", 5.0, k=3),
     "neurons must be a neuron index (int), an index tuple or a list of them, got 5.0 (float); write 5"),
    (lambda s: s.topk("conv1", None, k=3),
     "neurons must be a neuron index (int), an index tuple or a list of them, got None (NoneType)"),
    (lambda s: s.topk(None, [1], k=3), "a view is a layer name such as 'conv2' or 'conv2:mean', got None"),
    (lambda s: s.topk("fc1:mean", [1], k=3),
     "view 'fc1:mean' does not fit layer 'fc1': ':mean' reduces each channel over space and needs an output of "
     "shape (channels, ...) per input, but 'fc1' gives (32,); use 'fc1' (one neuron per output element)"),
    (lambda s: s.build_index(["fc1:mean"]), "view 'fc1:mean' does not fit layer 'fc1'"),
    (lambda s: s.knn(3, "conv2:token_mean", [1], k=3),
     "view 'conv2:token_mean' does not fit layer 'conv2': ':token_mean' reduces over tokens and needs an output "
     "of shape (tokens, features) per input, but 'conv2' gives (16, 4, 4); use 'conv2' or 'conv2:mean' (channel means)"),
    (lambda s: s.topk("fc1", [(1.5,)], k=3), "neuron (1.5,): the indices of a tuple must be ints"),
    (lambda s: s.topk("fc1", [1], k=3, filter=[[1, 2], [3]]),
     "input ids must be an int or a flat collection of ints, got [[1, 2], [3]]"),
    (lambda s: s.topk("fc1", [1], k=3, filter={1: 2}), "input ids must be an int or a flat collection of ints, got {1: 2}"),
    (lambda s: s.knn(3, "conv1", [1], k=3, metric="cosin"), "unknown metric 'cosin'"),
    (lambda s: s.knn(10**6, "conv1", [1], k=3), "input id 1000000 is out of range"),
])
def test_bad_requests_are_refused_when_made_and_nothing_changes(session, indexed, call, message):
    before, jobs = disk(indexed), len(session.jobs.jobs)
    with pytest.raises(em.QueryError) as e:
        call(session)
    assert message in str(e.value)
    assert disk(indexed) == before and len(session.jobs.jobs) == jobs   # not even conv1 got built
    assert set(session.indexed()) == {"fc1", "conv2"}


def test_a_target_of_another_dtype_is_converted_or_refused(session, digits_cnn):
    _, x, _ = digits_cnn
    as32 = session.knn(x[5].clone() + 0.25, "fc1", [0, 1, 2], k=6)
    as64 = session.knn(x[5].double() + 0.25, "fc1", [0, 1, 2], k=6)
    assert as64.ids.tolist() == as32.ids.tolist()
    assert as64.ids.tolist() == ReprocessAll(session).knn(x[5] + 0.25, "fc1", [0, 1, 2], k=6).ids.tolist()
    with pytest.raises(em.QueryError, match=re.escape(
            "target tensor has dtype torch.uint8; an input of this dataset is torch.float32: convert it the way "
            "the dataset was made")):
        session.knn(x[5].to(torch.uint8), "fc1", [0, 1, 2], k=6)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_an_external_target_with_nan_or_inf_activations_is_refused(session, digits_cnn, value):
    _, x, _ = digits_cnn
    target = x[5].clone()
    target[0, 0, 0] = value
    with pytest.raises(em.QueryError, match=r"the external target gives NaN or infinite activations at neurons "
                                            r"0, 1, 2, 3 of view 'fc1'; no distance to it is defined"):
        session.knn(target, "fc1", [0, 1, 2, 3], k=3)


class Breaks(torch.nn.Module):
    """The digits CNN, raising when a batch holds an input whose first pixel is 99."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        if (x[:, 0, 0, 0] == 99).any():
            raise RuntimeError("pixel value 99 is not allowed")
        return self.net(x)


def test_a_model_that_raises_is_wrapped_and_the_index_is_untouched(digits_cnn, tmp_path):
    model, x, _ = digits_cnn
    x = x.clone()
    x[200, 0, 0, 0] = 99
    path = tmp_path / "idx"
    with em.Session(Breaks(model), x[:128], index=path, batch_size=64) as s:   # ids 0-127: fine
        s.build_index(["net.fc1"], wait=True)
    s = em.Session(Breaks(model), x, index=tmp_path / "grown", batch_size=64)
    before = disk(s.index_path) if s.index_path.exists() else []
    job = s.build_index(["net.conv2"])
    with pytest.raises(em.ModelError) as e:
        job.result()
    assert str(e.value) == ("the model raised RuntimeError in forward on input ids 192-255 (computing layer net.conv2): "
                            "pixel value 99 is not allowed; the index is unchanged; fix the model or its inputs and run "
                            "the command again")
    assert isinstance(e.value.__cause__, RuntimeError)
    after = disk(s.index_path) if s.index_path.exists() else []
    assert after == before and s.indexed() == {}
    target = x[3].clone()
    target[0, 0, 0] = 99
    with pytest.raises(em.ModelError, match="in forward on the external input"):
        s.external_activations("net.fc1", target)
    s.close()


def _corrupt(kind: str, f: Path) -> None:
    data = f.read_bytes()
    if kind == "truncated":
        f.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        f.write_bytes(b"")
    elif kind == "corrupted":
        f.write_bytes(data[: len(data) // 3] + bytes(b ^ 0xFF for b in data[len(data) // 3:]))
    elif kind == "foreign":
        f.unlink()
        with tables.open_file(str(f), "w") as h:
            h.create_array("/", "data", np.arange(10))
    elif kind == "text":
        f.write_text("not an index file")
    elif kind == "folder":
        f.unlink()
        f.mkdir()
        (f / "x").write_text("x")


KINDS = ["truncated", "empty", "corrupted", "foreign", "text", "folder"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_broken_view_file_gives_one_short_index_format_error_and_rebuild_works(digits_cnn, tmp_path, kind):
    model, x, y = digits_cnn
    path = tmp_path / "idx"
    with em.Session(model, x, index=path) as s:
        s.build_index("fc1", wait=True)
        expected = s.topk("fc1", [1, 7], k=5).ids.tolist()
    f = next((path / "views").iterdir())
    _corrupt(kind, f)
    for rebuild in ("view", "session"):
        s = em.Session(model, x, index=path)
        with pytest.raises(em.IndexFormatError) as e:
            s.topk("fc1", [1, 7], k=5)
        msg = str(e.value)
        assert msg.startswith(f"{f}: view 'fc1' is damaged (") and "\n" not in msg and "back trace" not in msg
        assert msg.endswith("rebuild it with build_index(['fc1'], rebuild=True) or Session(..., rebuild=True)")
        assert len(msg) < 400
        if rebuild == "view":
            s.build_index("fc1", rebuild=True, wait=True)
        else:
            s.close()
            s = em.Session(model, x, index=path, rebuild=True)
            assert s.indexed() == {}
        assert s.topk("fc1", [1, 7], k=5).ids.tolist() == expected
        assert not f.exists()   # the broken file (or folder) is gone
        s.close()
        f = next((path / "views").iterdir())
        _corrupt(kind, f)


@pytest.fixture(scope="module")
def ip(digits_cnn, tmp_path_factory):
    model, x, y = digits_cnn
    shell = InteractiveShell.instance()
    shell.user_ns.update(net=model, images=x, labels=y, torch=torch, breaks=Breaks(model),
                         idx=str(tmp_path_factory.mktemp("clearmagic") / "idx"))
    shell.run_line_magic("load_ext", "everest_magic")
    shell.run_line_magic("everest", "use model=net data=images labels=labels index={idx} name=clear")
    shell.run_line_magic("everest", "index fc1 conv2 --wait")
    yield shell
    shell.run_line_magic("unload_ext", "everest_magic")


def causes(e: BaseException) -> list[BaseException]:
    out = []
    while e.__cause__ is not None:
        e = e.__cause__
        out.append(e)
    return out


def run(ip, code: str):
    r = ip.run_cell(code, silent=True)
    if r.error_in_exec is not None:
        raise r.error_in_exec
    return r.result


@pytest.mark.parametrize("code, message", [
    ("%%everest topk 3 --wait\nlayer fc1:mean\nneurons 1",
     "line 2, column 7: view 'fc1:mean' does not fit layer 'fc1': ':mean' reduces each channel"),
    ("%everest index conv1 conv2:token_mean", "line 1, column 13: view 'conv2:token_mean' does not fit layer 'conv2'"),
    ("%%everest topk 3\nlayer conv1\nneurons {5.0}", "line 3, column 9: {5.0} gave float; expected neuron indices"),
    ("%%everest topk 3\nlayer conv1\nneurons {None}", "line 3, column 9: {None} gave NoneType"),
    ("%%everest topk 3\nlayer {None}\nneurons 1",
     "line 2, column 7: a view is a layer name such as 'conv2' or 'conv2:mean', got None"),
    ("%%everest topk 3\nlayer conv1\nneurons 9999", "line 3, column 9: neuron 9999 is out of range: view 'conv1'"),
    ("%%everest topk 3 --wait\nlayer fc1\nneurons 1\nwhere ids in {[[1, 2], [3]]}",
     "line 4, column 14: {[[1, 2], [3]]} gave [[1, 2], [3]]; where ids needs input ids (ints): one value or a flat "
     "collection of them"),
    ("%%everest topk 3 --wait\nlayer fc1\nneurons 1\nwhere ids == {1.5}", "line 4, column 14: {1.5} gave 1.5"),
    ("%%everest topk 3 --wait\nlayer fc1\nneurons 1\nwhere ids not in (4, {'a'})", "line 4, column 22: {'a'} gave 'a'"),
    ("%%everest topk 3 --wait\nlayer fc1\nneurons 1\nwhere labels in {{'a': [1]}}",
     "line 4, column 17: {{'a': [1]}} gave {'a': [1]}; where labels needs labels"),
    ("%%everest knn 3 --wait\ntarget {images[0].to(torch.uint8)}\nlayer fc1\nneurons 1",
     "line 2, column 8: target tensor has dtype torch.uint8"),
    ("%%everest knn 3 --wait\ntarget {torch.full_like(images[0], float('nan'))}\nlayer fc1\nneurons 0:3",
     "line 2, column 8: the external target gives NaN or infinite activations at neurons 0, 1, 2 of view 'fc1'"),
])
def test_magic_errors_are_positioned_and_start_no_job(ip, code, message):
    run(ip, "%everest use clear")
    state = kernel_state()
    jobs, before = len(state.all_jobs()), disk(Path(ip.user_ns["idx"]))
    with pytest.raises(UsageError) as e:
        run(ip, code)
    assert message in str(e.value), str(e.value)
    assert any(isinstance(c, em.EverestError) for c in causes(e.value))
    assert disk(Path(ip.user_ns["idx"])) == before
    if "--wait" not in code:
        assert len(state.all_jobs()) == jobs


def test_magic_engine_errors_name_the_command(ip, tmp_path):
    ip.user_ns.update(bad=str(tmp_path / "bad"), breaking=str(tmp_path / "breaking"))
    (tmp_path / "bad").write_text("not an index")
    with pytest.raises(UsageError, match=r"^line 1, column 5: .*/bad is a file, not an everest index folder .*"
                                         r"rebuild=True") as e:
        run(ip, "%everest use model=net data=images index={bad} name=bad")
    assert any(isinstance(c, em.IndexFormatError) for c in causes(e.value))
    run(ip, "%everest use model=breaks data={torch.cat([images[:100], torch.full_like(images[:1], 99)])} "
            "index={breaking} name=breaking")
    with pytest.raises(UsageError) as e:
        run(ip, "%everest index net.fc1 --wait")
    assert str(e.value).startswith("line 1, column 1: the model raised RuntimeError in forward on input ids 64-100 "
                                   "(computing layer net.fc1): pixel value 99 is not allowed; the index is unchanged")
    assert isinstance(e.value.__cause__, em.ModelError)
    assert isinstance(e.value.__cause__.__cause__, RuntimeError)
    run(ip, "%everest use clear")


def test_a_view_missing_from_a_read_only_index(digits_cnn, tmp_path, ip):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(ro)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        ip.user_ns["ro_idx"] = str(ro / "idx")
        run(ip, "%everest use model=net data=images index={ro_idx} name=ro")
        run(ip, "%everest index fc1 --wait")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        run(ip, "%everest use model=net data=images index={ro_idx} name=ro2")
        run(ip, "%%everest topk 3 -o got --wait\nlayer fc1\nneurons 1")
        assert len(ip.user_ns["got"].ids) == 3
        with pytest.raises(UsageError) as e:
            run(ip, "%%everest topk 3 --wait\nlayer conv1\nneurons 1")
        assert (f"line 2, column 7: view 'conv1' is not in the index and the index {str(ro / 'idx')!r} is "
                "read-only; indexed views: ['fc1']") in str(e.value)
        kernel_state().sessions.pop("ro2").close()
        kernel_state().sessions.pop("ro").close()
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
        run(ip, "%everest use clear")
