"""everest_magic: exact interpretation-by-example queries over PyTorch models, in Jupyter.

    import everest_magic as em
    s = em.Session(model, data, index="idx")     # an index folder
    s.topk("conv2", neurons=[5, 17, 301], k=10, by="sum")

In IPython/Jupyter: ``%load_ext everest_magic``. Inside a Jupyter kernel, the import alone lets
the JupyterLab sidebar list the kernel's sessions, also those made with ``em.Session(...)``.
"""
from .engine import (EverestError, IndexFormatError, IndexWriteError, Job, JobCancelled, ModelError, QueryError,
                     QueryStats, Result, Session, StaleIndexError, UnknownNameError, View)

__version__ = "0.1.0"
__all__ = ["Session", "Result", "QueryStats", "Job", "View", "EverestError", "QueryError",
           "UnknownNameError", "StaleIndexError", "IndexFormatError", "IndexWriteError", "JobCancelled", "ModelError", "session",
           "__version__"]


def session(name: str | None = None) -> Session:
    """The magics' current session in this kernel (or the one called `name`)."""
    from .magics import kernel_state
    return kernel_state().session(name)


def load_ipython_extension(ipython) -> None:
    """`%load_ext everest_magic`: register the %everest line and cell magics."""
    from .magics import load_ipython_extension as _load
    _load(ipython)


def unload_ipython_extension(ipython) -> None:
    """`%unload_ext everest_magic`: cancel jobs and close every session."""
    from .magics import unload_ipython_extension as _unload
    _unload(ipython)


def _attach_to_kernel() -> None:
    """Inside a Jupyter kernel, follow the notebook's sessions for the sidebar (no magics)."""
    import sys
    if "ipykernel" not in sys.modules:   # a plain script or a test process: nothing to attach to
        return
    try:
        from IPython import get_ipython
        ip = get_ipython()
        if ip is None or getattr(ip, "kernel", None) is None:
            return
        from .magics import attach
        attach(ip)
    except Exception:   # never let the sidebar break an import
        pass


_attach_to_kernel()
