"""A small ConvNet on MNIST: two conv-BN-ReLU-pool stages, dropout, a linear classifier."""

import sys

import numpy as np
from _common import Timer, mnist, parser, report

import kiln as kn


def main() -> float:
    args = parser(__doc__).parse_args()
    xtr, ytr, xte, yte = mnist()
    xtr, ytr = xtr[: args.train, None], ytr[: args.train]
    xte, yte = xte[: args.test, None], yte[: args.test]
    kn.manual_seed(args.seed)
    x, y = kn.input("x", (None, 1, 28, 28)), kn.input("y", (None,), "int64")
    model = kn.nn.Sequential(
        kn.nn.Conv2d(1, 32, 3, padding=1), kn.nn.BatchNorm2d(32), kn.nn.ReLU(), kn.nn.MaxPool2d(2),
        kn.nn.Conv2d(32, 64, 3, padding=1), kn.nn.BatchNorm2d(64), kn.nn.ReLU(), kn.nn.MaxPool2d(2),
        kn.nn.Flatten(), kn.nn.Dropout(0.3), kn.nn.Linear(64 * 7 * 7, 10),
    )  # fmt: skip
    logits = model(x)
    loss = kn.softmax_cross_entropy(logits, y)
    epochs, batch = args.epochs or 8, 100
    opt = kn.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    kn.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * (len(xtr) // batch))
    step = kn.function([x, y], [loss, logits], updates=opt.updates(loss))
    evaluate = kn.function([x, y], [loss, logits], training=False)
    loader = kn.data.DataLoader((xtr, ytr), batch_size=batch, shuffle=True, drop_last=True, seed=args.seed)
    with Timer() as t:
        kn.train.fit(step, loader, epochs, val=(xte, yte), evaluate=evaluate, progress=sys.stderr.isatty())
        predict = kn.function([x], kn.argmax(logits, axis=1), training=False)
        acc = float(
            np.mean(np.concatenate([predict(xte[i : i + 1000]) for i in range(0, len(xte), 1000)]) == yte)
        )
    report("convnet_mnist", acc, t.seconds)
    return acc


if __name__ == "__main__":
    main()
