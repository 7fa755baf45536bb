"""Rerun a chapter with other parameters (papermill), e.g. at the paper's scale.

Each chapter ``chapters/NAME.ipynb`` has a cell tagged ``parameters``; its named
presets live in ``chapters/params/NAME.yml``::

    cpu: {}                       # the defaults, as in the book
    paper:
      description: the authors' scale
      estimate: ...
      parameters: {dataset: fashion-mnist, epochs: 50}

:func:`rerun` checks the chapter, preset and parameter names before anything
runs, executes the notebook into an output folder, and leaves there the
executed notebook, its figures as PNG files and ``metrics.json`` (every
asserted metric, written by :func:`resalign.checks.verify`).
"""

from __future__ import annotations

import ast
import base64
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Plan", "chapters", "is_done", "plan", "presets", "rerun"]

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
PARAMS = CHAPTERS / "params"
#: Keys of a preset besides its parameters.
_PRESET_KEYS = {"description", "estimate", "parameters"}
#: Held by a rerun: the metrics path reaches the kernel through this process's
#: environment and papermill changes its working directory, both global.
_ONE_AT_A_TIME = threading.Lock()


@dataclass
class Plan:
    """A checked rerun: what will run, with which parameters, where to."""

    chapter: str
    preset: str
    parameters: dict
    out: Path
    description: str = ""
    estimate: str = ""
    defaults: dict = field(default_factory=dict)
    folder: Path = CHAPTERS

    @property
    def source(self) -> Path:
        """The chapter's notebook."""
        return self.folder / f"{self.chapter}.ipynb"


def chapters(folder: Path = CHAPTERS) -> list[str]:
    """Names of the chapters (notebooks) in ``folder``."""
    return sorted(p.stem for p in folder.glob("*.ipynb"))


def _load_yaml(path: Path) -> dict:
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of preset names")
    return data


def presets(chapter: str, folder: Path = CHAPTERS) -> dict[str, dict]:
    """The presets of ``chapter``: always ``cpu`` (the defaults), plus its file's."""
    found = {"cpu": {"description": "the book's CPU defaults", "parameters": {}}}
    path = folder / "params" / f"{chapter}.yml"
    if path.exists():
        for name, preset in _load_yaml(path).items():
            preset = preset or {}
            unknown = set(preset) - _PRESET_KEYS
            if unknown:
                raise ValueError(
                    f"{path}: preset {name!r} has unknown keys {sorted(unknown)}; "
                    f"valid keys: {', '.join(sorted(_PRESET_KEYS))}"
                )
            found[name] = {"parameters": {}} | preset
    return found


def _notebook_parameters(path: Path) -> dict:
    import papermill

    def value(source: str) -> object:
        try:
            return ast.literal_eval(source)
        except (ValueError, SyntaxError):
            return source  # an expression: left to the notebook

    return {
        name: value(info["default"])
        for name, info in papermill.inspect_notebook(str(path)).items()
    }


def plan(
    chapter: str,
    preset: str = "cpu",
    overrides: dict | None = None,
    out: str | Path | None = None,
    folder: Path = CHAPTERS,
) -> Plan:
    """Check a rerun request and return its :class:`Plan`; nothing is executed.

    Raises
    ------
    ValueError
        For an unknown chapter, preset or parameter, naming the valid ones.
    """
    valid = chapters(folder)
    if chapter not in valid:
        raise ValueError(f"unknown chapter {chapter!r}; valid: {', '.join(valid)}")
    known = presets(chapter, folder)
    if preset not in known:
        raise ValueError(
            f"unknown preset {preset!r} for {chapter}; valid: {', '.join(known)}"
        )
    defaults = _notebook_parameters(folder / f"{chapter}.ipynb")
    params = dict(known[preset]["parameters"]) | dict(overrides or {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(
            f"{chapter} has no parameter(s) {', '.join(unknown)}; "
            f"valid: {', '.join(defaults)}"
        )
    check_values(defaults | params)
    out = Path(out) if out else ROOT / "reruns" / f"{chapter}-{preset}"
    return Plan(
        chapter,
        preset,
        params,
        out,
        known[preset].get("description", ""),
        known[preset].get("estimate", ""),
        defaults,
        folder,
    )


#: Chapter parameters that are fields of :class:`resalign.store.Config`.
_CONFIG_PARAMS = ("dataset", "num_classes", "width", "depth", "epochs", "steps", "seed")


def check_values(params: dict) -> None:
    """Reject bad parameter values (dataset, sizes, device) before anything runs."""
    from .store import Config
    from .training import resolve_device

    fields = {k: params[k] for k in _CONFIG_PARAMS if k in params}
    if fields:
        Config.from_chapter(**fields)
    if "device" in params:
        resolve_device(params["device"])


def _save_figures(nb: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, cell in enumerate(nb.get("cells", [])):
        for j, output in enumerate(cell.get("outputs", [])):
            png = output.get("data", {}).get("image/png")
            if png:
                path = folder / f"cell{i:02d}_{j}.png"
                path.write_bytes(base64.b64decode(png))
                paths.append(path)
    return paths


def is_done(out: Path) -> bool:
    """Whether ``out`` holds a finished, passing rerun (its ``run.json`` says so)."""
    try:
        return bool(json.loads((out / "run.json").read_text())["passed"])
    except (OSError, ValueError, KeyError):
        return False


def rerun(the_plan: Plan, *, progress: bool = True, kernel: str = "python3") -> Path:
    """Execute a planned rerun; return the folder holding its outputs.

    The executed notebook is written to a temporary name and renamed when the
    run ends, so an interrupted run never leaves a notebook that looks complete.
    A chapter whose claims fail raises ``papermill.PapermillExecutionError``
    after its outputs (including ``metrics.json``) are saved.

    Reruns in one process take turns (the kernel finds ``metrics.json``
    through this process's environment); run them in parallel in separate
    processes, as ``python -m resalign sweep`` does.
    """
    with _ONE_AT_A_TIME:
        return _rerun(the_plan, progress, kernel)


def _rerun(the_plan: Plan, progress: bool, kernel: str) -> Path:
    import papermill

    from .store import atomic_write_json

    out = the_plan.out
    out.mkdir(parents=True, exist_ok=True)
    source = the_plan.source
    partial = out / f"{the_plan.chapter}.partial.ipynb"
    final = out / f"{the_plan.chapter}.ipynb"
    metrics = out / "metrics.json"
    metrics.unlink(missing_ok=True)
    os.environ["RESALIGN_METRICS"] = str(metrics)
    start = time.perf_counter()
    error = None
    try:
        papermill.execute_notebook(
            str(source),
            str(partial),
            parameters=the_plan.parameters,
            cwd=str(the_plan.folder),
            kernel_name=kernel,
            progress_bar=progress,
        )
    except papermill.PapermillExecutionError as err:
        error = err
    finally:
        os.environ.pop("RESALIGN_METRICS", None)
    if partial.exists():
        nb = json.loads(partial.read_text())
        _save_figures(nb, out / "figures")
        os.replace(partial, final)
    atomic_write_json(
        out / "run.json",
        {
            "chapter": the_plan.chapter,
            "preset": the_plan.preset,
            "parameters": the_plan.parameters,
            "seconds": round(time.perf_counter() - start, 1),
            "passed": error is None,
        },
    )
    if error is not None:
        raise error
    return out
