"""CS231n's three-layer ConvNet on CIFAR-10: conv 32 7x7 - relu - 2x2 max pool - affine 100 -
relu - affine 10, trained with Adam (assignment 2)."""

from _common import cifar10, parser, train_and_test

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
    epochs = args.epochs or 8
    opt = kn.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    data = (xtr, ytr, xte, yte)
    return train_and_test("convnet_cifar10", x, y, logits, opt, data, epochs, args.batch, args.seed)


if __name__ == "__main__":
    main()
