"""IPython face of everest_magic: the %everest / %%everest magics and the kernel state."""
from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, needs_local_scope, no_var_expand
from IPython.display import display
from traitlets import Bool

from ..engine.errors import EverestError
from . import parser as P
from .commands import DISPATCH, MagicContext, at_command
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
    """Holds the %everest magic. Its settings are traitlets: ``%config EverestMagics.verbose = True``
    in a notebook, or ``c.EverestMagics.sidebar = False`` in an IPython profile."""

    verbose = Bool(False, help="Raise everest errors as they are, with their traceback, instead of as a "
                               "one-line UsageError that points into the magic's text.").tag(config=True)
    sidebar = Bool(True, help="Open the channel of the JupyterLab sidebar when the extension loads "
                              "(when a front end listens).").tag(config=True)

    def __init__(self, shell, state: KernelState):
        super().__init__(shell)
        self.state = state
        if shell is not None:   # %config finds the shell's configurables (a reload replaces the old one)
            shell.configurables[:] = [c for c in shell.configurables if not isinstance(c, EverestMagics)] + [self]

    @no_var_expand        # `{expr}` and `$x` reach the parser as typed; it evaluates `{expr}` itself
    @needs_local_scope
    @line_cell_magic
    def everest(self, line: str, cell: str | None = None, local_ns: dict | None = None):
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
        ``{python_expr}`` is evaluated in the notebook's namespace (IPython does not expand it,
        nor ``$x``, on the magic line). The language is documented in docs/query-language.md;
        ``%everest help`` shows a summary.
        """
        text = "%everest " + line if cell is None else "%%everest " + line + "\n" + cell
        try:
            cmd = P.parse_cell(line, cell)
            handler = DISPATCH[type(cmd)]
            ctx = MagicContext(self.state, _namespace(self.shell.user_ns, local_ns), display)
            return handler(_with_text(cmd, text), ctx)
        except EverestError as e:
            if self.verbose:
                raise
            where = e if isinstance(e, P.QuerySyntaxError) else at_command(e, text)
            raise UsageError(str(where)) from e


def _namespace(user_ns: dict, local_ns: dict | None) -> dict:
    """Where `{expr}` is evaluated: the notebook namespace, plus the caller's locals when a line
    magic runs inside a function (only cell magics bind names, always in the notebook)."""
    if local_ns is None or local_ns is user_ns:
        return user_ns
    return {**user_ns, **local_ns}


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


def pass_magic_lines(lines: list[str]) -> list[str]:
    """Send each `%everest ARGS` line of a cell to the magic as typed, as IPython would, but
    before its other input transforms: those read a line ending in `?` as a help request on its
    last word, and tokenize the whole line as Python (slow on a long line). `%everest?` still
    shows the magic's help; cell magics and continued lines (ending in a backslash) are IPython's."""
    first = next((line for line in lines if line.strip()), "")
    if first.lstrip().startswith("%%"):
        return lines
    out = []
    for line in lines:
        body = line.strip()
        if body.startswith("%everest ") and not body.endswith("\\"):
            indent = line[:len(line) - len(line.lstrip())]
            line = f"{indent}get_ipython().run_line_magic('everest', {body[len('%everest '):]!r})\n"
        out.append(line)
    return out


def load_ipython_extension(ipython) -> None:
    """Register %everest and %%everest (and the sidebar channel when a front end listens)."""
    state = kernel_state()
    magics = EverestMagics(ipython, state)
    ipython.register_magics(magics)
    if pass_magic_lines not in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.append(pass_magic_lines)
    try:   # import the widgets now, not on the first query (keeps a query cell's return fast)
        from .. import widgets
        del widgets
    except ImportError:
        pass
    attach(ipython, channel=magics.sidebar)


def unload_ipython_extension(ipython) -> None:
    global _STATE
    if pass_magic_lines in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.remove(pass_magic_lines)
    if _STATE is not None:
        if _STATE.namespace is not None:
            try:
                ipython.events.unregister("post_run_cell", _STATE.on_cell)
            except ValueError:
                pass
        _STATE.close()
        _STATE = None
