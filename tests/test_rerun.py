"""Reruns and sweeps on small notebooks that the tests write."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest

from resalign import rerun as rr
from resalign.sweep import run_sweep


def _write_chapter(folder, name="tiny"):
    """A chapter whose claim holds for seed < 2 and fails otherwise."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("seed = 0\nscale = 1.0\ndevice = 'auto'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell(
            "import matplotlib.pyplot as plt\n"
            "from IPython.display import display\n"
            "fig = plt.figure(); plt.plot([0, scale]); display(fig); plt.close(fig)"
        ),
        nbformat.v4.new_code_cell(
            "from resalign.checks import Check, verify\n"
            "verify([Check('tiny claim', 'seed', seed, '<', 2)], name='tiny')"
        ),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{name}.ipynb")
    (folder / "params").mkdir(exist_ok=True)
    (folder / "params" / f"{name}.yml").write_text(
        "big:\n  description: a bigger scale\n  parameters: {scale: 3.0}\n"
    )
    return folder


def test_plan_rejects_unknown_names_before_running(tmp_path):
    folder = _write_chapter(tmp_path / "chapters")
    with pytest.raises(ValueError, match="valid: tiny"):
        rr.plan("nope", folder=folder)
    with pytest.raises(ValueError, match="valid: cpu, big"):
        rr.plan("tiny", "paper", folder=folder)
    with pytest.raises(ValueError, match="'auto', 'cpu'"):
        rr.plan("tiny", "cpu", {"device": "tpu9"}, folder=folder)
    with pytest.raises(ValueError, match="valid: seed, scale, device"):
        rr.plan("tiny", "cpu", {"sede": 1}, folder=folder)
    p = rr.plan("tiny", "big", {"seed": 1}, tmp_path / "out", folder=folder)
    assert p.parameters == {"scale": 3.0, "seed": 1}


def test_rerun_writes_notebook_figures_and_metrics(tmp_path):
    folder = _write_chapter(tmp_path / "chapters")
    out = rr.rerun(
        rr.plan("tiny", "big", out=tmp_path / "out", folder=folder), progress=False
    )
    assert (out / "tiny.ipynb").exists() and not (out / "tiny.partial.ipynb").exists()
    assert len(list((out / "figures").glob("*.png"))) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["chapter"] == "tiny" and metrics["checks"][0]["passed"]
    assert rr.is_done(out)


def test_failed_claim_keeps_outputs_and_is_not_done(tmp_path):
    folder = _write_chapter(tmp_path / "chapters")
    the_plan = rr.plan("tiny", "cpu", {"seed": 5}, tmp_path / "out", folder=folder)
    with pytest.raises(Exception, match="not reproduced"):
        rr.rerun(the_plan, progress=False)
    metrics = json.loads((the_plan.out / "metrics.json").read_text())
    assert metrics["checks"][0]["passed"] is False
    assert not rr.is_done(the_plan.out)


def test_reruns_from_threads_each_keep_their_own_metrics(tmp_path):
    # The metrics path reaches each kernel through the process environment:
    # reruns started from two threads must not hand it to each other's kernel.
    folder = _write_chapter(tmp_path / "chapters")
    plans = [
        rr.plan("tiny", "cpu", {"seed": s}, tmp_path / f"out{s}", folder=folder)
        for s in (0, 1)
    ]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda p: rr.rerun(p, progress=False), plans))
    for s, the_plan in zip((0, 1), plans, strict=True):
        metrics = json.loads((the_plan.out / "metrics.json").read_text())
        assert metrics["checks"][0]["value"] == s


def test_sweep_on_a_local_cluster_keeps_results_and_skips_done_jobs(tmp_path):
    folder = _write_chapter(tmp_path / "chapters")
    root = tmp_path / "sweep"
    jobs = run_sweep(["tiny"], ["cpu"], [0, 1, 2], root, folder=folder, progress=False)
    status = {job.seed: job.status for job in jobs}
    assert status == {0: "passed", 1: "passed", 2: "failed"}
    assert "not reproduced" in next(j.error for j in jobs if j.seed == 2)
    again = run_sweep(["tiny"], ["cpu"], [0, 1, 2], root, folder=folder, progress=False)
    assert {job.seed: job.status for job in again} == {
        0: "skipped",
        1: "skipped",
        2: "failed",
    }


def test_sweep_checks_every_job_before_running(tmp_path):
    folder = _write_chapter(tmp_path / "chapters")
    with pytest.raises(ValueError, match="unknown preset"):
        run_sweep(["tiny"], ["cpu", "huge"], [0], tmp_path / "s", folder=folder)


def test_verify_reports_known_failures_without_failing(capsys):
    from resalign.checks import Check, verify

    verify(
        [
            Check("holds", "x", 1.0, "<", 2.0),
            Check("known gap", "y", 3.0, "<", 2.0, known_failure=True),
        ]
    )
    out = capsys.readouterr().out
    assert "known: not reproduced" in out
    with pytest.raises(AssertionError, match="fails: z = 3"):
        verify([Check("fails", "z", 3.0, "<", 2.0)])
    with pytest.raises(AssertionError):
        verify([Check("nan never passes", "z", float("nan"), "<", 2.0)])


def test_every_shipped_preset_plans_cleanly():
    """Each preset of each chapter names real parameters with valid values."""
    for chapter in rr.chapters():
        for preset in rr.presets(chapter):
            the_plan = rr.plan(chapter, preset)
            assert set(the_plan.parameters) <= set(the_plan.defaults)
