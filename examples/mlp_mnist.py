"""A multilayer perceptron 784-512-256-10 with batch norm and dropout on MNIST."""

from _common import mnist, parser
from mlp import train


def main() -> float:
    args = parser(__doc__).parse_args()
    xtr, ytr, xte, yte = mnist()
    xtr, xte = xtr.reshape(len(xtr), -1)[: args.train], xte.reshape(len(xte), -1)[: args.test]
    ytr, yte = ytr[: args.train], yte[: args.test]
    return train("mlp_mnist", xtr, ytr, xte, yte, [784, 512, 256, 10], args.epochs or 10, batch_norm=True,
                 dropout=0.2, lr=1e-3, weight_decay=0.01, seed=args.seed)  # fmt: skip


if __name__ == "__main__":
    main()
