"""everest_magic: exact interpretation-by-example queries over PyTorch models, in Jupyter.

    import everest_magic as em
    s = em.Session(model, data, index="idx.h5")
    s.topk("conv2", neurons=[5, 17, 301], k=10, by="sum")

In IPython/Jupyter: ``%load_ext everest_magic``.
"""
from .engine import (EverestError, IndexFormatError, Job, JobCancelled, QueryError, QueryStats,
                     Result, Session, StaleIndexError, UnknownNameError, View)

__version__ = "0.1.0"
__all__ = ["Session", "Result", "QueryStats", "Job", "View", "EverestError", "QueryError",
           "UnknownNameError", "StaleIndexError", "IndexFormatError", "JobCancelled", "session", "__version__"]


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
