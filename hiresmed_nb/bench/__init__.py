"""Benchmarks: launchers, input pipeline, cost by resolution, ranks against threads, allreduce,
a Horovod script under horovodrun and %horovodrun, TensorBoard logging, packing a study on slots,
a study's overhead per run.

``python -m hiresmed_nb bench [--quick]`` runs each benchmark and writes one JSON per benchmark
to ``outputs/bench/<name>.json``; ``notebooks/03_benchmarks.ipynb`` draws them. Each holds the
machine (CPU model, cores, RAM, OS), the versions, the config, and every figure as the median and
spread (quartiles, min, max, n and the values) of repeated measurements, plus the project's goals
with whether each was met. Timing never enters a test; the tests check the helpers here.

One module per benchmark (:mod:`.launchers`, :mod:`.pipeline`, :mod:`.resolution`,
:mod:`.threads`, :mod:`.allreduce`, :mod:`.scripts`, :mod:`.tensorboard_cost`, :mod:`.packing`,
:mod:`.overhead`),
each holding what is measured and how it is summarised; the launchers' warm engines and 2-host
path in :mod:`.warm` and :mod:`.two_hosts`, what their ranks run in :mod:`.timed`;
:mod:`.timing` (clocks, summaries), :mod:`.machine` (CPU, versions, contention), :mod:`.goals`
(targets met or missed), :mod:`.suite` (levels, the run, the JSON files and their frames). The
measured work runs in fresh processes (:mod:`.process` starts :mod:`.worker`), so peak RSS
belongs to one config and TensorFlow's thread settings are fresh in each; the launch paths run it
on ipyparallel engines, and :mod:`.packing` runs a packed study of tiny notebooks through the
study runner.
"""

from hiresmed_nb.bench.goals import goal, goal_lines
from hiresmed_nb.bench.resolution import fit_memory, plan_batch_size
from hiresmed_nb.bench.suite import (
    BENCHMARKS,
    DEFAULT_DIR,
    LEVELS,
    figures_frame,
    goals_frame,
    load_results,
    run_suite,
    write_result,
)
from hiresmed_nb.bench.timing import GiB, summarize

__all__ = [
    "BENCHMARKS",
    "DEFAULT_DIR",
    "GiB",
    "LEVELS",
    "figures_frame",
    "fit_memory",
    "goal",
    "goal_lines",
    "goals_frame",
    "load_results",
    "plan_batch_size",
    "run_suite",
    "summarize",
    "write_result",
]
