"""Thousands of generated %everest cells (tests/fuzz_cells.py) through a real IPython shell
with a session: each ends as a success or as a project error with a position, never as a
raw traceback. The suite runs FUZZ_CELLS cells (about 12 ms a cell here: a successful query
renders its gallery); `python benchmarks/fuzz_cells.py` runs 20,000 and records the counts."""
from __future__ import annotations

import os

import pytest

from fuzz_cells import fuzz, open_shell

FUZZ_CELLS = int(os.environ.get("EVEREST_FUZZ_CELLS", "10000"))


@pytest.fixture(scope="module")
def shell(digits_cnn, tmp_path_factory):
    model, x, y = digits_cnn
    ip = open_shell(model, x, y, tmp_path_factory.mktemp("fuzz"))
    yield ip
    ip.run_line_magic("unload_ext", "everest_magic")


def test_every_generated_cell_ends_as_a_success_or_a_positioned_project_error(shell, capsys):
    tally = fuzz(shell, FUZZ_CELLS)
    with capsys.disabled():
        print(f"\n{tally.line()}\nslowest: {tally.slowest[1]!r}")
    assert tally.other == [], "\n\n".join(f"{cell}\n  -> {what}" for cell, what in tally.other[:5])
    assert tally.cells == FUZZ_CELLS
    assert tally.successes > FUZZ_CELLS // 10 and tally.project_errors > FUZZ_CELLS // 2
    assert tally.slowest[0] < 10
