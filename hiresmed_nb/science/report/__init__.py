"""The study report: records into answers, tables and figures, for ``notebooks/02_report.ipynb``.

Pure functions over the JSON records ``notebooks/01_train.ipynb`` writes; records hold
fractions, everything shown is in percent. One module per concern:

- :mod:`.load`: records, failures, retried runs, the paper's Table 2
- :mod:`.stats`: seed means, t-intervals, paired differences
- :mod:`.answers`: the evidence for the paper's three questions
- :mod:`.family`: comparisons of one family tested together (Holm's step-down)
- :mod:`.verdicts`: one verdict per question, evidence as display tables
- :mod:`.decomposition`: Q2's batch part against distribution part
- :mod:`.optimum`: the best resolution (Q3) and learning rate, by intervals
- :mod:`.paper`: the paper's text and its whole Table 2 read by the same rules
- :mod:`.section`: the Answers section, with the paper's own answers
- :mod:`.tables`: the Table 2 replica, tables whose numbers never wrap
- :mod:`.figures`: the Figure 2 replica and the heat maps
- :mod:`.findings`: plain sentences, data locality, cost, retries

Every comparative word (higher, beats, best, larger) comes from a paired 95% interval that
excludes zero, and where a headline summarises several comparisons, from their verdicts adjusted
together so that it holds at 95% for the whole family; without intervals (one seed, the paper's
one run per cell) directions are counted and said to be directions only.

Everything is re-exported here:
``from hiresmed_nb.science import report; report.load_records(...)``.
"""

from hiresmed_nb.science.report.answers import (
    best_learning_rates,
    prepare,
    q1_pairs,
    q2_comparisons,
    q3_best_resolution,
)
from hiresmed_nb.science.report.decomposition import (
    decompose,
    decomposition_sentence,
    decomposition_table,
    larger_part,
)
from hiresmed_nb.science.report.family import (
    ADJUSTMENT_SENTENCE,
    FAMILY_LEVEL,
    adjusted_verdicts,
    holm_p_values,
)
from hiresmed_nb.science.report.figures import heatmap_tables, plot_figure2, plot_heatmaps
from hiresmed_nb.science.report.findings import (
    best_resolution,
    data_locality,
    distributed_vs_serial,
    lever_comparisons,
    retries,
    usage,
)
from hiresmed_nb.science.report.load import (
    CELL,
    METRICS,
    MODES,
    OPTIONAL_COLUMNS,
    PAPER_TABLE,
    RECORD_COLUMNS,
    SETTING,
    SYNTHETIC_WARNING,
    arm,
    base_rates,
    check_metric,
    has_lr_axis,
    is_synthetic,
    load_failures,
    load_paper_table,
    load_records,
    ordered_modes,
    paper_accuracy,
    paper_cells_covered,
    paper_records,
    retried_runs,
)
from hiresmed_nb.science.report.optimum import (
    lr_sentences,
    q3_headline,
    q3_sentence,
    resolution_sentences,
)
from hiresmed_nb.science.report.paper import PAPER_TEXT, PAPER_TEXT_FILE, paper_answers
from hiresmed_nb.science.report.section import answers_html
from hiresmed_nb.science.report.stats import (
    HIGHER,
    LOWER,
    NO_INTERVAL,
    NO_SPREAD,
    NOISE,
    ONE_SEED,
    Difference,
    format_points,
    format_value,
    mean_ci,
    paired_difference,
    summarise,
)
from hiresmed_nb.science.report.tables import (
    banner_html,
    format_lr,
    frame_html,
    table2,
    table2_caption,
    table2_html,
)
from hiresmed_nb.science.report.verdicts import (
    QUESTIONS,
    overall,
    q1_headline,
    q1_sentence,
    q2_headline,
    q2_sentences,
)

__all__ = [
    "ADJUSTMENT_SENTENCE",
    "FAMILY_LEVEL",
    "CELL",
    "HIGHER",
    "LOWER",
    "METRICS",
    "MODES",
    "NOISE",
    "NO_INTERVAL",
    "NO_SPREAD",
    "ONE_SEED",
    "OPTIONAL_COLUMNS",
    "PAPER_TABLE",
    "PAPER_TEXT",
    "PAPER_TEXT_FILE",
    "QUESTIONS",
    "RECORD_COLUMNS",
    "SETTING",
    "SYNTHETIC_WARNING",
    "Difference",
    "adjusted_verdicts",
    "answers_html",
    "arm",
    "banner_html",
    "base_rates",
    "best_learning_rates",
    "best_resolution",
    "check_metric",
    "data_locality",
    "decompose",
    "decomposition_sentence",
    "decomposition_table",
    "distributed_vs_serial",
    "format_lr",
    "format_points",
    "format_value",
    "frame_html",
    "has_lr_axis",
    "heatmap_tables",
    "holm_p_values",
    "is_synthetic",
    "larger_part",
    "lever_comparisons",
    "load_failures",
    "lr_sentences",
    "load_paper_table",
    "load_records",
    "mean_ci",
    "ordered_modes",
    "overall",
    "paired_difference",
    "paper_accuracy",
    "paper_answers",
    "paper_cells_covered",
    "paper_records",
    "plot_figure2",
    "plot_heatmaps",
    "prepare",
    "q1_pairs",
    "q1_headline",
    "q1_sentence",
    "q2_comparisons",
    "q2_headline",
    "q2_sentences",
    "q3_best_resolution",
    "q3_headline",
    "q3_sentence",
    "resolution_sentences",
    "retried_runs",
    "retries",
    "summarise",
    "table2",
    "table2_caption",
    "table2_html",
    "usage",
]
