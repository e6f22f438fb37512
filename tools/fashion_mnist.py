"""Fashion-MNIST loader (numpy only): the four idx files, as uint8 arrays.

    images, labels = load("train")   # [60000, 28, 28] uint8, [60000] int64
    images, labels = load("test")    # [10000, 28, 28] uint8, [10000] int64

The files are looked for in $FASHION_MNIST_DIR, then
/usr/share/datasets/fashion-mnist (gzip or plain). Pixels are 0 (background)
to 255; CLASSES[label] is the class name.
"""
import gzip
import os

import numpy as np

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _open(path):
    if os.path.exists(path + ".gz"):
        return gzip.open(path + ".gz", "rb")
    return open(path, "rb")


def _read_idx(path, want_dims):
    """One idx file -> ndarray (big-endian header: magic 0x0000 08 ndim, dims)."""
    with _open(path) as f:
        data = f.read()
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    ndim = data[3]
    if ndim != want_dims:
        raise ValueError(f"{path}: {ndim} dimensions, expected {want_dims}")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {body.size} bytes of data, header says {dims}")
    return body.reshape(dims)


def load(split, root=None):
    """split 'train' or 'test' -> (images [N, 28, 28] uint8, labels [N] int64)."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    root = root or os.environ.get("FASHION_MNIST_DIR") or DEFAULT_DIR
    img_name, lab_name = _FILES[split]
    images = _read_idx(os.path.join(root, img_name), 3).copy()
    labels = _read_idx(os.path.join(root, lab_name), 1).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


if __name__ == "__main__":
    for s in ("train", "test"):
        x, y = load(s)
        print(s, x.shape, x.dtype, y.shape, np.bincount(y).tolist())
