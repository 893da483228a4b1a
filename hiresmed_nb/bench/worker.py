"""The entry point of the fresh processes the benchmarks start: one measured task each.

Each task takes a JSON config and returns a JSON-able dict;
:func:`hiresmed_nb.bench.process.run_worker` starts it and the benchmark modules summarise what it
returns. The same
:func:`~hiresmed_nb.bench.timed.timed_train` runs on ipyparallel engines
(``Pool().run(Placement(2), timed_train, config)``) and under Horovod's own launcher::

    horovodrun -np 2 --gloo -H localhost:2 --network-interface lo \\
        python -m hiresmed_nb.bench.worker timed-train --config CONFIG.json --out OUT.json

Only rank 0 writes ``--out``. Times are ``time.time()`` wall-clock seconds, so timestamps taken
in different processes on one host compare directly. Nothing imports this module: it is only run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hiresmed_nb.bench import allreduce, pipeline, resolution, tensorboard_cost, timed

TASKS = {
    "timed-train": timed.timed_train,
    "probe": resolution.probe,
    "pipeline": pipeline.time_variants,
    "allreduce-share": allreduce.allreduce_share,
    "tensorboard-cost": tensorboard_cost.step_times_with_and_without_logs,
}


def main(argv: list[str] | None = None) -> int:
    """Run ``task`` on the config in ``--config``; rank 0 writes the result to ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m hiresmed_nb.bench.worker")
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--config", required=True, help="JSON file with the task's config")
    parser.add_argument("--out", required=True, help="where rank 0 writes the result JSON")
    args = parser.parse_args(argv)
    result = TASKS[args.task](json.loads(Path(args.config).read_text()))
    if result.get("rank", 0) == 0:
        Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
