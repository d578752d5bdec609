"""Shared fixtures: real models trained on real data (sklearn digits), built once per run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from everest_magic import examples as ex


@pytest.fixture(scope="session")
def digits_cnn():
    """A CNN trained on sklearn's digits, and the data with 40 exact duplicate images appended."""
    model, x, y = ex.trained_digits_cnn(epochs=10)
    rng = np.random.default_rng(1)
    dup = rng.choice(len(x), 40, replace=False)
    x = torch.cat([x, x[dup]])
    y = np.concatenate([y, y[dup]])
    return model, x, y


@pytest.fixture(scope="session")
def digits_mlp():
    """A tanh MLP (a second architecture, signed activations) trained on the digits."""
    x, y = ex.load_digits()
    torch.manual_seed(0)
    return ex.train(ex.DigitsMLP(), x, y, epochs=10, batch_size=64), x, y
