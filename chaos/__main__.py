"""``python -m chaos run --nemesis NAME[,NAME...]|all --episodes N --seed S [--workload kv|pg|all] [--out DIR]``

Runs chaos episodes on mirror labs, one per lab shape the nemeses need (see
chaos.chaos_run, chaos.lab_shapes), and writes
``chaos/results/<run>/`` (or DIR): history.json, summary.md, summary.json, timeline.png.
Exit status: 0 no violation, 1 violations found, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .chaos_report import render_summary, summarize, write_history, write_report
from .chaos_run import RESULTS_DIR, ChaosRun, EpisodeRecord, run_chaos
from .nemesis import NEMESES


def _nemeses(arg: str) -> list[str]:
    if arg == "all":
        return list(NEMESES)
    names = [n.strip() for n in arg.split(",") if n.strip()]
    unknown = [n for n in names if n not in NEMESES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown nemesis {unknown[0] if unknown else arg!r}; have all, {', '.join(NEMESES)}")
    return names


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


PROGRESS_WRITE_S = 120.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run chaos episodes on mirror labs and write a report")
    r.add_argument("--nemesis", type=_nemeses, default=list(NEMESES),
                   help=f"all, or a comma-separated list of: {', '.join(NEMESES)}")
    r.add_argument("--episodes", type=_positive(int), default=1, help="episodes per nemesis")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--workload", choices=("kv", "pg", "all"), default="kv",
                   help="the application under the faults: kv (the demo key/value app), pg "
                        "(PostgreSQL, numbered inserts from several sessions), all (kv then pg)")
    r.add_argument("--out", type=Path, help="output folder (default chaos/results/<run>)")
    r.add_argument("--hold", type=_positive(float), nargs=2, default=(2.0, 5.0),
                   metavar=("MIN_S", "MAX_S"), help="fault duration range, seconds")
    r.add_argument("--recovery-bound", type=_positive(float), default=60.0,
                   help="seconds after heal for PRIM+SECOND in sync")
    r.add_argument("--bench-json", type=Path,
                   help="also copy summary.json here (bench/results/chaos.json)")
    r.add_argument("-v", "--verbose", action="store_true", help="log every lab action")
    args = p.parse_args(argv)
    if args.hold[0] > args.hold[1]:
        p.error(f"--hold: MIN_S {args.hold[0]} is above MAX_S {args.hold[1]}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    out = args.out or RESULTS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    workloads = ("kv", "pg") if args.workload == "all" else (args.workload,)
    total = len(args.nemesis) * args.episodes * len(workloads)

    last_write = [time.monotonic()]
    seen: list[ChaosRun] = []       # the run, as the first episode hands it over

    def progress(run: ChaosRun, rec: EpisodeRecord) -> None:
        seen[:] = [run]
        # Progress survives a crash, at most PROGRESS_WRITE_S old: the history holds every
        # acknowledgement of the run, so writing it after each episode made a long sweep
        # quadratic (minutes per episode by the end of a 500-episode run).
        if rec.violations or time.monotonic() - last_write[0] >= PROGRESS_WRITE_S:
            history = run.to_history()
            write_history(history, out / "history.json")
            (out / "summary.md").write_text(render_summary(history, f"chaos run {out.name}"))
            last_write[0] = time.monotonic()
        rs = "-" if rec.recovery_s is None else f"{rec.recovery_s:.2f}"
        fs = "-" if rec.failover_s is None else f"{rec.failover_s:.2f}"
        print(f"episode {rec.index} ({rec.index + 1}/{total}) {rec.nemesis} [{rec.workload}] {rec.targets}: failover {fs} s, "
              f"recovery {rs} s, {rec.acked} acked, {len(rec.violations)} violation(s)"
              + "".join(f"\n  VIOLATION {v}" for v in rec.violations), flush=True)

    try:
        run = run_chaos(args.nemesis, args.episodes, args.seed, tuple(args.hold),
                        args.recovery_bound, on_episode=progress, workloads=workloads,
                        logs_dir=out / "logs")
    except BaseException:
        if seen:        # what ran is kept, whatever stopped the run
            write_report(seen[0].to_history(), out, f"chaos run {out.name} (stopped)")
        raise
    paths = write_report(run.to_history(), out, f"chaos run {out.name}")
    if args.bench_json is not None:
        args.bench_json.parent.mkdir(parents=True, exist_ok=True)
        args.bench_json.write_text(paths["summary_json"].read_text())
    for row in summarize(run.to_history()):
        print(f"{row['nemesis']}: {row['episodes']} episode(s), {row['violations']} violation(s)")
    print(f"{run.violations} violation(s); report in {paths['summary'].parent}")
    return 1 if run.violations else 0


if __name__ == "__main__":
    sys.exit(main())
