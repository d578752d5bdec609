"""A ranked table of an inspection per hypothesis; clicking a unit opens its top-k gallery.

    from everest_magic.widgets.inspect_table import InspectTable
    table = InspectTable(frame, session)     # display it in a cell
    table.select(0)                          # what clicking row 0's unit does

One tab per hypothesis; in a tab, a dropdown picks the (view, measure, label) score list and
the table shows its strongest units. Clicking a unit runs `session.topk(view, [unit], k)` and
shows the result's gallery below (`everest_magic.widgets.gallery.Gallery`, imported when
needed; when it cannot be imported, the result's DataFrame). Probe rows (the whole unit
group) show the group's probe rows instead. For an inspection of several models (a `model`
column), `session` is a dict model name -> Session, the score lists are per (model, view,
measure, label), and a click opens the unit's gallery in its own model's session. Create the
widget on the main thread.
"""
from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any, Callable

import ipywidgets as widgets
import pandas as pd

from ..inspect.blocks import GROUP
from ..inspect.results import ranked

SelectCallback = Callable[[int, Any], None]
_CELL = "padding:2px 8px;font-family:monospace;font-size:12px"


class InspectTable(widgets.VBox):
    """Ranked units per hypothesis of an inspection DataFrame, with a top-k gallery on click."""

    def __init__(self, frame: pd.DataFrame, session: Any = None, *, rows: int = 10, k: int = 12):
        self.frame = frame.reset_index(drop=True)
        self.session = session
        self.multi = "model" in self.frame
        self.rows, self.k = int(rows), int(k)
        self.selected: Any = None
        self.output = widgets.Output()
        self._callbacks: list[SelectCallback] = []
        self.hypotheses = list(dict.fromkeys(self.frame.hypothesis))
        self.pickers: dict[str, widgets.Dropdown] = {}
        self.tables: dict[str, widgets.Box] = {}
        tabs = widgets.Tab(children=[self._panel(h) for h in self.hypotheses])
        for j, h in enumerate(self.hypotheses):
            tabs.set_title(j, h)
        self.tabs = tabs
        super().__init__([widgets.HTML(self._summary()), tabs, self.output])

    # -- public ----------------------------------------------------------------------------------
    def select(self, row: int | pd.Series) -> Any:
        """Do what clicking a row's unit does: show (and return) its top-k gallery, or for a
        probe row the group's probe rows. `row` is an index of `self.frame` or one of its rows."""
        r = self.frame.loc[int(row)] if not isinstance(row, pd.Series) else row
        session = self.session.get(r.model) if isinstance(self.session, Mapping) else self.session
        if int(r.unit) == GROUP or session is None:
            f = self.frame
            same = (f.layer == r.layer) & (f.hypothesis == r.hypothesis) & (f.unit == int(r.unit))
            shown = f[same & (f.model == r.model)] if self.multi else f[same]
        else:
            result = session.topk(r.layer, [int(r.unit)], k=self.k)
            shown = _gallery(result, session)
        self.selected = shown
        self.output.clear_output()
        self.output.append_display_data(shown)
        for fn in list(self._callbacks):
            fn(int(r.name) if r.name is not None else -1, shown)
        return shown

    def on_select(self, callback: SelectCallback, remove: bool = False) -> None:
        """Call `callback(row, shown)` after every selection (click or `select`)."""
        if remove:
            self._callbacks.remove(callback)
        else:
            self._callbacks.append(callback)

    def rows_for(self, hypothesis: str, key: tuple | None = None) -> pd.DataFrame:
        """The rows a tab shows for a (layer, measure, label) key, (model, layer, measure, label)
        for several models (default: the first one)."""
        key = key or self._keys(hypothesis)[0]
        model, (layer, measure, label) = (key[0], key[1:]) if self.multi else (None, key)
        f = ranked(self.frame, hypothesis=hypothesis, measure=measure, layer=layer, model=model)
        f = f[f.label.isna()] if label is None else f[f.label == label]
        return f.head(self.rows)

    # -- building ----------------------------------------------------------------------------------
    def _keys(self, hypothesis: str) -> list[tuple]:
        f = self.frame[self.frame.hypothesis == hypothesis]
        keys = []
        for *where, label in zip(*[f[c] for c in (["model"] if self.multi else []) + ["layer", "measure", "label"]]):
            key = (*where, None if pd.isna(label) else label)
            if key not in keys:
                keys.append(key)
        return keys

    def _panel(self, hypothesis: str) -> widgets.VBox:
        keys = self._keys(hypothesis)
        options = [(" · ".join(map(str, key[:-1])) + ("" if key[-1] is None else f" · {key[-1]}"), key)
                   for key in keys]
        picker = widgets.Dropdown(options=options, value=keys[0], description="scores",
                                  layout=widgets.Layout(width="auto"))
        box = widgets.VBox([self._table(hypothesis, keys[0])])
        picker.observe(lambda change: setattr(box, "children", [self._table(hypothesis, change["new"])]), "value")
        self.pickers[hypothesis], self.tables[hypothesis] = picker, box
        return widgets.VBox([picker, box])

    def _table(self, hypothesis: str, key: tuple) -> widgets.GridBox:
        rows = self.rows_for(hypothesis, key)
        head = ["rank"] + (["model"] if self.multi else []) + ["layer", "unit", "label", "measure", "score",
                                                                "95% CI", "n", "converged"]
        cells: list[widgets.Widget] = [widgets.HTML(f"<b style='{_CELL}'>{h}</b>") for h in head]
        for rank, (idx, r) in enumerate(rows.iterrows(), start=1):
            unit = "group" if int(r.unit) == GROUP else str(int(r.unit))
            where = f"{r.model} " if self.multi else ""
            button = widgets.Button(description=unit, tooltip=f"top-{self.k} inputs of {where}{r.layer} unit {unit}",
                                    layout=widgets.Layout(width="auto", height="24px"))
            button.on_click(lambda _b, i=int(idx): self.select(i))
            values = [str(rank)] + ([str(r.model)] if self.multi else []) + [
                r.layer, None, "" if pd.isna(r.label) else str(r.label), r.measure, f"{r.score:.4f}",
                f"[{r.ci_low:.3f}, {r.ci_high:.3f}]", str(int(r.n_inputs)), "yes" if r.converged else "no"]
            cells += [button if v is None else widgets.HTML(f"<span style='{_CELL}'>{html.escape(v)}</span>")
                      for v in values]
        return widgets.GridBox(cells, layout=widgets.Layout(grid_template_columns=f"repeat({len(head)}, auto)"))

    def _summary(self) -> str:
        st = self.frame.attrs.get("inspect")
        if st is None:
            return f"<b>inspection</b>: {len(self.frame)} rows"
        models = f" of models {html.escape(', '.join(map(str, st.models)))}" if st.models else ""
        return (f"<b>inspection</b>: {len(self.frame)} rows{models} over {st.inputs_seen} of {st.inputs_available} "
                f"inputs "
                f"(stopped: {html.escape(st.stop_reason)}; {st.inputs_from_cache} from cache; {st.seconds:.1f} s). "
                f"Click a unit for its top-{self.k} inputs.")


def _gallery(result: Any, session: Any) -> Any:
    """The result's gallery widget, or its DataFrame when the gallery is unavailable."""
    try:
        from .gallery import Gallery
    except ImportError:
        return result.to_frame()
    return Gallery(result, session)
