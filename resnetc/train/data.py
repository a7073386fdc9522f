"""Datasets for `resnetc train`: an `.npz` of images and labels, checked before it is trusted.

The file holds `x_train` (N, C, H, W; uint8 or float) and `y_train` (N,; integer labels), optionally
`x_test` and `y_test`. Nothing in it is executed (`allow_pickle=False`), and each member's declared size
is compared with what the machine has before a byte of it is read.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnetc.core.errors import UsageError
from resnetc.weights.arrays import available_memory

KEYS = ("x_train", "y_train", "x_test", "y_test")
MAX_CLASSES = 1_000_000  # a classifier head this wide is already 2 GB at 512 features


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # float32 (N, C, H, W), normalised per channel with the training split's statistics
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    train: Split
    test: Split | None
    mean: tuple[float, ...]  # per channel, of the training images scaled to [0, 1] (uint8) or as given
    std: tuple[float, ...]
    num_classes: int  # the largest label + 1, over both splits
    scale: float = 1.0  # what the stored pixels were multiplied by before the mean and std: 1/255 for uint8

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]


def _open(path: Path) -> np.lib.npyio.NpzFile:
    if not path.is_file():
        raise UsageError(f"{path}: no such dataset file (an .npz holding x_train and y_train)")
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(member.file_size for member in archive.infolist())
            members = _headers(path, archive)
    except (zipfile.BadZipFile, OSError, EOFError):
        raise UsageError(
            f"{path}: not an .npz file (save one with numpy.savez(path, x_train=..., y_train=...))"
        ) from None
    # Decoded to float32, uint8 images take four times their size; half the free memory is the limit.
    budget = available_memory() // 2
    if declared * 4 > budget:
        raise UsageError(
            f"{path}: its arrays declare {declared / 2**30:.2f} GiB, which as float32 is more than half of "
            f"this machine's free memory ({budget / 2**30:.1f} GiB)"
        )
    for member in members:
        _check_header(path, member)
    return np.load(path, allow_pickle=False)


def _check_header(path: Path, member: tuple[str, int, np.dtype, tuple[int, ...]]) -> None:
    """An array's own header (its dtype and shape) must agree with the bytes the archive holds for it: a
    header that declares 71 GiB inside a small file is refused before numpy allocates anything."""
    name, stored, dtype, shape = member
    declared = math.prod(shape) * dtype.itemsize
    if dtype.hasobject or declared > stored:
        raise UsageError(
            f"{path}: {name} declares a {dtype} array of shape {list(shape)} ({declared:,} bytes) but holds "
            f"{stored:,} bytes (pickled objects are refused)"
        )


def _headers(path: Path, archive: zipfile.ZipFile) -> list[tuple[str, int, np.dtype, tuple[int, ...]]]:
    """Each .npy member's name (without `.npy`), stored data size, and the dtype and shape its header says."""
    headers = []
    for info in archive.infolist():
        try:
            with archive.open(info) as handle:
                version = np.lib.format.read_magic(handle)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(handle)
                stored = info.file_size - handle.tell()
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, TypeError, SyntaxError):
            raise UsageError(f"{path}: {info.filename} is not a plain .npy array (pickles are refused)") from None
        headers.append((info.filename.removesuffix(".npy"), stored, dtype, tuple(shape)))
    return headers


def _array(archive: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray:
    try:
        return archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, TypeError):
        raise UsageError(f"{path}: {key} is not a plain array of numbers (pickled objects are refused)") from None


def _split(archive: np.lib.npyio.NpzFile, path: Path, suffix: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Images as float32 (uint8 ones scaled to [0, 1]), labels as int64, and the scale applied."""
    images, labels = _array(archive, path, f"x_{suffix}"), _array(archive, path, f"y_{suffix}")
    if images.ndim != 4 or 0 in images.shape:
        raise UsageError(f"{path}: x_{suffix} has shape {list(images.shape)}; it must be (N, C, H, W) with N >= 1")
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise UsageError(f"{path}: x_{suffix} has dtype {images.dtype}; images are uint8 or floating point")
    if labels.ndim != 1 or len(labels) != len(images):
        raise UsageError(
            f"{path}: y_{suffix} has shape {list(labels.shape)}; it must be ({len(images)},), one label per image"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise UsageError(f"{path}: y_{suffix} has dtype {labels.dtype}; labels are integers 0, 1, ...")
    smallest, largest = int(labels.min()), int(labels.max())  # Python ints: uint64 labels do not wrap
    if smallest < 0 or largest >= MAX_CLASSES:
        wrong = smallest if smallest < 0 else largest
        raise UsageError(
            f"{path}: y_{suffix} holds the label {wrong}; labels are 0, 1, ..., classes - 1 "
            f"(at most {MAX_CLASSES:,} classes)"
        )
    scale = 1 / 255 if images.dtype == np.uint8 else 1.0
    scaled = images.astype(np.float32) / 255 if images.dtype == np.uint8 else images.astype(np.float32)
    if not np.all(np.isfinite(scaled)):
        raise UsageError(f"{path}: x_{suffix} holds NaN or infinite values (or values too large for float32)")
    return scaled, labels.astype(np.int64), scale


def read_dataset(path: str | Path) -> Dataset:
    """The dataset, normalised per channel with the training images' mean and standard deviation."""
    path = Path(path)
    with _open(path) as archive:
        present = set(archive.files)
        unknown = sorted(present - set(KEYS))
        if unknown or not {"x_train", "y_train"} <= present or ("x_test" in present) != ("y_test" in present):
            raise UsageError(
                f"{path}: holds {', '.join(sorted(present)) or 'no arrays'}; a dataset holds x_train and y_train, "
                "and optionally x_test with y_test"
            )
        x_train, y_train, scale = _split(archive, path, "train")
        x_test, y_test, _ = _split(archive, path, "test") if "x_test" in present else (None, None, None)
    if x_test is not None and x_test.shape[1:] != x_train.shape[1:]:
        raise UsageError(f"{path}: x_test images are {list(x_test.shape[1:])}, x_train's {list(x_train.shape[1:])}")
    mean = x_train.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x_train.std(axis=(0, 2, 3), dtype=np.float64)
    std = np.where(std > 1e-12, std, 1.0)  # a constant channel is left unscaled, not divided by zero

    def normalise(images: np.ndarray) -> np.ndarray:
        return ((images - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)

    classes = int(max(y_train.max(), y_test.max() if y_test is not None else 0)) + 1
    return Dataset(
        train=Split(normalise(x_train), y_train),
        test=Split(normalise(x_test), y_test) if x_test is not None else None,
        mean=tuple(float(value) for value in mean),
        std=tuple(float(value) for value in std),
        num_classes=classes,
        scale=scale,
    )


def digits(size: int = 16, test_fraction: float = 0.2, seed: int = 0) -> dict[str, np.ndarray]:
    """scikit-learn's `load_digits` (1,797 8x8 grey images of handwritten digits, shipped inside the
    package: no download) as a dataset: upsampled to `size` x `size` by nearest neighbour, uint8, with
    a seeded, stratified-by-shuffle train/test split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UsageError("the digits dataset needs scikit-learn: pip install 'resnetc[experiment]'") from None
    if size % 8:
        raise UsageError(f"--size must be a multiple of 8 (the digits are 8x8), got {size}")
    bunch = load_digits()
    images = (bunch.images / 16 * 255).round().astype(np.uint8)  # the pixels are 0..16
    images = images.repeat(size // 8, axis=1).repeat(size // 8, axis=2)[:, None]
    order = np.random.default_rng(seed).permutation(len(images))
    cut = round(len(images) * (1 - test_fraction))
    train, test = order[:cut], order[cut:]
    labels = bunch.target.astype(np.int64)
    return {"x_train": images[train], "y_train": labels[train], "x_test": images[test], "y_test": labels[test]}
