"""k-nearest neighbours on CIFAR-10 raw pixels, L2 distance, k chosen by 5-fold
cross-validation on the training set (CS231n assignment 1)."""

import numpy as np
from _common import Timer, cifar10, parser, report

import kiln as kn


def main() -> float:
    p = parser(__doc__)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--cv-train", type=int, default=10000, help="training images used for cross-validation")
    args = p.parse_args()
    with Timer() as t:
        xtr, ytr, xte, yte = cifar10(args.train, args.test)
        xtr, xte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
        k_choices = [1, 3, 5, 8, 10, 12, 15, 20, 50]
        n_cv = min(args.cv_train, len(xtr))
        best_k, accs = kn.classic.cross_validate(xtr[:n_cv], ytr[:n_cv], k_choices, args.folds)
        for k in k_choices:
            print(
                f"k = {k:3d}: cross-validation accuracy {np.mean(accs[k]) * 100:.2f}% +- {np.std(accs[k]) * 100:.2f}"
            )
        knn = kn.classic.KNearestNeighbor("l2").fit(xtr, ytr)
        acc = float(np.mean(knn.predict(xte, best_k) == yte))
    print(f"best k = {best_k} ({len(xtr)} training, {len(xte)} test images)")
    report("knn_cifar10", acc, t.seconds)
    return acc


if __name__ == "__main__":
    main()
