"""kn.classic: k-nearest neighbours (L1/L2 distances, prediction, cross-validation) and the linear
SVM / softmax classifiers, against brute-force numpy references (CS231n's conventions)."""

import copy

import numpy as np
import pytest
from conftest import DATA_DIR

import kiln as kn
from kiln.classic import KNearestNeighbor, LinearSVM, Softmax, cross_validate

CIFAR_JPG = DATA_DIR / "cifar10" / "cifar10-jpg.tar.gz"


# ---- numpy references ----


def np_dists(test, train, metric):
    test, train = test.astype(np.float64), train.astype(np.float64)
    diff = test[:, None, :] - train[None, :, :]
    return np.square(diff).sum(-1) if metric == "l2" else np.abs(diff).sum(-1)


def np_knn(dists, y_train, k):
    """argsort + majority vote; bincount's argmax sends ties to the smallest label."""
    nearest = np.argsort(dists, axis=1, kind="stable")[:, :k]
    n_cls = int(y_train.max()) + 1
    return np.array([np.bincount(y_train[row], minlength=n_cls).argmax() for row in nearest])


def np_svm_loss(W, b, X, y, reg):
    s = X @ W + b
    margins = np.maximum(0.0, s - s[np.arange(len(y)), y][:, None] + 1.0)
    margins[np.arange(len(y)), y] = 0.0
    return margins.sum(1).mean() + reg * np.sum(W * W)


def np_svm_grad(W, b, X, y, reg):
    s = X @ W + b
    n = len(y)
    mask = (s - s[np.arange(n), y][:, None] + 1.0 > 0).astype(np.float64)
    mask[np.arange(n), y] = 0.0
    mask[np.arange(n), y] = -mask.sum(1)
    return X.T @ mask / n + 2 * reg * W, mask.sum(0) / n


def np_softmax_loss(W, b, X, y, reg):
    s = X @ W + b
    s = s - s.max(1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean() + reg * np.sum(W * W)


def np_softmax_grad(W, b, X, y, reg):
    s = X @ W + b
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return X.T @ p / len(y) + 2 * reg * W, p.sum(0) / len(y)


def knn_data(n_train, n_test, d, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n_train, d)).astype(np.float32),
        rng.integers(0, classes, n_train),
        rng.standard_normal((n_test, d)).astype(np.float32),
    )


def blobs(n, d, classes, seed=0, sep=4.0):
    """Linearly separable Gaussian blobs: class means far apart relative to the noise."""
    rng = np.random.default_rng(seed)
    centers = sep * rng.standard_normal((classes, d))
    y = rng.integers(0, classes, n)
    return (centers[y] + 0.3 * rng.standard_normal((n, d))).astype(np.float32), y


# ---- kNN distances ----


@pytest.mark.parametrize("metric", ["l2", "l1"])
def test_compute_distances_blocks(metric):
    X_tr, y_tr, X_te = knn_data(300, 47, 20)
    knn = KNearestNeighbor(metric, batch_size=10).fit(X_tr, y_tr)  # 5 L2 blocks of 10 (last 7)
    d = knn.compute_distances(X_te)
    ref = np_dists(X_te, X_tr, metric)
    assert d.shape == (47, 300)
    np.testing.assert_allclose(d, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("batch_size", [50, 1000])
def test_l1_distances_cross_train_block_boundary(batch_size):
    # 4500 training rows: column blocks 0:2000, 2000:4000, 4000:4500; rows of test in blocks of
    # max(1, batch_size // 50) = 1 or 20
    X_tr, y_tr, X_te = knn_data(4500, 23, 3, seed=1)
    knn = KNearestNeighbor("l1", batch_size=batch_size).fit(X_tr, y_tr)
    d = knn.compute_distances(X_te)
    np.testing.assert_allclose(d, np_dists(X_te, X_tr, "l1"), rtol=1e-5, atol=1e-5)


def test_l2_distances_identical_rows_near_zero():
    X_tr, y_tr, _ = knn_data(50, 0, 8)
    d = KNearestNeighbor("l2").fit(X_tr, y_tr).compute_distances(X_tr[:5])
    np.testing.assert_allclose(np.diag(d[:, :5]), 0.0, atol=1e-4)


def test_train_alias_and_float64_input():
    X_tr, y_tr, X_te = knn_data(60, 9, 5)
    knn = KNearestNeighbor("l2")
    knn.train(X_tr.astype(np.float64), y_tr)
    d = knn.compute_distances(X_te.astype(np.float64))
    assert d.dtype == np.float32
    np.testing.assert_allclose(d, np_dists(X_te, X_tr, "l2"), rtol=1e-4, atol=1e-4)


# ---- kNN prediction ----


@pytest.mark.parametrize("metric", ["l2", "l1"])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_predict_matches_brute_force(metric, k):
    X_tr, y_tr, X_te = knn_data(400, 61, 12, classes=5, seed=k)
    knn = KNearestNeighbor(metric, batch_size=16).fit(X_tr, y_tr)
    pred = knn.predict(X_te, k=k)
    ref = np_knn(np_dists(X_te, X_tr, metric), y_tr, k)
    assert pred.shape == (61,)
    np.testing.assert_array_equal(pred, ref)
    np.testing.assert_array_equal(knn.predict_from_distances(knn.compute_distances(X_te), k), ref)


def test_predict_k_equals_num_train():
    X_tr, y_tr, X_te = knn_data(9, 4, 3, classes=3, seed=3)
    expect = np.full(4, np.bincount(y_tr, minlength=3).argmax())
    for metric in ("l1", "l2"):
        np.testing.assert_array_equal(KNearestNeighbor(metric).fit(X_tr, y_tr).predict(X_te, k=9), expect)


def test_predict_from_distances_hand_cases():
    knn = KNearestNeighbor().fit(np.zeros((5, 2), np.float32), np.array([2, 0, 1, 1, 0]))
    dists = np.array(
        [
            [0.0, 5.0, 4.0, 3.0, 2.0],  # k=1: label 2; k=3: {2, 0, 1} tie -> 0
            [9.0, 1.0, 2.0, 3.0, 0.5],  # k=1: label 0; k=3: {0, 0, 1} -> 0
            [1.0, 9.0, 0.2, 0.1, 8.0],  # k=1: label 1; k=3: {1, 1, 2} -> 1
            [3.0, 1.0, 2.0, 9.0, 8.0],  # k=2: {0, 1} tie -> 0
        ],
        np.float32,
    )
    np.testing.assert_array_equal(knn.predict_from_distances(dists, 1), [2, 0, 1, 0])
    np.testing.assert_array_equal(knn.predict_from_distances(dists, 3), [0, 0, 1, 0])
    np.testing.assert_array_equal(knn.predict_from_distances(dists, 2)[3], 0)
    np.testing.assert_array_equal(knn.predict_from_distances(dists, 5), [0, 0, 0, 0])  # 2x0, 2x1, 1x2


def test_predict_vote_ties_go_to_smallest_label():
    # 1-D: test point 0 has neighbours at +-1 (labels 3 and 1) then +-2 (labels 2 and 0)
    X_tr = np.array([[1.0], [-1.1], [2.2], [-2.3]], np.float32)
    y_tr = np.array([3, 1, 2, 0])
    for metric in ("l1", "l2"):
        knn = KNearestNeighbor(metric).fit(X_tr, y_tr)
        assert knn.predict(np.zeros((1, 1), np.float32), k=1)[0] == 3
        assert knn.predict(np.zeros((1, 1), np.float32), k=2)[0] == 1
        assert knn.predict(np.zeros((1, 1), np.float32), k=4)[0] == 0


# ---- kNN errors ----


def test_knn_errors():
    X_tr, y_tr, X_te = knn_data(20, 3, 4)
    with pytest.raises(kn.Error, match="metric"):
        KNearestNeighbor("cosine")
    for metric in ("l1", "l2"):
        fresh = KNearestNeighbor(metric)
        with pytest.raises(kn.Error, match="fit"):
            fresh.predict(X_te)
        with pytest.raises(kn.Error, match="fit"):
            fresh.compute_distances(X_te)
        knn = KNearestNeighbor(metric).fit(X_tr, y_tr)
        for k in (0, -1, 21):
            with pytest.raises(kn.Error, match="k must be"):
                knn.predict(X_te, k=k)
            with pytest.raises(kn.Error, match="k must be"):
                knn.predict_from_distances(np.ones((3, 20), np.float32), k=k)
        with pytest.raises(kn.Error, match="features"):
            knn.predict(np.zeros((3, 5), np.float32))
        with pytest.raises(kn.Error, match="features"):
            knn.compute_distances(np.zeros((3, 5), np.float32))
        with pytest.raises(kn.Error, match="flatten"):
            knn.predict(np.zeros((3, 2, 2), np.float32))
        with pytest.raises(kn.Error, match="flatten"):
            knn.compute_distances(np.zeros((3, 2, 2), np.float32))
        with pytest.raises(kn.Error, match="flatten"):
            KNearestNeighbor(metric).fit(np.zeros((20, 2, 2), np.float32), y_tr)
        with pytest.raises(kn.Error):
            KNearestNeighbor(metric).fit(X_tr, y_tr[:-1])
        with pytest.raises(kn.Error):
            KNearestNeighbor(metric).fit(X_tr, y_tr[:, None])


def test_knn_bad_input_is_error_not_silent():
    X_tr, y_tr, X_te = knn_data(20, 3, 4)
    with pytest.raises(kn.Error):  # AttributeError today
        KNearestNeighbor().predict_from_distances(np.ones((3, 20), np.float32), 1)
    knn = KNearestNeighbor().fit(X_tr, y_tr)
    with pytest.raises(kn.Error):  # 7 columns for 20 training rows: silently votes on rows 0..6
        knn.predict_from_distances(np.ones((3, 7), np.float32), 1)
    with pytest.raises(kn.Error):  # ValueError (range step 0) at predict today
        KNearestNeighbor(batch_size=0)


def test_knn_negative_labels_not_silently_wrapped():
    X_tr, y_tr, _ = knn_data(20, 0, 4)
    y_neg = y_tr - 1  # labels -1..2
    knn = KNearestNeighbor()
    try:
        knn.fit(X_tr, y_neg)
    except kn.Error:
        return  # rejecting negative labels is fine
    np.testing.assert_array_equal(knn.predict(X_tr, k=1), y_neg)  # each row is its own neighbour


# ---- cross-validation ----


def test_cross_validate_hand_computed():
    # 1-D points, three contiguous folds of two: {0, 1}, {2.1, 3.3}, {4.6, 6}
    X = np.array([[0.0], [1.0], [2.1], [3.3], [4.6], [6.0]], np.float32)
    y = np.array([0, 0, 0, 1, 1, 1])
    for metric in ("l1", "l2"):
        best, acc = cross_validate(X, y, [3, 1], num_folds=3, metric=metric)
        # k=1: every held-out point's nearest remaining point has its label (if a fold leaked
        # into training, k=3 would score differently too). k=3 by hand:
        # fold 0: train {2.1:0, 3.3:1, 4.6:1, 6:1}: both test points see {0, 1, 1} -> wrong
        # fold 1: train {0:0, 1:0, 4.6:1, 6:1}: 2.1 -> {1, 0, 4.6} = 0 ok; 3.3 -> {4.6, 1, 6} = 1 ok
        # fold 2: train {0, 1, 2.1 (0), 3.3 (1)}: both see {3.3, 2.1, 1} -> {1, 0, 0} = 0 wrong
        assert acc == {1: [1.0, 1.0, 1.0], 3: [0.0, 1.0, 0.0]}
        assert best == 1


@pytest.mark.parametrize("metric", ["l2", "l1"])
def test_cross_validate_matches_numpy(metric):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((103, 6)).astype(np.float32)  # 103 = uneven folds (21, 21, 21, 20, 20)
    y = (X[:, 0] + 0.8 * rng.standard_normal(103) > 0).astype(np.int64) + 2 * (X[:, 1] > 0)
    ks = [1, 3, 5, 9, 15]
    best, acc = cross_validate(X, y, ks, num_folds=5, metric=metric)
    assert set(acc) == set(ks) and all(len(acc[k]) == 5 for k in ks)
    # folds: contiguous, partitioning the rows (np.array_split)
    bounds = np.cumsum([0, 21, 21, 21, 20, 20])
    for f in range(5):
        te = np.arange(bounds[f], bounds[f + 1])
        tr = np.setdiff1d(np.arange(103), te)
        d = np_dists(X[te], X[tr], metric)
        for k in ks:
            expect = np.mean(np_knn(d, y[tr], k) == y[te])
            assert acc[k][f] == pytest.approx(expect), (f, k)
    means = [np.mean(acc[k]) for k in ks]
    assert best == ks[int(np.argmax(means))]
    assert all(0.0 <= a <= 1.0 for k in ks for a in acc[k])


def test_cross_validate_best_k_argmax():
    # every row twice, the copies 20 rows apart: with two contiguous folds each held-out row's
    # copy is in the training fold, so 1-NN is perfect and beats k=7 on random labels
    rng = np.random.default_rng(2)
    base = rng.standard_normal((20, 3)).astype(np.float32)
    yb = rng.integers(0, 2, 20)
    X, y = np.concatenate([base, base]), np.concatenate([yb, yb])
    best, acc = cross_validate(X, y, [7, 1], num_folds=2)
    assert acc[1] == [1.0, 1.0]
    assert best == 1


def test_cross_validate_errors():
    with pytest.raises(kn.Error):
        cross_validate(np.zeros((10, 2, 2), np.float32), np.zeros(10, np.int64), [1])
    with pytest.raises(kn.Error):
        cross_validate(np.zeros((10, 2), np.float32), np.zeros(9, np.int64), [1])
    X, y = np.random.default_rng(0).standard_normal((10, 2)).astype(np.float32), np.arange(10) % 2
    with pytest.raises(kn.Error, match="k must be"):
        cross_validate(X, y, [9], num_folds=5)  # 8 training rows per fold
    with pytest.raises(kn.Error, match="metric"):
        cross_validate(X, y, [1], metric="l3")


def test_cross_validate_bad_folds_and_ks_are_errors():
    X, y = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32), np.arange(4) % 2
    with pytest.raises(kn.Error):  # today: empty folds, accuracies [.., nan, nan] and a warning
        cross_validate(X, y, [1], num_folds=6)
    with pytest.raises(kn.Error):  # today: ValueError from np.concatenate
        cross_validate(X, y, [1], num_folds=1)
    with pytest.raises(kn.Error):  # today: ValueError from max()
        cross_validate(X, y, [])


# ---- linear classifiers ----

LINEAR = [(LinearSVM, np_svm_loss, np_svm_grad), (Softmax, np_softmax_loss, np_softmax_grad)]


@pytest.mark.parametrize("cls, np_loss, _", LINEAR, ids=["svm", "softmax"])
@pytest.mark.parametrize("reg", [0.0, 0.5])
def test_initial_loss_matches_cs231n(cls, np_loss, _, reg):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((40, 30)).astype(np.float32)
    y = rng.integers(0, 5, 40)
    y[:5] = np.arange(5)  # all five classes present: C = max(y) + 1
    clf = cls(seed=3)
    W0 = 0.01 * rng.standard_normal((30, 5))  # preset: fit keeps an existing W
    clf.W, clf.b = W0.copy(), 0.1 * rng.standard_normal(5)
    b0 = clf.b.copy()
    idx = copy.deepcopy(clf.rng).integers(0, 40, 16)  # the minibatch fit will draw
    hist = clf.fit(X, y, learning_rate=0.0, reg=reg, num_iters=3, batch_size=16)
    assert len(hist) == 3
    np.testing.assert_allclose(clf.W, W0, rtol=1e-6, atol=1e-9)  # lr 0: unchanged (f32 roundtrip)
    np.testing.assert_allclose(clf.b, b0, rtol=1e-6, atol=1e-9)
    Xd = X.astype(np.float64)
    assert hist[0] == pytest.approx(np_loss(W0, b0, Xd[idx], y[idx], reg), rel=1e-5)
    # whole-data loss is in the range of the minibatch losses' source
    per_sample = [np_loss(W0, b0, Xd[i : i + 1], y[i : i + 1], reg) for i in range(40)]
    assert min(per_sample) - 1e-5 <= hist[1] <= max(per_sample) + 1e-5


@pytest.mark.parametrize("cls, np_loss, _", LINEAR, ids=["svm", "softmax"])
def test_initial_loss_seeded_init(cls, np_loss, _):
    # W initialised by fit from the seed; one sample so the minibatch is that sample repeated
    X = np.random.default_rng(0).standard_normal((1, 12)).astype(np.float32)
    y = np.array([3])
    clf = cls(seed=11)
    hist = clf.fit(X, y, learning_rate=0.0, reg=2.0, num_iters=1, batch_size=8)
    assert clf.W.shape == (12, 4) and clf.b.shape == (4,)
    assert np.abs(clf.W).max() < 0.01  # 0.001 * standard normal
    assert hist[0] == pytest.approx(np_loss(clf.W, clf.b, X.astype(np.float64), y, 2.0), rel=1e-5)
    if cls is Softmax:
        assert hist[0] == pytest.approx(np.log(4), abs=0.01)
    else:
        assert hist[0] == pytest.approx(3.0, abs=0.01)  # C - 1 margins of ~1


@pytest.mark.parametrize("cls, _, np_grad", LINEAR, ids=["svm", "softmax"])
def test_one_sgd_step_matches_cs231n_gradient(cls, _, np_grad):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((30, 8)).astype(np.float32)
    y = rng.integers(0, 3, 30)
    y[:3] = np.arange(3)
    clf = cls(seed=1)
    W0, b0 = 0.3 * rng.standard_normal((8, 3)), 0.2 * rng.standard_normal(3)
    clf.W, clf.b = W0.copy(), b0.copy()
    idx = copy.deepcopy(clf.rng).integers(0, 30, 10)
    lr, reg = 0.1, 0.05
    clf.fit(X, y, learning_rate=lr, reg=reg, num_iters=1, batch_size=10)
    gW, gb = np_grad(W0, b0, X[idx].astype(np.float64), y[idx], reg)
    np.testing.assert_allclose(clf.W, W0 - lr * gW, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(clf.b, b0 - lr * gb, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [LinearSVM, Softmax], ids=["svm", "softmax"])
def test_linear_separable_training(cls):
    X, y = blobs(1200, 20, 4, seed=1)
    X_tr, y_tr, X_te, y_te = X[:900], y[:900], X[900:], y[900:]
    clf = cls(seed=0)
    hist = clf.train(X_tr, y_tr, learning_rate=1e-2, reg=1e-4, num_iters=300, batch_size=100)
    assert len(hist) == 300 and all(np.isfinite(hist))
    assert np.mean(hist[-20:]) < hist[0]
    pred = clf.predict(X_te)
    assert pred.shape == (300,) and np.issubdtype(pred.dtype, np.integer)
    assert np.mean(pred == y_te) > 0.9
    assert np.mean(clf.predict(X_tr) == y_tr) > 0.9


@pytest.mark.parametrize("cls", [LinearSVM, Softmax], ids=["svm", "softmax"])
def test_class_templates(cls):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 3072)).astype(np.float32)
    y = np.arange(50) % 10
    clf = cls(seed=0)
    clf.fit(X, y, learning_rate=1e-3, num_iters=2, batch_size=20)
    t = clf.class_templates((3, 32, 32))
    assert t.shape == (10, 3, 32, 32) and t.dtype == np.uint8
    assert t.min() == 0 and t.max() >= 254
    # rescaled linearly from W: the template order matches W's column order
    w = clf.W.T.reshape(10, 3, 32, 32)
    assert np.unravel_index(t.argmax(), t.shape) == np.unravel_index(w.argmax(), w.shape)
    assert np.unravel_index(t.argmin(), t.shape) == np.unravel_index(w.argmin(), w.shape)
    assert clf.class_templates((32, 32, 3)).shape == (10, 32, 32, 3)


def test_class_templates_default_matches_kiln_image_layout():
    # kn.data's CIFAR-10 loaders give (N, 3, 32, 32), so rows flattened from them are CHW: the
    # default template shape for D = 3072 must be (C, 3, 32, 32), not HWC (32, 32, 3)
    rng = np.random.default_rng(0)
    clf = Softmax(seed=0)
    clf.fit(rng.standard_normal((20, 3072)).astype(np.float32), np.arange(20) % 10, num_iters=1)
    assert clf.class_templates().shape == (10, 3, 32, 32)


def test_linear_errors():
    for cls in (LinearSVM, Softmax):
        clf = cls(seed=0)
        with pytest.raises(kn.Error, match="fit"):
            clf.predict(np.zeros((2, 3), np.float32))
        with pytest.raises(kn.Error):
            clf.class_templates()
        with pytest.raises(kn.Error, match="flatten"):
            clf.fit(np.zeros((4, 2, 2), np.float32), np.zeros(4, np.int64))
        with pytest.raises(kn.Error):
            clf.fit(np.zeros((4, 3), np.float32), np.zeros(3, np.int64))


def test_linear_predict_bad_input_is_error():
    X, y = blobs(20, 4, 3)
    for cls in (LinearSVM, Softmax):
        clf = cls(seed=0)
        clf.fit(X, y, num_iters=1, batch_size=5)
        with pytest.raises(kn.Error):  # numpy ValueError today
            clf.predict(X[:, :3])
        with pytest.raises(kn.Error):  # numpy ValueError today
            clf.predict(X.reshape(20, 2, 2))
        with pytest.raises(kn.Error):  # numpy ValueError today: 12 values can't be (32, 32, 3)
            clf.class_templates()


# ---- real data ----


@pytest.mark.skipif(not CIFAR_JPG.exists(), reason=f"CIFAR-10 not found at {CIFAR_JPG}")
def test_knn_cifar10_real_data():
    X_train, y_train = kn.data.load_cifar10_jpg(CIFAR_JPG, "train")
    X_test, y_test = kn.data.load_cifar10_jpg(CIFAR_JPG, "test")
    rng = np.random.default_rng(0)
    tr = rng.choice(len(X_train), 5000, replace=False)
    te = rng.choice(len(X_test), 500, replace=False)
    Xtr = X_train[tr].reshape(5000, -1).astype(np.float32)
    Xte = X_test[te].reshape(500, -1).astype(np.float32)
    knn = KNearestNeighbor("l2").fit(Xtr, y_train[tr])
    pred = knn.predict(Xte, k=1)
    acc = float(np.mean(pred == y_test[te]))
    assert acc > 0.20, acc
    # the blocked GEMM ranking agrees with the distance matrix on nearly every image
    same = knn.predict_from_distances(knn.compute_distances(Xte[:100]), 1) == pred[:100]
    assert same.mean() >= 0.98
