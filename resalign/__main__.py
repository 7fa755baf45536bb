"""Command line of resalign: ``python -m resalign --help``."""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main"]


def _store_list(args: argparse.Namespace) -> int:
    from .store import Config, Store

    store = Store(args.store)
    entries = store.entries()
    if not entries:
        print(f"no entries in {store.root}")
        return 0
    print(f"{len(entries)} entries in {store.root}:")
    for meta in entries:
        config = Config(**meta["config"])
        ok = "ok " if config in store else "BAD"
        final = meta.get("final", {})
        print(
            f"  {ok} {meta['key']}  {config.describe()}  "
            f"train {final.get('train_acc', float('nan')):.3f} "
            f"test {final.get('test_acc', float('nan')):.3f}  "
            f"({meta.get('train_seconds', '?')} s)"
        )
    return 0


def _store_verify(args: argparse.Namespace) -> int:
    from .store import Config, Store

    store = Store(args.store)
    bad = [m["key"] for m in store.entries() if Config(**m["config"]) not in store]
    if bad:
        print(f"{len(bad)} entries fail their checksum: {', '.join(bad)}")
        print("remake them with: python -m resalign store remake " + " ".join(bad))
        return 1
    print(f"all {len(store.entries())} entries in {store.root} verified")
    return 0


def _store_remake(args: argparse.Namespace) -> int:
    from .store import Config, Store, remake

    store = Store(args.store)
    entries = {m["key"]: m for m in store.entries()}
    if args.all:
        keys = list(entries)
    else:
        unknown = [k for k in args.keys if k not in entries]
        if unknown:
            print(
                f"unknown keys: {', '.join(unknown)}; "
                "see python -m resalign store list",
                file=sys.stderr,
            )
            return 2
        keys = args.keys
    if not keys:
        print("nothing to remake: give keys or --all", file=sys.stderr)
        return 2
    configs = [Config(**entries[k]["config"]) for k in keys]
    start = time.perf_counter()
    times = remake(configs, store)
    for config, seconds in zip(configs, times, strict=True):
        print(f"  {seconds:7.1f} s  {config.describe()}")
    print(f"remade {len(configs)} entries in {time.perf_counter() - start:.0f} s")
    return 0


def _parse_overrides(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"-p takes name=value, got {pair!r}")
        out[name] = yaml.safe_load(value)
    return out


def _rerun(args: argparse.Namespace) -> int:
    from . import rerun as rr

    if args.list or not args.chapter:
        for chapter in rr.chapters():
            names = ", ".join(rr.presets(chapter))
            print(f"  {chapter:24s} presets: {names}")
        return 0
    try:
        the_plan = rr.plan(
            args.chapter, args.preset, _parse_overrides(args.param), args.out
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import torch

    device = (
        "cuda (" + torch.cuda.get_device_name() + ")"
        if torch.cuda.is_available()
        else "cpu"
    )
    print(f"chapter    {the_plan.chapter}")
    print(f"preset     {the_plan.preset}: {the_plan.description}")
    print(f"parameters {the_plan.parameters or '(defaults)'}")
    print(f"device     {device} (device='auto' in the chapter picks it)")
    print(f"estimate   {the_plan.estimate or 'not measured for this preset'}")
    print(f"output     {the_plan.out}")
    if args.dry_run:
        return 0
    try:
        out = rr.rerun(the_plan, progress=True)
    except Exception as err:  # noqa: BLE001 - report any failure the same way
        print(f"\nthe chapter failed: {type(err).__name__}", file=sys.stderr)
        print(f"outputs so far are in {the_plan.out}", file=sys.stderr)
        return 1
    print(f"\ndone: notebook, figures/ and metrics.json are in {out}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import run_sweep

    client = None
    if args.scheduler:
        from dask.distributed import Client

        client = Client(args.scheduler)
    try:
        jobs = run_sweep(
            args.chapters.split(","),
            args.presets.split(","),
            [int(s) for s in args.seeds.split(",")],
            args.out,
            client=client,
            workers=args.workers,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for job in jobs:
        print(f"  {job.status:8s} {job.out}  {job.error[:120]}")
    failed = [j for j in jobs if j.status == "failed"]
    print(f"{len(jobs) - len(failed)} of {len(jobs)} jobs passed or were done before")
    if failed:
        print("run the same command again to retry only the failed jobs")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the CLI)."""
    parser = argparse.ArgumentParser(
        prog="python -m resalign",
        description="Tools around the resalign book: rerun chapters with presets, "
        "and list, verify or remake the store of trained models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    store = sub.add_parser("store", help="list, verify or remake trained models")
    store.add_argument(
        "--store", default=None, help="store folder (default: data/store)"
    )
    ssub = store.add_subparsers(dest="action", required=True)
    ssub.add_parser("list", help="list entries with their accuracy and training time")
    ssub.add_parser("verify", help="check every entry's checksum (exit 1 if any fails)")
    rm = ssub.add_parser(
        "remake", help="retrain entries from scratch on the CPU and overwrite them"
    )
    rm.add_argument("keys", nargs="*", help="entry keys (see 'store list')")
    rm.add_argument("--all", action="store_true", help="remake every entry")

    rr = sub.add_parser(
        "rerun",
        help="execute a chapter with a preset (papermill)",
        description="Execute a chapter with the parameters of a preset; outputs "
        "(executed notebook, figures, metrics.json) go to reruns/CHAPTER-PRESET/.",
    )
    rr.add_argument("chapter", nargs="?", help="chapter name, e.g. 02_ra1_line")
    rr.add_argument("preset", nargs="?", default="cpu", help="preset (default cpu)")
    rr.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one parameter (YAML value), repeatable",
    )
    rr.add_argument("--out", default=None, help="output folder")
    rr.add_argument("--list", action="store_true", help="list chapters and presets")
    rr.add_argument(
        "--dry-run", action="store_true", help="check and print the plan, run nothing"
    )

    sw = sub.add_parser(
        "sweep",
        help="rerun chapters x presets x seeds as jobs on a Dask cluster",
        description="Each combination runs as an independent job; finished jobs "
        "are kept when others fail, and a repeated sweep skips what is done.",
    )
    sw.add_argument("--chapters", required=True, help="comma-separated names")
    sw.add_argument("--presets", default="cpu", help="comma-separated (default cpu)")
    sw.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    sw.add_argument("--out", default="reruns/sweep", help="output root folder")
    sw.add_argument(
        "--scheduler",
        default=None,
        help="address of a running Dask scheduler (default: a local cluster)",
    )
    sw.add_argument("--workers", type=int, default=2, help="local cluster workers")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    if args.command == "rerun":
        return _rerun(args)
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "store":
        action = {"list": _store_list, "verify": _store_verify}
        return action.get(args.action, _store_remake)(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
