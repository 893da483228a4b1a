"""A study: parameter files expanded into a grid of runs, each run one execution of 01_train.

- :mod:`.grid`: parameter files, overrides, the grid and its checks (``plan``, ``expand``).
- :mod:`.runner`: executing the runs and the report (``run_study``).
- :mod:`.executor`: executing one notebook with papermill, in a kernel of its own.
- :mod:`.kernels`: the runner's kernels, and spares that start and import ahead of their run.
- :mod:`.packing`, :mod:`.packed`, :mod:`.occupancy`: a packed study, several runs at once on
  slots (one engine per GPU or CPU share).
"""

from hiresmed_nb.study.grid import (
    RUNNER_KEYS,
    Run,
    apply_overrides,
    expand,
    load_param_files,
    plan,
    resolve_value,
    study_name,
)
from hiresmed_nb.study.packed import SlotRequest
from hiresmed_nb.study.runner import (
    REPORT_NOTEBOOK,
    TRAIN_NOTEBOOK,
    Executor,
    StudyResult,
    failure_record,
    is_rank_failure,
    mark_retry,
    render_report,
    run_study,
    summary_lines,
)

__all__ = [
    "REPORT_NOTEBOOK",
    "RUNNER_KEYS",
    "TRAIN_NOTEBOOK",
    "Executor",
    "Run",
    "SlotRequest",
    "StudyResult",
    "apply_overrides",
    "expand",
    "failure_record",
    "is_rank_failure",
    "load_param_files",
    "mark_retry",
    "plan",
    "render_report",
    "resolve_value",
    "run_study",
    "study_name",
    "summary_lines",
]
