"""A small CNN trained on scikit-learn's digits: real 8x8 handwritten images, so accuracy means something.

Trains in a few seconds on two cores (about 98% test accuracy) the first time, then loads from the cache
(``$XDG_CACHE_HOME/onnxgate/digits_cnn.pt``, a state dict loaded with ``weights_only=True``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SEED = 0
TEST_FRACTION = 0.25


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "onnxgate"


def digits_split():
    """(x_train, y_train, x_test, y_test): float32 images N x 1 x 8 x 8 scaled to 0..1, int64 labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    x, y = x[order], y[order]
    n_test = int(len(x) * TEST_FRACTION)
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def _build():
    import torch.nn as nn

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            )
            self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(32 * 4 * 4, 10))

        def forward(self, x):
            return self.classifier(self.features(x))

    return DigitsCNN()


def train(epochs: int = 12):
    import torch

    torch.manual_seed(SEED)
    model = _build()
    x_train, y_train, _, _ = digits_split()
    xs, ys = torch.from_numpy(x_train), torch.from_numpy(y_train)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xs))
        for i in range(0, len(xs), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            loss_fn(model(xs[idx]), ys[idx]).backward()
            opt.step()
    return model.eval()


def trained_digits_cnn():
    """Factory for ``onnxgate.examples.digits:trained_digits_cnn``: (model, example_inputs), trained once and cached."""
    import torch

    path = cache_dir() / "digits_cnn.pt"
    model = _build()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
    else:
        model = train()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    _, _, x_test, _ = digits_split()
    return model, {"x": torch.from_numpy(x_test[:4])}


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())
