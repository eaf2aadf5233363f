"""Linear SVM and softmax classifiers on CIFAR-10 raw pixels (mean image subtracted), trained by
minibatch SGD (CS231n assignment 1); also saves the learned class templates as a PNG."""

import numpy as np
from _common import Timer, cifar10, parser, report

import kiln as kn


def main() -> dict:
    p = parser(__doc__)
    p.add_argument("--iters", type=int, default=3000)
    p.add_argument("--templates", default=None, help="write the class templates to this PNG")
    args = p.parse_args()
    results = {}
    xtr, ytr, xte, yte = cifar10(args.train, args.test)
    mean = kn.data.MeanImage().fit(xtr)
    xtr = mean.transform(xtr).reshape(len(xtr), -1) / 255.0
    xte = mean.transform(xte).reshape(len(xte), -1) / 255.0
    # (learning rate, regularization) chosen on the last 5,000 training images held out
    settings = {"svm": (kn.classic.LinearSVM, 3e-3, 1e-3), "softmax": (kn.classic.Softmax, 1e-2, 1e-3)}
    for name, (cls, lr, reg) in settings.items():
        with Timer() as t:
            clf = cls(seed=args.seed)
            history = clf.fit(xtr, ytr, learning_rate=lr, reg=reg, num_iters=args.iters, batch_size=200)
            acc = float(np.mean(clf.predict(xte) == yte))
        print(f"{name}: loss {history[0]:.3f} -> {np.mean(history[-50:]):.3f}")
        report(f"linear_cifar10 {name}", acc, t.seconds)
        results[name] = acc
        if args.templates and name == "svm":
            save_templates(clf.class_templates((3, 32, 32)), args.templates)
    return results


def save_templates(templates: np.ndarray, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 10, figsize=(15, 2))
    for ax, img, label in zip(axes, templates, kn.data.CIFAR10_CLASSES):
        ax.imshow(img.transpose(1, 2, 0))
        ax.set_title(label)
        ax.axis("off")
    fig.savefig(path, bbox_inches="tight")


if __name__ == "__main__":
    main()
