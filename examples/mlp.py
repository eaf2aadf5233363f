"""Fully connected networks trained with kn.train.fit, shared by the CIFAR-10 and MNIST
examples: Linear layers with optional batch norm and dropout, softmax cross-entropy, Adam with
a cosine schedule."""

from __future__ import annotations

import sys

import numpy as np
from _common import Timer, report

import kiln as kn


def build(sizes: list[int], batch_norm: bool, dropout: float) -> kn.nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(kn.nn.Linear(a, b))
        if i < len(sizes) - 2:
            if batch_norm:
                layers.append(kn.nn.BatchNorm1d(b))
            layers.append(kn.nn.ReLU())
            if dropout:
                layers.append(kn.nn.Dropout(dropout))
    return kn.nn.Sequential(*layers)


def train(name: str, xtr, ytr, xte, yte, sizes, epochs, batch_norm=False, dropout=0.0, lr=1e-3,
          weight_decay=0.0, batch_size=200, seed=0, progress=None) -> float:  # fmt: skip
    """Trains the MLP, prints the test accuracy and wall time, returns the accuracy."""
    kn.manual_seed(seed)
    x = kn.input("x", (None, sizes[0]))
    y = kn.input("y", (None,), "int64")
    model = build(sizes, batch_norm, dropout)
    logits = model(x)
    loss = kn.softmax_cross_entropy(logits, y)
    steps = epochs * (len(xtr) // batch_size)
    opt = kn.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    kn.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    step = kn.function([x, y], [loss, logits], updates=opt.updates(loss))
    evaluate = kn.function([x, y], [loss, logits], training=False)
    loader = kn.data.DataLoader((xtr, ytr), batch_size=batch_size, shuffle=True, drop_last=True, seed=seed)
    if progress is None:  # a bar on a terminal, a line per epoch in logs
        progress = sys.stderr.isatty()
    with Timer() as t:
        kn.train.fit(step, loader, epochs, val=(xte, yte), evaluate=evaluate, progress=progress)
        predict = kn.function([x], kn.argmax(logits, axis=1), training=False)
        acc = float(np.mean(predict(xte) == yte))
    report(name, acc, t.seconds)
    return acc
