"""kiln.data: readers on files the tests write themselves, DataLoader semantics, preprocessing
against numpy formulas, augmentation properties, and the real data in ../shared/data when present."""

import gzip
import io
import pickle
import tarfile
import threading

import numpy as np
import pytest
from conftest import DATA_DIR

import kiln as kn
import kiln.data as kd

PIL = pytest.importorskip("PIL", reason="Pillow is needed for the image-folder readers")
from PIL import Image  # noqa: E402


def rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- MNIST IDX


def write_idx(path, arr, magic=None, gz=False):
    arr = np.asarray(arr, np.uint8)
    magic = magic if magic is not None else 0x800 | arr.ndim
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = head + arr.tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_mnist(root, n_train=7, n_test=3, gz=True, seed=0):
    r = rng(seed)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = r.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = r.integers(0, 10, size=n).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte", x, gz=gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", y, gz=gz)
        out[split] = (x, y)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx(tmp_path, gz):
    ref = make_mnist(tmp_path, gz=gz)
    for split in ("train", "test"):
        x, y = kd.load_mnist(tmp_path, split)
        assert x.dtype == np.uint8 and x.shape == (len(ref[split][0]), 28, 28)
        assert y.dtype == np.int64 and y.shape == (len(ref[split][0]),)
        np.testing.assert_array_equal(x, ref[split][0])
        np.testing.assert_array_equal(y, ref[split][1])


def test_mnist_prefers_raw_over_gz(tmp_path):
    make_mnist(tmp_path, gz=True, seed=0)
    raw = make_mnist(tmp_path, gz=False, seed=1)
    np.testing.assert_array_equal(kd.load_mnist(tmp_path)[0], raw["train"][0])


def test_read_idx_other_shapes(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx", a)
    np.testing.assert_array_equal(kd.read_idx(tmp_path / "a-idx"), a)
    # a big-endian int32 IDX file
    b = np.array([[1, -2], [70000, 3]], ">i4")
    (tmp_path / "b-idx").write_bytes(bytes([0, 0, 0x0C, 2]) + (2).to_bytes(4, "big") * 2 + b.tobytes())
    out = kd.read_idx(tmp_path / "b-idx")
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, b)


def test_mnist_errors(tmp_path):
    with pytest.raises(kn.Error, match="does not exist"):
        kd.load_mnist(tmp_path / "nowhere")
    with pytest.raises(kn.Error, match="train-images-idx3-ubyte"):
        kd.load_mnist(tmp_path)  # empty folder: names the missing file
    with pytest.raises(kn.Error, match="split"):
        kd.load_mnist(tmp_path, "val")

    make_mnist(tmp_path, gz=False)
    imgs = tmp_path / "train-images-idx3-ubyte"
    lbls = tmp_path / "train-labels-idx1-ubyte"
    good_imgs, good_lbls = imgs.read_bytes(), lbls.read_bytes()

    imgs.write_bytes(good_lbls)  # a label file where the images should be
    with pytest.raises(kn.Error, match=r"train-images-idx3-ubyte.*magic number 0x801, expected 0x803"):
        kd.load_mnist(tmp_path)
    imgs.write_bytes(good_imgs[:-5])
    with pytest.raises(kn.Error, match=r"train-images-idx3-ubyte.*truncated"):
        kd.load_mnist(tmp_path)
    imgs.write_bytes(good_imgs[:6])
    with pytest.raises(kn.Error, match="truncated IDX header"):
        kd.load_mnist(tmp_path)
    imgs.write_bytes(good_imgs + b"\0")
    with pytest.raises(kn.Error, match="trailing bytes"):
        kd.load_mnist(tmp_path)
    imgs.write_bytes(good_imgs)
    write_idx(lbls, np.zeros(5, np.uint8))  # 7 images, 5 labels
    with pytest.raises(kn.Error, match="7 images but .* 5 labels"):
        kd.load_mnist(tmp_path)
    lbls.write_bytes(good_lbls)
    assert kd.load_mnist(tmp_path)[0].shape == (7, 28, 28)


def test_mnist_truncated_gz(tmp_path):
    make_mnist(tmp_path, gz=True)
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(kn.Error, match=r"t10k-images-idx3-ubyte.gz.*truncated"):
        kd.load_mnist(tmp_path, "test")
    p.write_bytes(b"not gzip at all")
    with pytest.raises(kn.Error, match="t10k-images-idx3-ubyte.gz"):
        kd.load_mnist(tmp_path, "test")


# ---------------------------------------------------------------- CIFAR-10 python batches


def make_cifar(root, n=4, seed=0):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    r = rng(seed)
    out = {"train": ([], []), "test": ([], [])}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = r.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in r.integers(0, 10, size=n)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, f, protocol=2)
        split = "test" if name == "test_batch" else "train"
        out[split][0].append(data)
        out[split][1].extend(labels)
    return folder, {s: (np.concatenate(d), np.array(lab)) for s, (d, lab) in out.items()}


def test_cifar10_batches(tmp_path):
    folder, ref = make_cifar(tmp_path)
    for root in (tmp_path, folder):
        for split, n in (("train", 20), ("test", 4)):
            x, y = kd.load_cifar10(root, split)
            assert x.dtype == np.uint8 and x.shape == (n, 3, 32, 32) and x.flags.c_contiguous
            assert y.dtype == np.int64 and y.shape == (n,)
            np.testing.assert_array_equal(y, ref[split][1])
            # rows are 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32
            np.testing.assert_array_equal(x[:, 1], ref[split][0][:, 1024:2048].reshape(n, 32, 32))
            np.testing.assert_array_equal(x.reshape(n, -1), ref[split][0])
    assert kd.CIFAR10_CLASSES[0] == "airplane" and kd.CIFAR10_CLASSES[9] == "truck"
    assert len(kd.CIFAR10_CLASSES) == 10


def test_cifar10_errors(tmp_path):
    with pytest.raises(kn.Error, match="cifar-10-batches-py"):
        kd.load_cifar10(tmp_path)
    folder, _ = make_cifar(tmp_path)
    with pytest.raises(kn.Error, match="split"):
        kd.load_cifar10(tmp_path, "valid")
    (folder / "data_batch_3").unlink()
    with pytest.raises(kn.Error, match="missing batch file .*data_batch_3"):
        kd.load_cifar10(tmp_path)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(kn.Error, match=r"data_batch_3.*\(N, 3072\)"):
        kd.load_cifar10(tmp_path)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, f)
    with pytest.raises(kn.Error, match="data_batch_3: 4 images but 3 labels"):
        kd.load_cifar10(tmp_path)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"labels": [0] * 3}, f)
    with pytest.raises(kn.Error, match="data_batch_3.*b'data'"):
        kd.load_cifar10(tmp_path)
    good = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(good[: len(good) // 2])
    with pytest.raises(kn.Error, match="test_batch.*truncated"):
        kd.load_cifar10(tmp_path, "test")


# ---------------------------------------------------------------- image folders


def encode(arr, fmt, **kw):
    """arr: (H, W, 3) or (H, W) uint8 -> encoded bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def make_folder(root, classes=("dog", "cat", "bird"), per_class=(3, 2, 1), size=(6, 5), fmt="PNG", seed=0):
    """Writes root/<split>/<class>/<i>.png for splits train and test; returns the expected arrays."""
    r = rng(seed)
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    expected = {}
    for split in ("train", "test"):
        imgs, labels = [], []
        for k, cls in enumerate(sorted(classes)):
            d = root / split / cls
            d.mkdir(parents=True)
            n = per_class[list(classes).index(cls)]
            # names written out of order, read back sorted
            for i in reversed(range(n)):
                (d / f"{i:03d}.{ext}").write_bytes(b"")
            arrays = []
            for i in range(n):
                a = r.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                if fmt == "JPEG":  # smooth content survives JPEG nearly unchanged
                    a = np.broadcast_to(r.integers(30, 220, size=(1, 1, 3)), (*size, 3)).astype(np.uint8)
                (d / f"{i:03d}.{ext}").write_bytes(
                    encode(a, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
                )
                arrays.append(a)
            imgs += arrays
            labels += [k] * n
        expected[split] = (np.stack(imgs).transpose(0, 3, 1, 2), np.array(labels))
    (root / "train" / "README.txt").write_text("not an image, not a class folder")
    (root / "train" / "cat" / "notes.txt").write_text("ignored")
    return expected


def make_tar(src, dest, prefix=""):
    with tarfile.open(dest, "w:gz") as tf:
        for split in ("train", "test"):
            tf.add(src / split, arcname=prefix + split)
    return dest


def test_image_folder_png(tmp_path):
    exp = make_folder(tmp_path / "ds")
    for split in ("train", "test"):
        x, y, names = kd.load_image_folder(tmp_path / "ds", split)
        assert names == ["bird", "cat", "dog"]
        assert x.dtype == np.uint8 and x.shape == (6, 3, 6, 5)
        assert y.dtype == np.int64
        np.testing.assert_array_equal(x, exp[split][0])
        np.testing.assert_array_equal(y, exp[split][1])


@pytest.mark.parametrize("prefix", ["", "mydata/"])
def test_image_folder_tar_gz(tmp_path, prefix):
    exp = make_folder(tmp_path / "ds")
    archive = make_tar(tmp_path / "ds", tmp_path / "ds.tar.gz", prefix)
    for split in ("train", "test"):
        x, y, names = kd.load_image_folder(archive, split)
        x2, y2, names2 = kd.load_image_folder(tmp_path / "ds", split)
        assert names == names2 == ["bird", "cat", "dog"]
        np.testing.assert_array_equal(x, exp[split][0])
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    assert not (tmp_path / "train").exists()  # nothing extracted


def test_image_folder_jpeg_and_classes(tmp_path):
    exp = make_folder(tmp_path / "ds", fmt="JPEG")
    x, y, names = kd.load_image_folder(tmp_path / "ds", "train")
    assert np.abs(x.astype(int) - exp["train"][0]).max() <= 3
    # explicit classes: that order and only those
    x2, y2, names2 = kd.load_image_folder(tmp_path / "ds", "train", classes=["dog", "bird"])
    assert names2 == ["dog", "bird"]
    np.testing.assert_array_equal(y2, [0, 0, 0, 1])
    np.testing.assert_array_equal(x2[:3], x[y == 2])
    np.testing.assert_array_equal(x2[3:], x[y == 0])


def test_image_folder_grayscale(tmp_path):
    r = rng()
    imgs = r.integers(0, 256, size=(2, 4, 4), dtype=np.uint8)
    for i, a in enumerate(imgs):
        d = tmp_path / "train" / f"c{i}"
        d.mkdir(parents=True)
        (d / "a.png").write_bytes(encode(a, "PNG"))
    x, y, _ = kd.load_image_folder(tmp_path, "train")
    assert x.shape == (2, 1, 4, 4)
    np.testing.assert_array_equal(x[:, 0], imgs)
    # a color image among grayscale ones: all become 3 channels
    (tmp_path / "train" / "c1" / "b.png").write_bytes(encode(np.zeros((4, 4, 3), np.uint8), "PNG"))
    x, _, _ = kd.load_image_folder(tmp_path, "train")
    assert x.shape == (3, 3, 4, 4)
    np.testing.assert_array_equal(x[0], np.repeat(imgs[0][None], 3, 0))


def test_image_folder_errors(tmp_path):
    make_folder(tmp_path / "ds")
    with pytest.raises(kn.Error, match="does not exist"):
        kd.load_image_folder(tmp_path / "missing", "train")
    with pytest.raises(kn.Error, match="val is not a directory"):
        kd.load_image_folder(tmp_path / "ds", "val")
    with pytest.raises(kn.Error, match="no class folder 'horse'"):
        kd.load_image_folder(tmp_path / "ds", "train", classes=["cat", "horse"])
    (tmp_path / "ds" / "train" / "emu").mkdir()
    with pytest.raises(kn.Error, match="'emu' holds no images"):
        kd.load_image_folder(tmp_path / "ds", "train")
    (tmp_path / "ds" / "train" / "emu" / "0.png").write_bytes(encode(np.zeros((7, 7, 3), np.uint8), "PNG"))
    with pytest.raises(kn.Error, match=r"emu/0.png is 7x7 .* same size"):
        kd.load_image_folder(tmp_path / "ds", "train")
    (tmp_path / "ds" / "train" / "emu" / "0.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(kn.Error, match=r"emu/0.png: cannot decode"):
        kd.load_image_folder(tmp_path / "ds", "train")
    (tmp_path / "ds" / "train" / "emu" / "0.png").unlink()
    (tmp_path / "ds" / "train" / "emu").rmdir()

    archive = make_tar(tmp_path / "ds", tmp_path / "ds.tar.gz")
    with pytest.raises(kn.Error, match=r"ds.tar.gz: the archive holds no folder 'val/<class>/'"):
        kd.load_image_folder(archive, "val")
    data = archive.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(kn.Error, match=r"cut.tar.gz: .*(truncated|cannot read)"):
        kd.load_image_folder(tmp_path / "cut.tar.gz", "test")
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(kn.Error, match="neither a directory nor a tar archive"):
        kd.load_image_folder(tmp_path / "plain.txt", "train")


def make_cifar_jpg(path, per_class=2, seed=0):
    r = rng(seed)
    colors = {}
    with tarfile.open(path, "w:gz") as tf:
        for split in ("train", "test"):
            for k, cls in reversed(list(enumerate(kd.CIFAR10_CLASSES))):  # archive order is irrelevant
                for i in range(per_class):
                    c = r.integers(20, 230, size=3)
                    colors[split, k, i] = c
                    data = encode(np.broadcast_to(c.astype(np.uint8), (32, 32, 3)).copy(), "JPEG", quality=95)
                    info = tarfile.TarInfo(f"{split}/{cls}/{i:04d}.jpg")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return colors


def test_load_cifar10_jpg_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "c.tar.gz"
    colors = make_cifar_jpg(archive)
    x, y = kd.load_cifar10_jpg(archive, "train")
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(y, np.repeat(np.arange(10), 2))
    for j in range(20):
        assert np.abs(x[j].mean(axis=(1, 2)) - colors["train", j // 2, j % 2]).max() < 3
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 2 and cached[0].endswith("-test.npz") and cached[1].endswith("-train.npz")
    assert str(archive.stat().st_size) in cached[0]

    # the second call reads the cache, without touching the archive's contents
    def no_decode(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(kd.folder, "_list_tar", no_decode)
    xt, yt = kd.load_cifar10_jpg(archive, "test")
    assert xt.shape == (20, 3, 32, 32)
    x2, y2 = kd.load_cifar10_jpg(archive, "train")
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    monkeypatch.undo()

    # a changed archive gets a new key; cache=False writes nothing
    monkeypatch.setenv("KILN_CACHE", str(tmp_path / "cache2"))
    x3, _ = kd.load_cifar10_jpg(archive, "test", cache=False)
    np.testing.assert_array_equal(x3, xt)
    assert not (tmp_path / "cache2").exists()


def test_load_cifar10_jpg_errors(tmp_path):
    with tarfile.open(tmp_path / "bad.tar.gz", "w:gz") as tf:
        for split in ("train", "test"):
            data = encode(np.zeros((32, 32, 3), np.uint8), "JPEG")
            info = tarfile.TarInfo(f"{split}/airplane/0000.jpg")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(kn.Error, match="bad.tar.gz: 'train' has class folders \\['airplane'\\]"):
        kd.load_cifar10_jpg(tmp_path / "bad.tar.gz", "train", cache=False)
    with pytest.raises(kn.Error, match="split"):
        kd.load_cifar10_jpg(tmp_path / "bad.tar.gz", "val")


# ---------------------------------------------------------------- DataLoader


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "kiln-data-prefetch"]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_loader_covers_all_samples(prefetch):
    x = np.arange(23 * 2, dtype=np.float32).reshape(23, 2)
    y = np.arange(23)
    loader = kd.DataLoader((x, y), batch_size=5, shuffle=True, seed=1, prefetch=prefetch)
    assert len(loader) == 5
    orders = []
    for _ in range(3):
        batches = list(loader)
        assert [len(b[1]) for b in batches] == [5, 5, 5, 5, 3]
        idx = np.concatenate([b[1] for b in batches])
        assert sorted(idx) == list(range(23))
        for bx, by in batches:
            np.testing.assert_array_equal(bx, x[by])
            assert bx.dtype == np.float32 and by.dtype == y.dtype
        orders.append(idx)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    assert not prefetch_threads()


def test_loader_no_shuffle_and_drop_last():
    x = np.arange(10)
    loader = kd.DataLoader((x,), batch_size=4, drop_last=True)
    assert len(loader) == 2
    np.testing.assert_array_equal(np.concatenate([b[0] for b in loader]), np.arange(8))
    assert len(kd.DataLoader((x,), batch_size=4)) == 3
    assert len(kd.DataLoader((x,), batch_size=10, drop_last=True)) == 1
    assert len(kd.DataLoader((x,), batch_size=11, drop_last=True)) == 0
    assert list(kd.DataLoader((x,), batch_size=11, drop_last=True)) == []
    (b,) = next(iter(kd.DataLoader(x, batch_size=3)))  # a single array is a 1-tuple
    np.testing.assert_array_equal(b, [0, 1, 2])
    b[:] = -1  # batches are copies
    assert x[0] == 0


def test_loader_seed_determinism():
    x = np.arange(50)

    def epochs(seed, prefetch=2):
        loader = kd.DataLoader((x,), batch_size=8, shuffle=True, seed=seed, prefetch=prefetch)
        return [np.concatenate([b[0] for b in loader]) for _ in range(3)]

    a, b, c = epochs(7), epochs(7, prefetch=0), epochs(8)
    for e in range(3):
        np.testing.assert_array_equal(a[e], b[e])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0], a[1])
    # set_epoch replays an epoch
    loader = kd.DataLoader((x,), batch_size=8, shuffle=True, seed=7)
    loader.set_epoch(2)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in loader]), a[2])


def test_loader_transform_gets_rng():
    x = np.zeros((12, 1, 4, 4), np.float32)
    y = np.arange(12)

    def noise(batch, r):
        bx, by = batch
        return bx + r.standard_normal(bx.shape).astype(np.float32), by * 10

    def run(seed):
        return [b for b in kd.DataLoader((x, y), batch_size=5, seed=seed, transform=noise)]

    a, b = run(3), run(3)
    for (ax, ay), (bx, by) in zip(a, b):
        np.testing.assert_array_equal(ax, bx)
        np.testing.assert_array_equal(ay, by)
    assert a[0][1].tolist() == [0, 10, 20, 30, 40]
    assert not np.array_equal(a[0][0], run(4)[0][0])
    assert not np.array_equal(a[0][0], a[1][0][: len(a[0][0])])


def test_loader_prefetch_thread_ends_when_abandoned():
    x = np.arange(1000)
    loader = kd.DataLoader((x,), batch_size=1, prefetch=3)
    it = iter(loader)
    next(it)
    assert len(prefetch_threads()) == 1
    del it  # the generator is finalized: the thread is told to stop and joined
    assert not prefetch_threads()
    for i, _ in enumerate(loader):
        if i == 5:
            break
    assert not prefetch_threads()


def test_loader_transform_error_propagates():
    def bad(batch, r):
        raise RuntimeError("boom in transform")

    loader = kd.DataLoader((np.arange(10),), batch_size=2, transform=bad)
    with pytest.raises(RuntimeError, match="boom in transform"):
        list(loader)
    assert not prefetch_threads()


def test_loader_errors():
    with pytest.raises(kn.Error, match=r"same first dimension, got lengths \[3, 4\]"):
        kd.DataLoader((np.zeros(3), np.zeros(4)))
    with pytest.raises(kn.Error, match="batch_size"):
        kd.DataLoader((np.zeros(3),), batch_size=0)
    with pytest.raises(kn.Error, match="at least one"):
        kd.DataLoader(())
    with pytest.raises(kn.Error, match="tuple"):
        list(kd.DataLoader((np.zeros(3),), transform=lambda b, r: b[0]))


# ---------------------------------------------------------------- preprocessing


def test_mean_image():
    r = rng()
    train = r.integers(0, 256, size=(20, 3, 4, 4), dtype=np.uint8)
    test = r.integers(0, 256, size=(5, 3, 4, 4), dtype=np.uint8)
    m = kd.MeanImage().fit(train)
    out = m.transform(test)
    assert out.dtype == np.float32 and out.shape == test.shape
    np.testing.assert_allclose(out, test - train.mean(axis=0), rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(kd.MeanImage().fit_transform(train).mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(m.inverse_transform(out), test, atol=1e-4)
    with pytest.raises(kn.Error, match="fitted on shape"):
        m.transform(np.zeros((2, 3, 5, 5)))
    with pytest.raises(kn.Error, match="fit"):
        kd.MeanImage().transform(test)


def test_normalize_fitted_and_given():
    r = rng()
    train = r.normal(
        loc=[[[[1.0]], [[-2.0]], [[5.0]]]], scale=[[[[0.5]], [[2.0]], [[3.0]]]], size=(40, 3, 5, 5)
    )
    test = r.normal(size=(6, 3, 5, 5))
    n = kd.Normalize().fit(train)
    np.testing.assert_allclose(n.mean_, train.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(n.std_, train.std(axis=(0, 2, 3)), rtol=1e-5)
    out = n.transform(test)
    assert out.dtype == np.float32
    ref = (test - train.mean(axis=(0, 2, 3))[:, None, None]) / train.std(axis=(0, 2, 3))[:, None, None]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    z = n.fit_transform(train)
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-5)
    np.testing.assert_allclose(n.inverse_transform(z), train, atol=1e-4)

    g = kd.Normalize(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    assert g.fit(train) is g
    np.testing.assert_allclose(
        g.transform(test), (test - [[[0.5]], [[0.25]], [[0.0]]]) / [[[0.5]], [[0.25]], [[2.0]]], rtol=1e-5
    )
    np.testing.assert_allclose(g.mean_, [0.5, 0.25, 0.0])  # fit kept the given values

    flat = r.normal(size=(30, 4)) * [1, 2, 3, 0]  # 2-d data: per feature; a constant feature keeps std 1
    nf = kd.Normalize().fit(flat)
    np.testing.assert_allclose(nf.std_, [*flat[:, :3].std(axis=0), 1.0], rtol=1e-5)
    with pytest.raises(kn.Error, match="channels"):
        n.transform(np.zeros((2, 4, 5, 5)))
    with pytest.raises(kn.Error, match="both mean and std"):
        kd.Normalize(mean=(0.5,))
    with pytest.raises(kn.Error, match="fit"):
        kd.Normalize().transform(test)


def test_pca_against_eigh():
    r = rng()
    basis = r.normal(size=(6, 6))
    X = r.normal(size=(200, 6)) * [5, 3, 2, 1, 0.5, 0.1] @ basis + 3.0
    p = kd.PCA(3).fit(X)
    evals, evecs = np.linalg.eigh(np.cov(X, rowvar=False))
    evals, evecs = evals[::-1], evecs[:, ::-1]
    np.testing.assert_allclose(p.explained_variance_, evals[:3], rtol=1e-5)
    np.testing.assert_allclose(np.abs(np.sum(p.components_ * evecs[:, :3].T, axis=1)), 1, atol=1e-5)
    np.testing.assert_allclose(p.explained_variance_ratio_, evals[:3] / evals.sum(), rtol=1e-5)
    Z = p.transform(X)
    assert Z.dtype == np.float32 and Z.shape == (200, 3)
    np.testing.assert_allclose(Z, (X - X.mean(0)) @ p.components_.T.astype(np.float64), rtol=1e-4, atol=1e-3)
    # against the SVD of the centered data
    _, s, vt = np.linalg.svd(X - X.mean(0), full_matrices=False)
    np.testing.assert_allclose(p.explained_variance_, s[:3] ** 2 / 199, rtol=1e-5)
    np.testing.assert_allclose(np.abs(p.components_), np.abs(vt[:3]), atol=1e-5)
    # all components: inverse_transform reconstructs; k components: the best rank-k approximation
    full = kd.PCA().fit(X)
    np.testing.assert_allclose(full.inverse_transform(full.transform(X)), X, rtol=1e-4, atol=1e-3)
    approx = p.inverse_transform(Z)
    np.testing.assert_allclose(approx, X.mean(0) + (X - X.mean(0)) @ vt[:3].T @ vt[:3], atol=1e-3)


def test_pca_whitening_and_images():
    r = rng(1)
    X = (r.normal(size=(500, 2, 3, 3)).reshape(500, -1) @ r.normal(size=(18, 18))).reshape(500, 2, 3, 3)
    p = kd.PCA(10, whiten=True, eps=1e-8)
    Z = p.fit_transform(X)
    assert Z.shape == (500, 10)
    np.testing.assert_allclose(np.cov(Z, rowvar=False), np.eye(10), atol=1e-4)
    back = p.inverse_transform(Z)
    assert back.shape == (500, 2, 3, 3) and back.dtype == np.float32
    full = kd.PCA(whiten=True, eps=0).fit(X)
    np.testing.assert_allclose(full.inverse_transform(full.transform(X)), X, atol=1e-3)
    # N < D uses the SVD path: same eigenvalues as the covariance
    small = X[:8]
    ps = kd.PCA(5).fit(small)
    ev = np.linalg.eigvalsh(np.cov(small.reshape(8, -1), rowvar=False))[::-1][:5]
    np.testing.assert_allclose(ps.explained_variance_, ev, rtol=1e-4, atol=1e-8)
    with pytest.raises(kn.Error, match="exceeds"):
        kd.PCA(9).fit(small)
    with pytest.raises(kn.Error, match="fitted on shape"):
        p.transform(np.zeros((2, 18)))
    with pytest.raises(kn.Error, match=r"expected shape \(M, 10\)"):
        p.inverse_transform(np.zeros((2, 9)))


# ---------------------------------------------------------------- augmentation


def test_random_crop_matches_padded_slice():
    x = np.arange(6 * 2 * 5 * 7, dtype=np.float32).reshape(6, 2, 5, 7) + 1
    out = kd.random_crop(x, (4, 6), 2, rng())
    assert out.shape == (6, 2, 4, 6) and out.dtype == x.dtype
    xp = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    offsets = set()
    for i in range(6):
        hits = [
            (a, b)
            for a in range(xp.shape[2] - 3)
            for b in range(xp.shape[3] - 5)
            if np.array_equal(out[i], xp[i, :, a : a + 4, b : b + 6])
        ]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 1  # independent offsets per sample
    np.testing.assert_array_equal(kd.random_crop(x, (5, 7), 0, rng()), x)
    # asymmetric padding (left, top, right, bottom) and a fill value
    o = kd.random_crop(x[:1], (5 + 3, 7 + 1), (1, 3, 0, 0), rng(), fill=-1)
    np.testing.assert_array_equal(o[0, :, 3:, 1:], x[0])
    assert (o[0, :, :3] == -1).all() and (o[0, :, :, 0] == -1).all()
    with pytest.raises(kn.Error, match="larger than the padded image"):
        kd.random_crop(x, 10, 1, rng())
    with pytest.raises(kn.Error, match="rng must be a numpy Generator"):
        kd.random_crop(x, 4, 0, 0)
    with pytest.raises(kn.Error, match=r"\(N, C, H, W\)"):
        kd.random_crop(x[0], 4, 0, rng())


def test_horizontal_flip():
    x = rng().normal(size=(16, 3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(kd.horizontal_flip(x, rng(), p=1.0), x[..., ::-1])
    np.testing.assert_array_equal(kd.horizontal_flip(x, rng(), p=0.0), x)
    once = kd.horizontal_flip(x, rng(5))
    flipped = [not np.array_equal(once[i], x[i]) for i in range(16)]
    assert 0 < sum(flipped) < 16
    for i in range(16):
        np.testing.assert_array_equal(once[i], x[i, :, :, ::-1] if flipped[i] else x[i])
    np.testing.assert_array_equal(kd.horizontal_flip(once, rng(5)), x)  # same draws: an involution


def test_resize_and_random_resized_crop():
    x = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)[None, None]
    up = kd.resize(x, 4)
    # PyTorch's interpolate(mode="bilinear", align_corners=False) values
    np.testing.assert_allclose(up[0, 0, 0], [0, 0.25, 0.75, 1])
    np.testing.assert_allclose(up[0, 0, :, 0], [0, 0.5, 1.5, 2])
    np.testing.assert_allclose(
        kd.resize(up, 2), up.reshape(1, 1, 2, 2, 2, 2).mean(axis=(3, 5))
    )  # halving: 2x2 means
    img = rng().random((5, 3, 8, 6)).astype(np.float32)
    np.testing.assert_allclose(kd.resize(img, (8, 6)), img)

    out = kd.random_resized_crop(img, 4, rng=rng())
    assert out.shape == (5, 3, 4, 4) and out.dtype == np.float32
    assert out.min() >= img.min() and out.max() <= img.max()  # convex combinations of pixels
    same = kd.random_resized_crop(img, (8, 6), scale=(1, 1), ratio=(6 / 8, 6 / 8), rng=rng())
    np.testing.assert_allclose(same, img, atol=1e-6)
    # a constant image stays constant
    const = np.full((3, 3, 10, 10), 0.3, np.float32)
    np.testing.assert_allclose(kd.random_resized_crop(const, 7, rng=rng()), 0.3, atol=1e-6)
    u8 = kd.random_resized_crop((img * 255).astype(np.uint8), 4, rng=rng())
    assert u8.dtype == np.float32


def test_color_jitter():
    r = rng()
    x = r.random((8, 3, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(kd.color_jitter(x, rng=r), x)
    b = kd.color_jitter(x, brightness=(1.5, 1.5), rng=r)
    np.testing.assert_allclose(b, np.clip(x * 1.5, 0, 1), rtol=1e-6)
    gray = 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    s = kd.color_jitter(x, saturation=(0, 0), rng=r)
    np.testing.assert_allclose(s, np.repeat(gray[:, None], 3, 1), rtol=1e-5)
    c = kd.color_jitter(x, contrast=(0, 0), rng=r)
    np.testing.assert_allclose(
        c, np.broadcast_to(gray.mean(axis=(1, 2))[:, None, None, None], x.shape), rtol=1e-5
    )
    j = kd.color_jitter(x, 0.8, 0.8, 0.8, rng=r)
    assert j.shape == x.shape and j.dtype == np.float32 and j.min() >= 0 and j.max() <= 1
    assert not np.allclose(j, x)
    # any-range data: brightness scales about the lower level of value_range, or 0 without clipping
    np.testing.assert_allclose(
        kd.color_jitter(x * 255, brightness=(2, 2), rng=r, value_range=(0, 255)),
        np.clip(x * 510, 0, 255),
        rtol=1e-5,
    )
    z = x * 4 - 2
    np.testing.assert_allclose(
        kd.color_jitter(z, brightness=(2, 2), rng=r, value_range=None), z * 2, rtol=1e-6
    )
    # one channel: saturation does nothing
    np.testing.assert_array_equal(kd.color_jitter(x[:, :1], saturation=(0, 0), rng=r), x[:, :1])
    with pytest.raises(kn.Error, match="brightness"):
        kd.color_jitter(x, brightness=-1, rng=r)


def test_cutout():
    x = np.ones((20, 2, 8, 8), np.float32)
    out = kd.cutout(x, 4, rng())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert (x == 1).all()  # input untouched
    for i in range(20):
        zero = out[i, 0] == 0
        assert (out[i, 1] == out[i, 0]).all()
        rows, cols = np.nonzero(zero.any(axis=1))[0], np.nonzero(zero.any(axis=0))[0]
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4
        assert zero.sum() == len(rows) * len(cols)  # a (clipped) rectangle
        assert zero[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    assert (out == 0).sum(axis=(1, 2, 3)).max() == 2 * 16  # some square fully inside


def test_mixup_convexity():
    n = 10
    x = np.eye(n, dtype=np.float32).reshape(n, 1, 2, 5)  # sample i is the basis vector e_i
    y = np.arange(n)
    xm, ym = kd.mixup(x, y, 0.4, rng(), num_classes=n)
    assert xm.shape == x.shape and ym.shape == (n, n) and xm.dtype == ym.dtype == np.float32
    flat = xm.reshape(n, n)
    np.testing.assert_allclose(flat.sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(ym.sum(1), 1, rtol=1e-6)
    assert (flat >= 0).all() and (ym >= 0).all()
    np.testing.assert_allclose(flat, ym, rtol=1e-6)  # same weight and partner for images and targets
    lam = flat[np.arange(n), np.arange(n)]
    # each row mixes itself (weight lam, or 1 if paired with itself) and one partner
    assert all(np.count_nonzero(row) <= 2 for row in flat)
    assert np.allclose(lam[np.count_nonzero(flat, axis=1) == 2], lam[np.count_nonzero(flat, axis=1) == 2][0])
    # one-hot input gives the same; alpha=0 leaves the batch unchanged
    xm2, ym2 = kd.mixup(x, np.eye(n)[y], 0.4, rng())
    np.testing.assert_allclose(ym2, ym)
    x0, y0 = kd.mixup(x, y, 0, rng(), num_classes=n)
    np.testing.assert_array_equal(x0, x)
    with pytest.raises(kn.Error, match="num_classes"):
        kd.mixup(x, y, 1.0, rng())
    with pytest.raises(kn.Error, match=r"0\.\.4"):
        kd.mixup(x, y, 1.0, rng(), num_classes=5)


def test_compose_in_loader():
    r = rng()
    x = r.integers(0, 256, size=(40, 3, 8, 8), dtype=np.uint8)
    y = r.integers(0, 10, size=40)
    norm = kd.Normalize(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    t = kd.Compose(
        [
            lambda b, g: b.astype(np.float32) / 255,
            kd.RandomCrop(8, padding=2),
            kd.RandomHorizontalFlip(),
            kd.ColorJitter(0.2, 0.2, 0.2),
            kd.RandomResizedCrop(6, scale=(0.5, 1)),
            kd.Cutout(2),
            norm,
            kd.MixUp(alpha=0.2, num_classes=10),
        ]
    )
    assert "RandomCrop" in repr(t)

    def run():
        return list(kd.DataLoader((x, y), batch_size=16, shuffle=True, seed=3, transform=t))

    a, b = run(), run()
    assert [bx.shape for bx, _ in a] == [(16, 3, 6, 6), (16, 3, 6, 6), (8, 3, 6, 6)]
    assert all(by.shape == (len(bx), 10) and bx.dtype == np.float32 for bx, by in a)
    for (ax, ay), (bx, by) in zip(a, b):
        np.testing.assert_array_equal(ax, bx)
        np.testing.assert_array_equal(ay, by)
    single = kd.Compose([kd.RandomHorizontalFlip(p=1.0)])(x.astype(np.float32), rng())
    np.testing.assert_array_equal(single, x[..., ::-1])
    with pytest.raises(kn.Error, match="MixUp"):
        kd.Compose([kd.MixUp(num_classes=10)])(x, rng())


# ---------------------------------------------------------------- real data in ../shared/data

MNIST_DIR = DATA_DIR / "mnist"
CIFAR_JPG = DATA_DIR / "cifar10" / "cifar10-jpg.tar.gz"


@pytest.mark.skipif(
    not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists(), reason=f"no MNIST in {MNIST_DIR}"
)
def test_real_mnist():
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = kd.load_mnist(MNIST_DIR, split)
        assert x.shape == (n, 28, 28) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64
        counts = np.bincount(y, minlength=10)
        assert len(counts) == 10 and counts.sum() == n and counts.min() > n // 20
    assert x.max() == 255 and x.min() == 0


@pytest.mark.skipif(not CIFAR_JPG.exists(), reason=f"no CIFAR-10 archive at {CIFAR_JPG}")
def test_real_cifar10_jpg():
    x, y = kd.load_cifar10_jpg(CIFAR_JPG, "train")  # decoded once, then read from the cache
    assert x.shape == (50000, 3, 32, 32) and x.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(y), [5000] * 10)
    means = x.mean(axis=(0, 2, 3), dtype=np.float64) / 255
    np.testing.assert_allclose(means, [0.4912, 0.4821, 0.4465], atol=6e-4)
    xt, yt = kd.load_cifar10_jpg(CIFAR_JPG, "test")
    assert xt.shape == (10000, 3, 32, 32)
    np.testing.assert_array_equal(np.bincount(yt), [1000] * 10)
