"""Command line: ``python -m hiresmed_nb run params/quick.yaml [-f more.yaml] [-p KEY VALUE]``.

Subcommands:

- ``run``: expand the parameter files into a grid of runs, execute ``notebooks/01_train.ipynb``
  for each run not yet recorded (packed onto slots with ``--slots``, ``--hosts``, ``-p
  IPP_CLUSTER_FILE`` or this machine's GPUs: several runs at once), then execute
  ``notebooks/02_report.ipynb`` and render ``outputs/<STUDY>/report.html``. ``--run-timeout``
  bounds every run (``RUN_TIMEOUT``). Exits 1 when a run or the report failed, 2 on bad
  parameters.
- ``cluster start`` / ``cluster stop FILE``: a cluster of engines that outlives the command
  (here or on ``--hosts``); ``start`` prints its cluster file, which notebooks and studies attach
  to with ``IPP_CLUSTER_FILE`` (and leave running).
- ``bench``: run the performance benchmarks (:mod:`hiresmed_nb.bench`), one JSON each in
  ``outputs/bench/`` (``notebooks/03_benchmarks.ipynb`` draws them); prints each goal, met or not.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import DEFAULT_RUN_TIMEOUT, project_root, resolve_path


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hiresmed", description="Run the study notebooks of hiresmed-nb."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run a study grid, then render its report",
        description="Expand parameter files into runs of notebooks/01_train.ipynb, execute the "
        "runs not yet recorded, and render outputs/<STUDY>/report.html.",
    )
    run.add_argument("params_file", help="YAML parameter file, e.g. params/quick.yaml")
    run.add_argument(
        "-f",
        "--file",
        dest="more_files",
        action="append",
        default=[],
        metavar="YAML",
        help="further parameter file; later files override earlier ones (repeatable)",
    )
    run.add_argument(
        "-p",
        "--parameter",
        dest="overrides",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="override one key last; VALUE is typed as papermill's -p does (repeatable)",
    )
    run.add_argument(
        "--run-timeout",
        type=_positive_seconds,
        default=None,
        metavar="SECONDS",
        help="time limit of every run (sets RUN_TIMEOUT, after the files and -p): past it the "
        f"run's ranks are stopped and it fails (default: {DEFAULT_RUN_TIMEOUT} s, 12 hours)",
    )
    run.add_argument("--force", action="store_true", help="rerun runs that already have a record")
    run.add_argument(
        "--dry-run", action="store_true", help="print the run ids, one a line, and execute nothing"
    )
    run.add_argument("--no-report", action="store_true", help="skip the report notebook")
    run.add_argument(
        "--slots",
        type=int,
        default=None,
        metavar="N",
        help="pack the study: N runs' worth of slots at once on this machine (default: one per "
        "GPU found; without GPUs one run at a time); a 2-rank run takes 2 slots",
    )
    run.add_argument(
        "--hosts",
        default="",
        metavar="HOSTS",
        help="pack the study onto slots on these hosts over ssh, 'hostA:4,hostB:4' (slots per "
        "host); `-p IPP_CLUSTER_FILE FILE` packs it onto that running cluster's engines",
    )
    run.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show each notebook's cell progress and its kernel's own output (quietly, "
        "that goes to runs/<run_id>.kernel.log; all cell output is in runs/<run_id>.ipynb)",
    )
    run.add_argument(
        "--outputs",
        default="outputs",
        metavar="DIR",
        help="folder that holds <STUDY>/ (default: outputs, relative to the project)",
    )
    bench = commands.add_parser(
        "bench",
        help="run the performance benchmarks",
        description="Run the benchmarks (launchers, pipeline, resolution, threads, allreduce, "
        "scripts, tensorboard, packing, overhead); write one JSON each into --out and print "
        "every goal.",
    )
    level = bench.add_mutually_exclusive_group()
    level.add_argument(
        "--quick",
        action="store_true",
        help="fewer sizes and repeats: about 15 min on 2 cores without scripts (launchers alone "
        "8.5; scripts 7 on a loaded VM)",
    )
    level.add_argument(
        "--tiny", action="store_true", help="structure only, in seconds (used by the tests)"
    )
    bench.add_argument(
        "--only",
        default="",
        metavar="NAMES",
        help="comma-separated subset: launchers,pipeline,resolution,threads,allreduce,scripts,"
        "tensorboard,packing",
    )
    bench.add_argument(
        "--out",
        default="outputs/bench",
        metavar="DIR",
        help="folder for the JSON files (default: outputs/bench, relative to the project)",
    )
    _add_cluster_parser(commands)
    return parser


def _positive_seconds(text: str) -> int:
    """``--run-timeout``'s value: a whole number of seconds, at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds >= 1")
    return int(text)


def _add_cluster_parser(commands: argparse._SubParsersAction) -> None:
    cluster = commands.add_parser(
        "cluster",
        help="start or stop a cluster of engines that outlives this command",
        description="Start a controller and engines (here, or over ssh on --hosts) that keep "
        "running after this command; attach notebooks and studies to it with "
        "IPP_CLUSTER_FILE=<the printed path>, and stop it with `cluster stop <path>`.",
    )
    actions = cluster.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = actions.add_parser("start", help="start a cluster; print its cluster file")
    start.add_argument(
        "-n", type=int, default=0, metavar="N", help="engines (default: --hosts' slots, else 2)"
    )
    start.add_argument(
        "--hosts", default="", metavar="HOSTS", help="'hostA:2,hostB:2' (ssh); default: here"
    )
    start.add_argument(
        "--slurm",
        type=int,
        default=0,
        metavar="N",
        help="submit N engines as one Slurm job (from a login node; the controller runs here)",
    )
    start.add_argument(
        "--remote-python",
        default="",
        metavar="PATH",
        help="interpreter on the hosts (default: this one's path)",
    )
    start.add_argument(
        "--rendezvous-addr",
        default="auto",
        metavar="ADDR",
        help="address of this machine the engines reach (default: found over ssh, or, with "
        "--slurm, this machine's address towards Slurm's controller)",
    )
    stop = actions.add_parser("stop", help="stop the cluster of a cluster file, on every host")
    stop.add_argument("cluster_file", metavar="FILE", help="the path `cluster start` printed")


def _cluster(args: argparse.Namespace) -> int:
    from hiresmed_nb.cluster import command

    if args.action == "start":
        started = command.start_detached(
            args.n, args.hosts, args.remote_python, args.rendezvous_addr, args.slurm
        )
        print(started.description, file=sys.stderr)
        print(started.cluster_file)
        return 0
    print(command.stop(args.cluster_file), file=sys.stderr)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from hiresmed_nb import bench

    level = "tiny" if args.tiny else "quick" if args.quick else "full"
    only = [name.strip() for name in args.only.split(",") if name.strip()] or bench.BENCHMARKS
    command = "python -m hiresmed_nb bench" + (f" --{level}" if level != "full" else "")
    command += f" --only {args.only}" if args.only else ""
    command += f" --out {args.out}" if args.out != "outputs/bench" else ""
    written = bench.run_suite(level, only, args.out, command)
    measured = bench.load_results(args.out)
    for line in bench.goal_lines({name: measured[name] for name in only}):
        print(line)
    for path in written:
        print(path)
    return 0


def _param_path(name: str) -> Path:
    """A parameter file as given (relative to the cwd) or, failing that, in the project."""
    path = Path(name).expanduser()
    return path if path.exists() else resolve_path(path)


def _run(args: argparse.Namespace) -> int:
    from hiresmed_nb import study

    files = [_param_path(f) for f in [args.params_file, *args.more_files]]
    overrides = [tuple(pair) for pair in args.overrides]
    if args.run_timeout is not None:
        overrides.append(("RUN_TIMEOUT", str(args.run_timeout)))
    name, runs = study.plan(files, overrides)
    if args.dry_run:
        try:
            for run in runs:
                print(run.run_id)
            sys.stdout.flush()
        except BrokenPipeError:  # e.g. piped into head: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    study_dir = resolve_path(args.outputs) / name
    given = dict(args.overrides)
    slots = study.SlotRequest(args.slots, args.hosts, given.get("IPP_CLUSTER_FILE", ""))
    result = study.run_study(
        runs,
        study_dir,
        force=args.force,
        report=not args.no_report,
        root=project_root(),
        verbose=args.verbose,
        slots=slots,
    )
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m hiresmed_nb`` and of ``hiresmed``; returns the exit code."""
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "cluster":
            return _cluster(args)
        if args.command == "bench":
            return _bench(args)
    except HiresmedError as error:
        print(f"hiresmed: error: {error}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects unknown ones


if __name__ == "__main__":
    sys.exit(main())
