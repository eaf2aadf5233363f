"""CS231n's three-layer ConvNet on CIFAR-10: conv 32 7x7 - relu - 2x2 max pool - affine 100 -
relu - affine 10, trained with Adam (assignment 2)."""

import sys

import numpy as np
from _common import Timer, cifar10, parser, report

import kiln as kn


def main() -> float:
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=50)
    args = p.parse_args()
    xtr, ytr, xte, yte = cifar10(args.train, args.test)
    norm = kn.data.Normalize().fit(xtr)
    xtr, xte = norm.transform(xtr), norm.transform(xte)
    kn.manual_seed(args.seed)
    x, y = kn.input("x", (None, 3, 32, 32)), kn.input("y", (None,), "int64")
    model = kn.nn.Sequential(
        kn.nn.Conv2d(3, 32, 7, padding=3), kn.nn.ReLU(), kn.nn.MaxPool2d(2), kn.nn.Flatten(),
        kn.nn.Linear(32 * 16 * 16, 100), kn.nn.ReLU(), kn.nn.Linear(100, 10),
    )  # fmt: skip
    logits = model(x)
    loss = kn.softmax_cross_entropy(logits, y)
    epochs = args.epochs or 8
    opt = kn.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    kn.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * (len(xtr) // args.batch))
    step = kn.function([x, y], [loss, logits], updates=opt.updates(loss))
    evaluate = kn.function([x, y], [loss, logits], training=False)
    loader = kn.data.DataLoader(
        (xtr, ytr), batch_size=args.batch, shuffle=True, drop_last=True, seed=args.seed
    )
    with Timer() as t:
        kn.train.fit(step, loader, epochs, val=(xte, yte), evaluate=evaluate, progress=sys.stderr.isatty())
        predict = kn.function([x], kn.argmax(logits, axis=1), training=False)
        acc = float(
            np.mean(np.concatenate([predict(xte[i : i + 1000]) for i in range(0, len(xte), 1000)]) == yte)
        )
    report("convnet_cifar10", acc, t.seconds)
    return acc


if __name__ == "__main__":
    main()
