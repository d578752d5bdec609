"""IPython face of everest_magic: the %everest / %%everest magics and the kernel state."""
from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display

from ..engine.errors import EverestError
from . import parser as P
from .commands import DISPATCH, Context
from .state import KernelState

_STATE: KernelState | None = None


def kernel_state() -> KernelState:
    """The extension's state in this process (created on first use)."""
    global _STATE
    if _STATE is None:
        _STATE = KernelState()
    return _STATE


@magics_class
class EverestMagics(Magics):
    """Holds the %everest magic."""

    def __init__(self, shell, state: KernelState):
        super().__init__(shell)
        self.state = state

    @line_cell_magic
    def everest(self, line: str, cell: str | None = None):
        """Exact top-k, bottom-k and kNN queries over a PyTorch model's activations.

        Examples::

            %everest use model=net data=train_images index=mnist_index labels=train_labels
            %everest layers
            %everest index conv2 conv3 fc1          # background job with a progress bar

            %%everest topk 12 -o top
            layer conv2
            neurons 5, 17, 301
            by sum

            %%everest knn 20
            target 4711
            layer conv2
            neurons top 10 of input 4711

            %everest jobs      %everest cancel 3      %everest status      %everest help topk

        A query cell returns at once with a progress bar; the result gallery replaces it when
        ready. ``-o NAME`` binds the result (a pending handle until then); ``--wait`` blocks.
        ``{python_expr}`` is evaluated in the notebook's namespace. The language is documented
        in docs/query-language.md; ``%everest help`` shows a summary.
        """
        text = "%everest " + line if cell is None else "%%everest " + line + "\n" + cell
        try:
            cmd = P.parse_cell(line, cell)
            handler = DISPATCH[type(cmd)]
            ctx = Context(self.state, self.shell.user_ns, display)
            return handler(_with_text(cmd, text), ctx)
        except EverestError as e:
            if self.state.verbose:
                raise
            raise UsageError(str(e)) from e


def _with_text(cmd, text: str):
    """The command with its full original text (for history and results)."""
    if getattr(cmd, "text", ""):
        return cmd
    import dataclasses
    return dataclasses.replace(cmd, text=text)


def attach(ipython, channel: bool = True) -> KernelState:
    """Follow the sessions of the notebook namespace after every cell (also those made with
    `em.Session(...)`), and open the sidebar channel when a front end listens. Idempotent
    except for the channel, which a second call reopens (the sidebar keeps the newest)."""
    state = kernel_state()
    if state.namespace is None:
        state.namespace = ipython.user_ns
        state.on_cell = lambda *_: state.discover(ipython.user_ns)
        ipython.events.register("post_run_cell", state.on_cell)
    if channel:
        try:
            from .channel import open_channel
            open_channel(state)
        except Exception:  # no comm-capable kernel (plain IPython): the magics still work
            pass
    state.discover(ipython.user_ns)
    return state


def load_ipython_extension(ipython) -> None:
    """Register %everest and %%everest (and the sidebar channel when a front end listens)."""
    state = kernel_state()
    ipython.register_magics(EverestMagics(ipython, state))
    try:   # import the widgets now, not on the first query (keeps a query cell's return fast)
        from .. import widgets
        del widgets
    except ImportError:
        pass
    attach(ipython)


def unload_ipython_extension(ipython) -> None:
    global _STATE
    if _STATE is not None:
        if _STATE.namespace is not None:
            try:
                ipython.events.unregister("post_run_cell", _STATE.on_cell)
            except ValueError:
                pass
        _STATE.close()
        _STATE = None
