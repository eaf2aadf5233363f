"""A two-layer net 3072-H-10 (ReLU) on CIFAR-10, mean image subtracted (CS231n assignment 1)."""

from _common import cifar10, parser
from mlp import train

import kiln as kn


def main() -> float:
    p = parser(__doc__)
    p.add_argument("--hidden", type=int, default=500)
    args = p.parse_args()
    xtr, ytr, xte, yte = cifar10(args.train, args.test)
    norm = kn.data.Normalize().fit(xtr)
    xtr, xte = norm.transform(xtr).reshape(len(xtr), -1), norm.transform(xte).reshape(len(xte), -1)
    return train("two_layer_cifar10", xtr, ytr, xte, yte, [3072, args.hidden, 10], args.epochs or 10, lr=1e-3,
                 weight_decay=0.05, seed=args.seed)  # fmt: skip


if __name__ == "__main__":
    main()
