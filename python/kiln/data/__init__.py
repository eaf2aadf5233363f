"""kiln.data: dataset readers (MNIST, CIFAR-10, image folders), a DataLoader, preprocessing fitted
on training data, and batch augmentations. Everything reads local files; nothing is downloaded.

    import kiln.data as kd
    x, y = kd.load_cifar10_jpg("../shared/data/cifar10/cifar10-jpg.tar.gz", "train")
    for xb, yb in kd.DataLoader((x, y), batch_size=128, shuffle=True, seed=0):
        ...
"""

from .augment import (
    ColorJitter,
    Compose,
    Cutout,
    MixUp,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    color_jitter,
    cutout,
    horizontal_flip,
    mixup,
    random_crop,
    random_resized_crop,
    resize,
)
from .cifar import CIFAR10_CLASSES, load_cifar10
from .folder import IMG_EXTENSIONS, cache_dir, load_cifar10_jpg, load_image_folder
from .loader import DataLoader
from .mnist import load_mnist, read_idx
from .preprocess import PCA, MeanImage, Normalize

__all__ = [
    "CIFAR10_CLASSES",
    "IMG_EXTENSIONS",
    "PCA",
    "ColorJitter",
    "Compose",
    "Cutout",
    "DataLoader",
    "MeanImage",
    "MixUp",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "cache_dir",
    "color_jitter",
    "cutout",
    "horizontal_flip",
    "load_cifar10",
    "load_cifar10_jpg",
    "load_image_folder",
    "load_mnist",
    "mixup",
    "random_crop",
    "random_resized_crop",
    "read_idx",
    "resize",
]
