"""A fully connected net with batch norm and dropout on CIFAR-10 (CS231n assignment 2)."""

from _common import cifar10, parser
from mlp import train

import kiln as kn


def main() -> float:
    p = parser(__doc__)
    args = p.parse_args()
    xtr, ytr, xte, yte = cifar10(args.train, args.test)
    norm = kn.data.Normalize().fit(xtr)
    xtr, xte = norm.transform(xtr).reshape(len(xtr), -1), norm.transform(xte).reshape(len(xte), -1)
    return train("fc_cifar10", xtr, ytr, xte, yte, [3072, 1024, 512, 256, 10], args.epochs or 20, batch_norm=True,
                 dropout=0.3, lr=1e-3, weight_decay=0.05, seed=args.seed)  # fmt: skip


if __name__ == "__main__":
    main()
