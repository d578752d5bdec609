"""The engine: model and data adapters, index build and store, exact queries, baselines.

Imports no IPython and no widgets; usable from a plain script.
"""
from .errors import (EverestError, IndexFormatError, IndexWriteError, JobCancelled, ModelError, QueryError,
                     StaleIndexError, UnknownNameError)
from .jobs import Job, JobManager
from .result import QueryStats, Result
from .session import Session
from .views import View

__all__ = ["Session", "Result", "QueryStats", "Job", "JobManager", "View", "EverestError", "QueryError",
           "UnknownNameError", "StaleIndexError", "IndexFormatError", "IndexWriteError", "JobCancelled", "ModelError"]
