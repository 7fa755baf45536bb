"""Sweeps: many chapter reruns as independent jobs on a Dask cluster.

A sweep is the product chapters x presets x seeds. Each combination is one
:func:`resalign.rerun.rerun` in its own folder ``ROOT/CHAPTER-PRESET-seedS``,
submitted as an independent task to a ``dask.distributed`` client. By default
the client is a :class:`~dask.distributed.LocalCluster` on this machine (one
process per worker, one thread each); pass a client of any other cluster
(``dask_jobqueue.SLURMCluster``, ``dask_kubernetes``, a scheduler address) to
run the same sweep there. A job that fails does not stop the others; a rerun of
the sweep skips every combination whose folder already holds a passing run.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import rerun as _rerun

__all__ = ["Job", "plan_sweep", "run_sweep"]


@dataclass(frozen=True)
class Job:
    """One rerun of a sweep and its outcome."""

    chapter: str
    preset: str
    seed: int
    out: Path
    status: str = "planned"  # planned | skipped (done before) | passed | failed
    error: str = ""


def plan_sweep(
    chapters: Sequence[str],
    presets: Sequence[str],
    seeds: Sequence[int],
    root: str | Path,
    folder: Path = _rerun.CHAPTERS,
) -> list[tuple[Job, _rerun.Plan]]:
    """Check every combination before anything runs; return jobs with plans.

    Raises
    ------
    ValueError
        For any unknown chapter, preset or parameter, naming the valid ones.
    """
    root = Path(root)
    planned = []
    for chapter, preset, seed in itertools.product(chapters, presets, seeds):
        out = root / f"{chapter}-{preset}-seed{seed}"
        the_plan = _rerun.plan(chapter, preset, {"seed": int(seed)}, out, folder)
        planned.append((Job(chapter, preset, int(seed), out), the_plan))
    return planned


def _execute(the_plan: _rerun.Plan) -> tuple[str, str]:
    """Run one job on a worker; return (status, error message)."""
    try:
        _rerun.rerun(the_plan, progress=False)
    except Exception as err:  # noqa: BLE001 - a failed job is a result, not a crash
        return "failed", f"{type(err).__name__}: {str(err)[-500:]}"
    return "passed", ""


def run_sweep(
    chapters: Sequence[str],
    presets: Sequence[str],
    seeds: Sequence[int],
    root: str | Path,
    *,
    client: object | None = None,
    workers: int = 2,
    folder: Path = _rerun.CHAPTERS,
    progress: bool = True,
) -> list[Job]:
    """Run a sweep; return one :class:`Job` per combination with its status.

    Parameters
    ----------
    chapters, presets, seeds : sequences
        The product of these is the sweep.
    root : path
        Folder that receives one sub-folder per job.
    client : dask.distributed.Client, optional
        Where to run. Default: a LocalCluster with ``workers`` processes.
    workers : int, default 2
        Workers of the default local cluster.
    folder : path
        Folder of the chapters (tests point it at small notebooks).
    progress : bool, default True
        Show a progress bar over finished jobs.
    """
    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    planned = plan_sweep(chapters, presets, seeds, root, folder)
    jobs = {job.out: job for job, _ in planned}
    todo = [(job, p) for job, p in planned if not _rerun.is_done(job.out)]
    for job, _ in planned:
        if _rerun.is_done(job.out):
            jobs[job.out] = Job(**{**job.__dict__, "status": "skipped"})
    if todo:
        own = client is None
        if own:
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True
            )
            client = Client(cluster)
        try:
            futures = {client.submit(_execute, p, pure=False): job for job, p in todo}
            bar = tqdm(total=len(futures), desc="sweep", disable=not progress)
            for future in as_completed(futures):
                job = futures[future]
                status, error = future.result()
                jobs[job.out] = Job(
                    **{**job.__dict__, "status": status, "error": error}
                )
                bar.update()
            bar.close()
        finally:
            if own:
                client.close()
                cluster.close()
    return [jobs[job.out] for job, _ in planned]
