"""Figures for the report: the paper's Figure 2 replica and the resolution x data-size heat maps."""

from __future__ import annotations

import warnings

import pandas as pd

from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.science.report.load import (
    base_rates,
    check_metric,
    has_lr_axis,
    is_synthetic,
    ordered_modes,
)
from hiresmed_nb.science.report.tables import format_lr


def _title(text: str, records: pd.DataFrame) -> str:
    return text.replace(":", " (synthetic data):", 1) if is_synthetic(records) else text


def plot_figure2(records: pd.DataFrame, metric: str = "accuracy"):
    """The Figure 2 replica: metric (%) against resolution, one colour per arm.

    One panel per architecture (columns) and data size (rows); points are seed means, error bars
    one standard deviation over seeds; a study sweeping LEARNING_RATE draws one line style per
    rate. Returns the seaborn ``FacetGrid``. Raises :class:`HiresmedError` for no records.
    """
    import seaborn as sns

    check_metric(metric)
    if records.empty:
        raise HiresmedError("no records to plot: the study has no successful run yet")
    data = records.assign(
        **{
            "percent": 100 * records[metric],
            "data size": records["dataset"]
            + ", "
            + records["images_per_class"].astype(str)
            + " images/class",
            "learning rate": base_rates(records).map(format_lr),
        }
    )
    with warnings.catch_warnings():
        # seaborn 0.13's error bars call float() on one-element Series (pandas FutureWarning)
        warnings.filterwarnings("ignore", "Calling float on a single element", FutureWarning)
        grid = _relplot(sns, data, has_lr_axis(records))
    grid.set_titles("{col_name}\n{row_name}")
    sizes = sorted(data["image_size"].unique())
    for ax in grid.axes.flat:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
    grid.set_axis_labels("resolution (px)", f"{metric.replace('_', ' ')} (%)")
    title = _title(f"Figure 2 replica: {metric.replace('_', ' ')} against resolution", records)
    grid.figure.suptitle(title, y=1.0, va="bottom")
    return grid


def _relplot(sns, data: pd.DataFrame, lr_axis: bool):
    """seaborn's relplot of percent against image size, one colour per arm (see plot_figure2)."""
    return sns.relplot(
        data=data,
        x="image_size",
        y="percent",
        hue="mode",
        hue_order=ordered_modes(data["mode"]),
        style="learning rate" if lr_axis else None,
        col="arch",
        row="data size",
        kind="line",
        marker="o",
        errorbar="sd",
        err_style="bars",
        height=3.2,
        aspect=1.3,
        facet_kws={"sharey": False},
    )


def heatmap_tables(records: pd.DataFrame, metric: str = "accuracy") -> dict[tuple, pd.DataFrame]:
    """Mean metric (%) per panel: images per class (rows, most at the top) x resolution
    (columns). Panel keys are (dataset, arch, arm) plus the learning rate when swept; NaN where
    a cell was not run."""
    check_metric(metric)
    data = records.assign(percent=100 * records[metric], lr=base_rates(records).map(format_lr))
    keys = ["dataset", "arch", "mode", *(["lr"] if has_lr_axis(records) else [])]
    tables = {}
    for key, group in data.groupby(keys, sort=True):
        table = group.pivot_table(
            index="images_per_class", columns="image_size", values="percent", aggfunc="mean"
        )
        tables[key] = table.sort_index(ascending=False).sort_index(axis=1)
    return tables


def plot_heatmaps(records: pd.DataFrame, metric: str = "accuracy"):
    """One heat map per arm (columns) and architecture (rows; per dataset and swept learning
    rate): images per class against resolution, colour and number = mean metric (%) over seeds,
    one colour scale for all panels. Returns the matplotlib ``Figure``."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if records.empty:
        raise HiresmedError("no records to plot: the study has no successful run yet")
    tables = heatmap_tables(records, metric)
    arms = ordered_modes({key[2] for key in tables})
    rows = sorted({(key[0], key[1], *key[3:]) for key in tables})
    values = pd.concat([t.stack() for t in tables.values()])
    vmin, vmax = float(values.min()), float(values.max())
    fig, axes = plt.subplots(
        len(rows),
        len(arms),
        figsize=(3.4 * len(arms) + 1.2, 2.8 * len(rows) + 0.6),
        squeeze=False,
        constrained_layout=True,
    )
    for i, row in enumerate(rows):
        for j, arm in enumerate(arms):
            ax = axes[i][j]
            table = tables.get((row[0], row[1], arm, *row[2:]))
            if table is None:
                ax.axis("off")
                continue
            sns.heatmap(
                table,
                annot=True,
                fmt=".1f",
                cmap="viridis",
                vmin=vmin,
                vmax=vmax,
                cbar=False,
                linewidths=0.5,
                ax=ax,
            )
            rate = f", lr {row[2]}" if len(row) > 2 else ""
            ax.set_title(f"{arm}\n{row[1]} on {row[0]}{rate}", fontsize=9)
            ax.set_xlabel("resolution (px)")
            ax.set_ylabel("images per class")
            ax.tick_params(axis="y", rotation=0)
    mappable = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(vmin, vmax))
    fig.colorbar(mappable, ax=axes, shrink=0.8, label=f"mean {metric.replace('_', ' ')} (%)")
    fig.suptitle(
        _title(f"Heat maps: mean {metric.replace('_', ' ')} (%) over seeds", records), fontsize=11
    )
    return fig
