"""A small ConvNet on MNIST: two conv-BN-ReLU-pool stages, dropout, a linear classifier."""

from _common import mnist, parser, train_and_test

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
    epochs, batch = args.epochs or 8, 100
    opt = kn.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    data = (xtr, ytr, xte, yte)
    return train_and_test("convnet_mnist", x, y, logits, opt, data, epochs, batch, args.seed)


if __name__ == "__main__":
    main()
