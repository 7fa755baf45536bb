"""Tests of resalign.data: real bundled data, and small files written on the fly."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from resalign import data as rd
from resalign.data import DATASETS, Dataset, load_dataset, validate_dataset_args

IDX_STEMS = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


# --------------------------------------------------------------------------
# Helpers writing tiny dataset files
# --------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def fake_idx_arrays(n_train: int = 30, n_test: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }


def write_idx_set(folder: Path, gz: bool) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = fake_idx_arrays()
    for key, stem in IDX_STEMS.items():
        payload = idx_bytes(arrays[key])
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / stem).write_bytes(payload)
    return arrays


def cifar_batch(n: int, label_key: str, num_classes: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in np.arange(n) % num_classes],
        "batch_label": "fake",
    }


def write_cifar(root: Path, name: str, bytes_keys: bool = False) -> dict:
    """Write tiny CIFAR batches under ``root``; return them by file name."""
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        label_key, num_classes = "labels", 10
    else:
        folder = root / "cifar-100-python"
        files, label_key, num_classes = ["train", "test"], "fine_labels", 100
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, f in enumerate(files):
        n = 120 if name == "cifar100" and f == "train" else 12
        batch = cifar_batch(n, label_key, num_classes, seed=i)
        batches[f] = batch
        stored = {k.encode(): v for k, v in batch.items()} if bytes_keys else batch
        (folder / f).write_bytes(pickle.dumps(stored, protocol=2))
    return batches


@pytest.fixture(autouse=True)
def no_debian(monkeypatch, tmp_path):
    """Hide the Debian Fashion-MNIST folder unless a test asks for it."""
    monkeypatch.setattr(rd, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")


# --------------------------------------------------------------------------
# Bundled data: digits and mnist5k
# --------------------------------------------------------------------------


def check_tensors(d: Dataset, shape: tuple[int, int, int]) -> None:
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        assert x.dtype == torch.float32 and x.shape[1:] == shape
        assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert 0 <= y.min() and y.max() < d.num_classes
        assert x.is_contiguous()
    assert d.input_shape == shape
    assert d.input_dim == int(np.prod(shape))


def test_digits_shapes_and_split():
    d = load_dataset("digits")
    check_tensors(d, (1, 8, 8))
    assert d.num_classes == 10 and d.classes == tuple(range(10))
    assert d.n_train + d.n_test == 1797
    assert d.x_train.max() == 1.0
    totals = torch.bincount(d.y_train) + torch.bincount(d.y_test)
    expected_test = torch.round(totals * 0.2).long()
    assert torch.equal(torch.bincount(d.y_test), expected_test)


def test_mnist5k_shapes_and_split():
    d = load_dataset("mnist5k")
    check_tensors(d, (1, 28, 28))
    assert torch.equal(torch.bincount(d.y_train), torch.full((10,), 400))
    assert torch.equal(torch.bincount(d.y_test), torch.full((10,), 100))
    assert d.x_train.max() == 1.0


def test_split_does_not_depend_on_seed():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=5)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_test, b.y_test)


def test_returned_tensors_are_copies():
    d = load_dataset("digits")
    d.x_train.zero_()
    assert load_dataset("digits").x_train.max() == 1.0


def test_int_classes_keeps_first_classes():
    full, d = load_dataset("digits"), load_dataset("digits", classes=3)
    assert d.num_classes == 3 and d.classes == (0, 1, 2)
    assert torch.equal(torch.bincount(d.y_train), torch.bincount(full.y_train)[:3])
    assert torch.equal(d.x_train, full.x_train[full.y_train < 3])


def test_class_list_relabels_in_given_order():
    full, d = load_dataset("digits"), load_dataset("digits", classes=[7, 2])
    assert d.classes == (7, 2) and d.num_classes == 2
    for new, old in enumerate((7, 2)):
        assert torch.equal(
            d.x_train[d.y_train == new], full.x_train[full.y_train == old]
        )
        assert torch.equal(d.x_test[d.y_test == new], full.x_test[full.y_test == old])


def test_per_class_is_balanced_and_seeded():
    d = load_dataset("mnist5k", classes=[3, 5, 9], per_class=7, test_per_class=4)
    assert torch.equal(torch.bincount(d.y_train), torch.full((3,), 7))
    assert torch.equal(torch.bincount(d.y_test), torch.full((3,), 4))
    again = load_dataset("mnist5k", classes=[3, 5, 9], per_class=7, test_per_class=4)
    assert torch.equal(d.x_train, again.x_train) and torch.equal(d.x_test, again.x_test)
    other = load_dataset(
        "mnist5k", classes=[3, 5, 9], per_class=7, test_per_class=4, seed=1
    )
    assert not torch.equal(d.x_train, other.x_train)
    # the chosen images really belong to their class
    full = load_dataset("mnist5k")
    pool = {bytes(x.numpy()) for x in full.x_train[full.y_train == 5]}
    assert all(bytes(x.numpy()) in pool for x in d.x_train[d.y_train == 1])


def test_per_class_larger_than_class_fails():
    with pytest.raises(ValueError, match="only 400 train examples"):
        load_dataset("mnist5k", per_class=401)


def test_random_labels_only_touch_train_labels():
    kw = dict(classes=4, per_class=50, test_per_class=10, seed=3)
    true, noisy = (
        load_dataset("mnist5k", **kw),
        load_dataset("mnist5k", random_labels=True, **kw),
    )
    assert torch.equal(true.x_train, noisy.x_train)
    assert torch.equal(true.y_test, noisy.y_test)
    assert (true.y_train != noisy.y_train).float().mean() > 0.5
    assert set(noisy.y_train.tolist()) == {0, 1, 2, 3}
    same = load_dataset("mnist5k", random_labels=True, **kw)
    assert torch.equal(noisy.y_train, same.y_train)
    kw["seed"] = 4
    other = load_dataset("mnist5k", random_labels=True, **kw)
    assert not torch.equal(noisy.y_train[:50], other.y_train[:50])


def test_dataset_is_frozen_and_has_short_repr():
    d = load_dataset("digits", classes=2, per_class=3)
    with pytest.raises(AttributeError):
        d.num_classes = 5  # type: ignore[misc]
    assert "tensor" not in repr(d) and "digits" in repr(d)


def test_loads_are_cached():
    load_dataset("digits")
    hits = rd._load_raw.cache_info().hits
    load_dataset("digits", classes=2)
    assert rd._load_raw.cache_info().hits == hits + 1


# --------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------

BAD_ARGS = [
    (dict(name="mnst"), "valid names are: 'digits', 'mnist5k', 'mnist'"),
    (dict(name="digits", classes=0), "has 10 classes"),
    (dict(name="digits", classes=11), r"in 1\.\.10"),
    (dict(name="cifar100", classes=101), "has 100 classes"),
    (dict(name="digits", classes=[1, 4, 1]), r"duplicate ids \[1\]"),
    (dict(name="digits", classes=[3, 10]), r"valid ids are 0\.\.9"),
    (dict(name="digits", classes=[-1]), r"valid ids are 0\.\.9"),
    (dict(name="digits", classes=[]), r"at least one of 0\.\.9"),
    (dict(name="digits", classes="01"), "sequence of class ids"),
    (dict(name="digits", classes=[1.5]), "must be an integer"),
    (dict(name="digits", per_class=0), "per_class must be a positive integer"),
    (dict(name="digits", per_class=-3), "per_class must be a positive integer"),
    (dict(name="digits", per_class=2.5), "per_class must be an integer"),
    (dict(name="digits", per_class=True), "per_class must be an integer"),
    (dict(name="digits", test_per_class=0), "test_per_class must be a positive"),
]


@pytest.mark.parametrize("kwargs, message", BAD_ARGS)
def test_bad_arguments_fail_before_loading(monkeypatch, kwargs, message):
    def boom(*args, **kw):
        raise AssertionError("loading started before validation")

    monkeypatch.setattr(rd, "_load_raw", boom)
    monkeypatch.setattr(rd, "_ensure_files", boom)
    with pytest.raises(ValueError, match=message):
        validate_dataset_args(**kwargs)
    kwargs = dict(kwargs)
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message):
        load_dataset(name, **kwargs)


def test_good_arguments_validate():
    for name in DATASETS:
        validate_dataset_args(name, classes=[1, 0], per_class=5, test_per_class=1)
    validate_dataset_args("cifar100", classes=np.arange(100))
    validate_dataset_args("digits", classes=np.int64(3))


def test_negative_seed_fails():
    with pytest.raises(ValueError, match="seed"):
        load_dataset("digits", seed=-1)


# --------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, subdir, gz",
    [
        ("mnist", "mnist", True),
        ("mnist", "mnist", False),
        ("mnist", "MNIST/raw", True),
        ("fashion-mnist", "fashion-mnist", False),
        ("fashion-mnist", "FashionMNIST/raw", True),
    ],
)
def test_idx_layouts(tmp_path, name, subdir, gz):
    arrays = write_idx_set(tmp_path / subdir, gz=gz)
    d = load_dataset(name, root=tmp_path)
    check_tensors(d, (1, 28, 28))
    assert torch.equal(d.y_train, torch.from_numpy(arrays["y_train"]).long())
    assert torch.equal(d.y_test, torch.from_numpy(arrays["y_test"]).long())
    expected = torch.from_numpy(arrays["x_test"]).float()[:, None] / 255
    assert torch.allclose(d.x_test, expected)
    sub = load_dataset(name, root=tmp_path, classes=[4, 1], per_class=2)
    assert torch.equal(torch.bincount(sub.y_train), torch.tensor([2, 2]))
    assert torch.equal(torch.bincount(sub.y_test), torch.tensor([2, 2]))


def test_root_from_environment(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "mnist", gz=True)
    monkeypatch.setenv("RESALIGN_DATA", str(tmp_path))
    assert rd.default_root() == tmp_path
    assert load_dataset("mnist").n_train == 30


def test_default_root_is_repository_data(monkeypatch):
    monkeypatch.delenv("RESALIGN_DATA", raising=False)
    assert rd.default_root() == Path(rd.__file__).resolve().parent.parent / "data"


def corrupt(folder: Path, how: str) -> Path:
    path = folder / "t10k-images-idx3-ubyte"
    payload = path.read_bytes()
    if how == "magic":
        path.write_bytes(b"\x12\x34" + payload[2:])
    elif how == "truncated":
        path.write_bytes(payload[:-100])
    elif how == "extra":
        path.write_bytes(payload + b"\x00")
    elif how == "gzip":
        path.unlink()
        path = folder / "t10k-images-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(payload)[:-50])
    return path


@pytest.mark.parametrize(
    "how, message",
    [
        ("magic", "bad magic number"),
        ("truncated", "truncated or corrupt"),
        ("extra", "truncated or corrupt"),
        ("gzip", "corrupt or truncated gzip"),
    ],
)
def test_corrupt_idx_file(tmp_path, how, message):
    write_idx_set(tmp_path / "mnist", gz=False)
    path = corrupt(tmp_path / "mnist", how)
    with pytest.raises(ValueError, match=message) as info:
        load_dataset("mnist", root=tmp_path)
    assert str(path) in str(info.value)


def test_idx_with_wrong_image_size(tmp_path):
    folder = tmp_path / "mnist"
    write_idx_set(folder, gz=False)
    bad = np.zeros((20, 27, 28), np.uint8)
    (folder / IDX_STEMS["x_test"]).write_bytes(idx_bytes(bad))
    with pytest.raises(ValueError, match=r"shape \(N, 28, 28\)"):
        load_dataset("mnist", root=tmp_path)


def test_idx_label_count_mismatch(tmp_path):
    folder = tmp_path / "mnist"
    write_idx_set(folder, gz=False)
    (folder / IDX_STEMS["y_test"]).write_bytes(idx_bytes(np.zeros(19, np.uint8)))
    with pytest.raises(ValueError, match="expected 20 labels"):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.skipif(
    not (
        Path("/usr/share/datasets/fashion-mnist") / "t10k-images-idx3-ubyte.gz"
    ).is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_debian_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(
        rd, "DEBIAN_FASHION_MNIST", Path("/usr/share/datasets/fashion-mnist")
    )
    d = load_dataset("fashion-mnist", root=tmp_path / "empty")
    check_tensors(d, (1, 28, 28))
    assert (d.n_train, d.n_test) == (60000, 10000)
    assert torch.equal(torch.bincount(d.y_train), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(d.y_test), torch.full((10,), 1000))


# --------------------------------------------------------------------------
# CIFAR pickles
# --------------------------------------------------------------------------


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar10_reader(tmp_path, bytes_keys):
    batches = write_cifar(tmp_path, "cifar10", bytes_keys=bytes_keys)
    d = load_dataset("cifar10", root=tmp_path)
    check_tensors(d, (3, 32, 32))
    assert (d.n_train, d.n_test) == (60, 12)
    first = batches["data_batch_1"]["data"][0]
    expected = torch.from_numpy(first.reshape(3, 32, 32)).float() / 255
    assert torch.allclose(d.x_train[0], expected)
    # the green channel of the first image is the second third of its row
    assert torch.allclose(
        d.x_train[0, 1].flatten() * 255, torch.tensor(first[1024:2048]).float()
    )
    labels = [lab for f in sorted(batches)[:5] for lab in batches[f]["labels"]]
    assert d.y_train.tolist() == labels
    assert d.y_test.tolist() == batches["test_batch"]["labels"]


def test_cifar100_reader_uses_fine_labels(tmp_path):
    batches = write_cifar(tmp_path, "cifar100")
    d = load_dataset("cifar100", root=tmp_path, classes=[42, 7])
    assert d.num_classes == 2 and d.classes == (42, 7)
    # the train file holds class c at rows c and c + 100: rows 7, 42, 107 here
    assert d.y_train.tolist() == [1, 0, 1]
    row = torch.tensor(batches["train"]["data"][42]).float().view(3, 32, 32)
    assert torch.allclose(d.x_train[1] * 255, row)
    full = load_dataset("cifar100", root=tmp_path)
    assert full.num_classes == 100 and full.n_train == 120


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_pickle_with_foreign_objects_is_refused(tmp_path):
    write_cifar(tmp_path, "cifar100")
    bad = {"data": np.zeros((1, 3072), np.uint8), "fine_labels": [_Evil()]}
    (tmp_path / "cifar-100-python" / "test").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match="refusing to load"):
        load_dataset("cifar100", root=tmp_path)


def test_cifar_batch_with_wrong_shape(tmp_path):
    write_cifar(tmp_path, "cifar10")
    bad = {"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match=r"shape \(N, 3072\)"):
        load_dataset("cifar10", root=tmp_path)


# --------------------------------------------------------------------------
# Missing files and downloads
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, folder",
    [
        ("mnist", "mnist"),
        ("fashion-mnist", "fashion-mnist"),
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
    ],
)
def test_missing_files_offline(tmp_path, name, folder):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset(name, root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / folder) in message
    assert "folder does not exist" in message
    assert "download=True" in message


def test_missing_files_lists_what_lacks(tmp_path):
    write_idx_set(tmp_path / "mnist", gz=True)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"missing: t10k-labels-idx1-ubyte\[\.gz\]"
    ):
        load_dataset("mnist", root=tmp_path)


@pytest.fixture
def fake_download(monkeypatch):
    """Replace torchvision's network fetch by one that writes tiny files."""
    tv_utils = pytest.importorskip("torchvision.datasets.utils")
    calls: list[tuple[str, str | None]] = []

    def download_url(url, root, filename=None, md5=None, max_redirect_hops=3):
        calls.append((url, md5))
        if "yann.lecun" not in url and "mnist" in url and "fashion" not in url:
            raise urllib.error.URLError("mirror down")  # first MNIST mirror
        filename = filename or os.path.basename(url)
        target = Path(root) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        if filename.endswith(".tar.gz"):
            target.write_bytes(fake_cifar_tarball(filename))
        else:
            key = next(k for k, stem in IDX_STEMS.items() if filename.startswith(stem))
            target.write_bytes(gzip.compress(idx_bytes(fake_idx_arrays()[key])))

    monkeypatch.setattr(tv_utils, "download_url", download_url)
    return calls


def fake_cifar_tarball(filename: str) -> bytes:
    name = "cifar10" if "cifar-10-" in filename else "cifar100"
    staging = Path(f"/tmp/resalign-test-{os.getpid()}-{name}")
    write_cifar(staging, name)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(staging.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(staging)), recursive=False)
    for path in sorted(staging.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    staging.rmdir()
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_download_idx(tmp_path, fake_download, name):
    d = load_dataset(name, root=tmp_path, download=True)
    assert (d.n_train, d.n_test) == (30, 20)
    folder = tmp_path / name
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{s}.gz" for s in IDX_STEMS.values()
    )
    assert all(md5 for _, md5 in fake_download)  # checksums are always passed
    if name == "mnist":  # the first mirror failed, the second one was used
        assert any("yann.lecun" in url for url, _ in fake_download)
    # files present: no second download
    count = len(fake_download)
    load_dataset(name, root=tmp_path, download=True, classes=2)
    assert len(fake_download) == count


@pytest.mark.parametrize(
    "name, folder",
    [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")],
)
def test_download_cifar(tmp_path, fake_download, name, folder):
    d = load_dataset(name, root=tmp_path, download=True)
    check_tensors(d, (3, 32, 32))
    assert (tmp_path / folder).is_dir()
    assert not list(tmp_path.glob("*.tar.gz"))  # the archive is removed
    ((url, md5),) = fake_download
    assert url.endswith(".tar.gz") and md5


def test_download_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    tv_utils = pytest.importorskip("torchvision.datasets.utils")

    def download_url(url, root, filename=None, md5=None, max_redirect_hops=3):
        Path(root).mkdir(parents=True, exist_ok=True)
        Path(root, filename).write_bytes(b"half a file")
        raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(tv_utils, "download_url", download_url)
    with pytest.raises(RuntimeError, match="could not download"):
        load_dataset("fashion-mnist", root=tmp_path, download=True)
    assert not list((tmp_path / "fashion-mnist").iterdir())
