"""A store of trained models: configuration in, trained model out.

Each entry is keyed by a hash of its :class:`Config` and of the library
versions that produced it, and consists of two files in the store folder:

- ``<key>.pt``: the model's ``state_dict`` and the training history, loaded
  with ``torch.load(..., weights_only=True)``;
- ``<key>.json``: the configuration, versions, SHA-256 of the ``.pt`` file,
  training time and the command that remakes the entry.

Results computed from a configuration that are worth keeping (for example
the measurements taken during training, :mod:`resalign.dynamics`) live in
``results/<key>-<name>.json`` with the SHA-256 of their data.

All files are written atomically (temporary file, then rename), the ``.pt`` first,
so a killed run leaves either a complete entry or none. Reading verifies the
checksum; a truncated or corrupted entry is reported and rebuilt, never used.

The book ships the entries of its default models in ``data/store`` (git);
``python -m resalign store remake --all`` retrains every one of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import data as _data
from .models import MODELS, build_model
from .training import History, resolve_device, train

__all__ = ["Config", "Store", "Trained", "default_store", "trained"]

STORE_FORMAT = 1
DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "data" / "store"


@dataclass(frozen=True)
class Config:
    """Everything that determines a trained model.

    Training length is given by exactly one of ``epochs`` and ``steps`` (SGD
    steps; converted to whole epochs). Fields mirror the arguments of
    :func:`resalign.data.load_dataset`, the model classes and
    :func:`resalign.training.train`.
    """

    dataset: str = "mnist5k"
    classes: int | tuple[int, ...] | None = None
    per_class: int | None = None
    random_labels: bool = False
    model: str = "fc"
    width: int = 64
    depth: int = 8
    skip: bool = True
    downsample: bool = False
    drop_prob: float = 0.0
    epochs: int | None = None
    steps: int | None = 12_800
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 1e-2
    momentum: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.classes, list):
            object.__setattr__(self, "classes", tuple(self.classes))
        self.validate()
        if self.classes == _data.num_classes_of(self.dataset):
            object.__setattr__(self, "classes", None)  # all classes: one key

    @classmethod
    def from_chapter(
        cls,
        *,
        num_classes: int | None = None,
        epochs: int | None = None,
        steps: int | None = None,
        **fields: object,
    ) -> Config:
        """Build a config from a chapter's parameters.

        ``num_classes`` C selects the first C classes; ``epochs``, when given,
        takes precedence over ``steps``. Other names must be config fields.
        """
        if epochs:
            length: dict = {"epochs": epochs, "steps": None}
        else:
            length = {} if steps is None else {"steps": steps}
        return cls().replace(classes=num_classes, **length, **fields)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the valid values if a field is wrong."""
        _data.validate_dataset_args(self.dataset, self.classes, self.per_class)
        if self.model not in MODELS:
            raise ValueError(
                f"unknown model {self.model!r}; valid models: {', '.join(MODELS)}"
            )
        for name in ("width", "depth", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give exactly one of epochs= or steps=")
        length = self.epochs if self.steps is None else self.steps
        if not isinstance(length, int) or length <= 0:
            raise ValueError(f"epochs/steps must be a positive integer, got {length!r}")
        if not 0.0 <= self.drop_prob < 1.0:
            raise ValueError(f"drop_prob must lie in [0, 1), got {self.drop_prob!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")

    def as_dict(self) -> dict:
        """JSON-ready dict of the fields."""
        d = dataclasses.asdict(self)
        if isinstance(d["classes"], tuple):
            d["classes"] = list(d["classes"])
        return d

    def replace(self, **changes: object) -> Config:
        """Return a copy with some fields changed (validated)."""
        unknown = set(changes) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown config fields {sorted(unknown)}; valid fields: "
                f"{', '.join(self.__dataclass_fields__)}"
            )
        return dataclasses.replace(self, **changes)

    def key(self) -> str:
        """Hash of the configuration and of the library versions (16 hex digits)."""
        payload = {"config": self.as_dict(), "versions": versions()}
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def load_data(self) -> _data.Dataset:
        """Load the dataset this configuration trains on."""
        return _data.load_dataset(
            self.dataset,
            classes=self.classes,
            per_class=self.per_class,
            random_labels=self.random_labels,
            seed=self.seed,
        )

    def build_model(self, data: _data.Dataset) -> nn.Module:
        """An untrained model for ``data``, initialised from ``seed``."""
        torch.manual_seed(self.seed)
        options: dict[str, object] = {
            "width": self.width,
            "depth": self.depth,
            "skip": self.skip,
            "drop_prob": self.drop_prob,
        }
        if self.model == "conv":
            options["downsample"] = self.downsample
        shape = tuple(data.x_train.shape[1:])
        return build_model(self.model, shape, data.num_classes, **options)

    def train(
        self,
        model: nn.Module,
        data: _data.Dataset,
        device: torch.device,
        *,
        progress: bool = False,
        callback: Callable | None = None,
    ) -> History:
        """Train ``model`` on ``data`` with this configuration's settings.

        Calls :func:`resalign.training.train` with the length, batch size,
        optimiser settings and seed held here (evaluating every 10 epochs);
        ``callback`` as there.
        """
        return train(
            model,
            data,
            epochs=self.epochs,
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            seed=self.seed,
            device=device,
            progress=progress,
            eval_every=10,
            callback=callback,
        )

    def describe(self) -> str:
        """A short human-readable label."""
        classes = "" if self.classes is None else f", classes={self.classes}"
        length = f"{self.steps} steps" if self.steps else f"{self.epochs} epochs"
        skip = "" if self.skip else ", no skip"
        return (
            f"{self.model} d={self.width} L={self.depth}{skip} on "
            f"{self.dataset}{classes}, {length}, seed {self.seed}"
        )


def versions() -> dict[str, str]:
    """Library versions that enter an entry's key."""
    return {"torch": torch.__version__.split("+")[0], "format": str(STORE_FORMAT)}


@dataclass
class Trained:
    """A trained model with its data, history and configuration."""

    model: nn.Module
    data: _data.Dataset
    history: History
    config: Config
    meta: dict = field(default_factory=dict)


class CorruptEntry(RuntimeError):
    """A store entry that cannot be trusted (bad checksum, unreadable)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _digest(data: object) -> str:
    """SHA-256 of the canonical JSON text of ``data``."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _atomic_write(path: Path, write) -> None:
    """Write through ``write(file)`` into a temporary file, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: object) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    blob = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    _atomic_write(Path(path), lambda f: f.write(blob))


class Store:
    """A folder of trained models keyed by configuration.

    Parameters
    ----------
    root : path, optional
        The folder; default ``$RESALIGN_STORE`` or the repository's
        ``data/store``.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        root = root or os.environ.get("RESALIGN_STORE") or DEFAULT_ROOT
        self.root = Path(root)

    def paths(self, config: Config) -> tuple[Path, Path]:
        """The ``.pt`` and ``.json`` paths of an entry."""
        key = config.key()
        return self.root / f"{key}.pt", self.root / f"{key}.json"

    def __contains__(self, config: Config) -> bool:
        try:
            self._read(config)
        except (FileNotFoundError, CorruptEntry):
            return False
        return True

    def entries(self) -> list[dict]:
        """Metadata of every complete entry in the store."""
        out = []
        for meta_path in sorted(self.root.glob("*.json")):
            try:
                out.append(json.loads(meta_path.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        return out

    def _read(self, config: Config) -> tuple[dict, dict]:
        pt, meta_path = self.paths(config)
        if not meta_path.exists():
            raise FileNotFoundError(meta_path)
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CorruptEntry(f"{meta_path}: unreadable metadata ({err})") from err
        if not pt.exists():
            raise CorruptEntry(f"{pt} is missing")
        if _sha256(pt) != meta.get("sha256"):
            raise CorruptEntry(f"{pt}: checksum does not match {meta_path.name}")
        try:
            payload = torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure
            raise CorruptEntry(f"{pt}: cannot be loaded ({err})") from err
        return meta, payload

    def load(self, config: Config, device: str = "auto") -> Trained:
        """Load a stored entry; raise ``FileNotFoundError`` or ``CorruptEntry``."""
        meta, payload = self._read(config)
        data = config.load_data()
        model = config.build_model(data)
        model.load_state_dict(payload["state_dict"])
        model.to(resolve_device(device)).eval()
        history = History.from_dict(payload["history"])
        return Trained(model, data, history, config, meta)

    def save(self, trained: Trained, seconds: float, device: str) -> None:
        """Write an entry atomically: weights first, metadata last."""
        pt, meta_path = self.paths(trained.config)
        state = {k: v.detach().cpu() for k, v in trained.model.state_dict().items()}
        payload = {"state_dict": state, "history": trained.history.as_dict()}
        _atomic_write(pt, lambda f: torch.save(payload, f))
        meta = {
            "key": trained.config.key(),
            "config": trained.config.as_dict(),
            "versions": versions(),
            "sha256": _sha256(pt),
            "train_seconds": round(seconds, 1),
            "device": device,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "final": {
                "loss": trained.history.loss[-1],
                "train_acc": trained.history.train_acc[-1],
                "test_acc": trained.history.test_acc[-1],
            },
            "command": f"python -m resalign store remake {trained.config.key()}",
        }
        atomic_write_json(meta_path, meta)
        trained.meta = meta

    def result_path(self, config: Config, name: str) -> Path:
        """Where the cached result ``name`` computed from ``config`` lives."""
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"result name {name!r}: use letters, digits, - and _")
        return self.root / "results" / f"{config.key()}-{name}.json"

    def load_result(self, config: Config, name: str) -> dict:
        """Read a cached result; raise ``FileNotFoundError`` or ``CorruptEntry``."""
        path = self.result_path(config, name)
        try:
            wrapper = json.loads(path.read_text())
            data = wrapper["data"]
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CorruptEntry(f"{path}: unreadable result ({err})") from err
        if wrapper.get("sha256") != _digest(data):
            raise CorruptEntry(f"{path}: checksum does not match its data")
        return data

    def save_result(self, config: Config, name: str, data: dict) -> None:
        """Write a result atomically, with the checksum of its data."""
        wrapper = {
            "key": config.key(),
            "name": name,
            "config": config.as_dict(),
            "versions": versions(),
            "sha256": _digest(data),
            "data": data,
        }
        atomic_write_json(self.result_path(config, name), wrapper)

    def result(self, config: Config, name: str, compute: Callable[[], dict]) -> dict:
        """A result cached beside the models: read it, or compute and save it.

        A corrupted or half-written result is reported with a warning and
        recomputed; a killed computation leaves no file behind.
        """
        try:
            return self.load_result(config, name)
        except FileNotFoundError:
            pass
        except CorruptEntry as err:
            warnings.warn(f"recomputing cached result: {err}", stacklevel=2)
        data = compute()
        self.save_result(config, name, data)
        return self.load_result(config, name)

    def get(
        self,
        config: Config,
        *,
        device: str = "auto",
        progress: bool = True,
        retrain: bool = False,
    ) -> Trained:
        """Return the trained model for ``config``, training it if needed.

        A corrupted or half-written entry is reported with a warning and
        rebuilt; the store never returns weights whose checksum fails.
        """
        if not retrain:
            try:
                return self.load(config, device)
            except FileNotFoundError:
                pass
            except CorruptEntry as err:
                warnings.warn(f"rebuilding store entry: {err}", stacklevel=2)
        data = config.load_data()
        model = config.build_model(data)
        dev = resolve_device(device)
        if progress:
            print(f"training {config.describe()} on {dev} (not in the store yet)")
        start = time.perf_counter()
        history = config.train(model, data, dev, progress=progress)
        result = Trained(model, data, history, config)
        self.save(result, time.perf_counter() - start, str(dev))
        return result


def default_store() -> Store:
    """The store at ``$RESALIGN_STORE`` or ``data/store``."""
    return Store()


def trained(
    config: Config | None = None,
    *,
    store: Store | None = None,
    device: str = "auto",
    progress: bool = True,
    **fields: object,
) -> Trained:
    """Shortcut: the trained model for ``config`` (or ``Config(**fields)``)."""
    if config is None:
        config = Config().replace(**fields)
    elif fields:
        config = config.replace(**fields)
    return (store or default_store()).get(config, device=device, progress=progress)


def remake(configs: Sequence[Config], store: Store | None = None) -> list[float]:
    """Retrain ``configs`` from scratch, overwriting their entries; return seconds."""
    store = store or default_store()
    times = []
    for config in configs:
        start = time.perf_counter()
        store.get(config, retrain=True, device="cpu")
        times.append(time.perf_counter() - start)
    return times
