"""The benchmark workloads: real models over real data, all offline.

- ``mnist``: the quickstart CNN (``everest_magic.examples.MnistCNN``) trained on the real
  MNIST training images (50,000), views ``conv1`` (16x28x28 = 12,544 neurons), ``conv2``
  (32x14x14 = 6,272) and ``fc1`` (128, dense).
- ``minilm``: all-MiniLM-L6-v2 over sentences of Python's own documentation (the pydoc
  topics of ``examples.python_sentences``, topped up with sentences of standard-library
  docstrings to reach the requested count), view
  ``encoder.layer.3.intermediate:token_mean`` (1,536 FFN units, masked mean over tokens).
"""
from __future__ import annotations

import importlib
import inspect
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from everest_magic import examples as ex

MINILM_VIEW = "encoder.layer.3.intermediate:token_mean"

# Standard-library modules whose docstrings top up the sentence corpus: imported in this
# fixed order (no GUI, no side effects on import), so the corpus is the same on every run
# of one Python version.
DOC_MODULES = (
    "abc argparse array ast asyncio base64 bisect builtins bz2 calendar cmath codecs collections "
    "collections.abc colorsys concurrent.futures configparser contextlib copy csv ctypes dataclasses "
    "datetime decimal difflib dis doctest email email.message email.utils enum filecmp fnmatch fractions "
    "ftplib functools gc getopt gettext glob gzip hashlib heapq hmac html html.parser http.client "
    "http.cookies http.server imaplib importlib importlib.metadata inspect io ipaddress itertools json "
    "keyword linecache locale logging logging.handlers lzma mailbox math mimetypes multiprocessing "
    "numbers operator optparse os os.path pathlib pickle pickletools pkgutil platform plistlib poplib "
    "pprint profile pstats queue quopri random re reprlib sched secrets select selectors shelve shlex "
    "shutil signal smtplib socket socketserver sqlite3 ssl stat statistics string struct subprocess "
    "symtable sys sysconfig tabnanny tarfile tempfile textwrap threading time timeit token tokenize "
    "trace traceback tracemalloc types typing unicodedata unittest unittest.mock urllib.parse "
    "urllib.request uuid venv warnings wave weakref xml.dom.minidom xml.etree.ElementTree xmlrpc.client "
    "zipfile zipimport zlib zoneinfo"
).split()

_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _docstrings(module_name: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = importlib.import_module(module_name)
    except Exception:   # a module missing from this build of Python
        return
    yield mod.__doc__
    for name in sorted(vars(mod)):
        if name.startswith("_"):
            continue
        obj = getattr(mod, name, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__module__", module_name) != module_name:
            continue
        yield getattr(obj, "__doc__", None)
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                if not attr.startswith("_"):
                    yield getattr(vars(obj)[attr], "__doc__", None)


def docstring_sentences(limit: int = 5000, min_words: int = 5, max_words: int = 40) -> list[str]:
    """`limit` distinct sentences: Python's pydoc topics first, then standard-library docstrings."""
    out = ex.python_sentences(limit, min_words=min_words, max_words=max_words)
    seen = set(out)
    for module_name in DOC_MODULES:
        if len(out) >= limit:
            break
        for doc in _docstrings(module_name):
            if not isinstance(doc, str):
                continue
            text = re.sub(r"\s+", " ", doc)
            for sent in _SPLIT.split(text):
                sent = sent.strip()
                words = sent.split()
                # prose only: skip doctest lines and signatures
                if not (min_words <= len(words) <= max_words) or sent in seen or ">>>" in sent:
                    continue
                if not sent[0].isupper():
                    continue
                seen.add(sent)
                out.append(sent)
                if len(out) >= limit:
                    return out
    return out


@dataclass
class Workload:
    """A model, its data and the views to benchmark."""

    name: str
    model: torch.nn.Module
    data: Any
    views: list[str]
    batch_size: int
    labels: np.ndarray | None = None
    collate: Callable | None = None
    description: str = ""
    setup_seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.data)

    def bare_batches(self):
        """Model-ready batches of every input, in order, `batch_size` at a time (last one short)."""
        for s in range(0, self.n, self.batch_size):
            chunk = self.data[s:s + self.batch_size]
            yield self.collate(list(chunk)) if self.collate is not None else chunk

    def bare_forward(self, batch) -> Any:
        return self.model(**batch) if isinstance(batch, dict) else self.model(batch)


def mnist(n: int, weights: Path, views: list[str] | None = None, batch_size: int = 128) -> Workload:
    """The quickstart CNN on the first `n` real MNIST training images (weights cached at `weights`)."""
    t0 = time.perf_counter()
    weights.parent.mkdir(parents=True, exist_ok=True)
    model, x, y = ex.trained_mnist_cnn(cache=weights)
    x, y = x[:n].contiguous(), y[:n]
    return Workload("mnist", model, x, views or ["conv1", "conv2", "fc1"], batch_size, labels=y,
                    description=f"quickstart CNN on the real MNIST training images (n={len(x):,})",
                    setup_seconds=time.perf_counter() - t0)


def minilm(n: int, batch_size: int = 128, max_length: int = 64) -> Workload:
    """all-MiniLM-L6-v2 over `n` sentences of Python's documentation and docstrings."""
    t0 = time.perf_counter()
    model, tok, collate = ex.minilm(max_length=max_length)
    sentences = docstring_sentences(n)
    return Workload("minilm", model, sentences, [MINILM_VIEW], batch_size, collate=collate,
                    description=f"all-MiniLM-L6-v2 over {len(sentences):,} sentences of Python's docs and "
                                f"docstrings (padded to {max_length} tokens)",
                    setup_seconds=time.perf_counter() - t0, meta={"max_length": max_length})
