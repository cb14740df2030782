"""Charts of evaluation results (matplotlib, Agg backend: no display needed)::

    from lealla_tf.evaluation import plots
    plots.bar_chart({"deu": 99.1, "fra": 95.0}, "tatoeba.png", title="Tatoeba accuracy")
    plots.scatter_chart({"deu": 97.8, "afr": 60.0}, {"deu": 94.7, "afr": 41.0},
                        "tatoeba_vs_teacher.png", groups={"teacher": ["deu"],
                                                          "other": ["afr"]})

See docs/evaluation.md, "Tatoeba" (``--output`` also writes the chart).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

# Colours of the groups of a scatter chart, in order (matplotlib's "tab10" start).
GROUP_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> None:
    import io

    from lealla_tf import fileio
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    fileio.atomic_write(path, png.getvalue())  # any tf.io.gfile path


def bar_chart(values: Mapping[str, float], path: str, title: str = "",
              ylabel: str = "accuracy (%)", average: Optional[float] = None,
              ylim: Optional[tuple] = (0, 100)) -> str:
    """Writes a PNG bar chart with one bar per key (e.g. per language).

    Args:
      values: label -> value, drawn in the given order.
      path: output ``.png`` file (its folder is created).
      title: chart title.
      ylabel: y-axis label.
      average: draw a dashed horizontal line at this value (e.g. the mean).
      ylim: y-axis limits; None lets matplotlib choose.

    Returns:
      ``path``.
    """
    plt = _pyplot()
    labels = list(values)
    heights = [float(values[k]) for k in labels]
    width = max(6.0, 0.16 * len(labels) + 1.5)
    fig, ax = plt.subplots(figsize=(width, 4.0))
    try:
        ax.bar(range(len(labels)), heights, color="#4C72B0", width=0.8)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=90, fontsize=7 if len(labels) > 40 else 9)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        if ylim is not None:
            ax.set_ylim(*ylim)
        if average is not None:
            ax.axhline(average, color="#C44E52", linestyle="--", linewidth=1,
                       label=f"average {average:.1f}")
            ax.legend(loc="lower left", fontsize=8)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)
    return path


def scatter_chart(x: Mapping[str, float], y: Mapping[str, float], path: str,
                  groups: Optional[Mapping[str, Sequence[str]]] = None,
                  group_titles: Optional[Mapping[str, str]] = None, title: str = "",
                  xlabel: str = "teacher accuracy (%)", ylabel: str = "student accuracy (%)",
                  lim: Optional[tuple] = (0, 100), labels: bool = True) -> str:
    """Writes a PNG scatter chart: one point per key of both ``x`` and ``y`` (e.g. per
    language: x the teacher's accuracy, y the student's), the diagonal ``y = x`` dashed.

    Args:
      x, y: label -> value.
      path: output ``.png`` file (its folder is created).
      groups: group -> labels; each group in its own colour, with a legend entry (title and
        number of points). Labels in no group are drawn grey.
      group_titles: group -> legend title (default: the group's name).
      title, xlabel, ylabel: chart title and axis labels.
      lim: limits of both axes; None lets matplotlib choose (from the points).
      labels: write each point's label beside it.

    Returns:
      ``path``.
    """
    plt = _pyplot()
    keys = [k for k in x if k in y]
    parts = []
    placed = set()
    for i, (group, members) in enumerate((groups or {}).items()):
        pts = [k for k in members if k in x and k in y and k not in placed]
        placed.update(pts)
        name = (group_titles or {}).get(group, group)
        parts.append((f"{name} ({len(pts)})", GROUP_COLOURS[i % len(GROUP_COLOURS)], pts))
    rest = [k for k in keys if k not in placed]
    if rest:
        parts.append((f"other ({len(rest)})" if groups else "", "#7f7f7f", rest))
    fig, ax = plt.subplots(figsize=(8.0, 8.0))
    try:
        values = [float(v) for k in keys for v in (x[k], y[k])]
        low, high = lim if lim is not None else (min(values, default=0.0),
                                                 max(values, default=1.0))
        ax.plot([low, high], [low, high], color="#444444", linestyle="--", linewidth=1,
                label="y = x")
        for label, colour, pts in parts:
            if not pts:
                continue
            ax.scatter([float(x[k]) for k in pts], [float(y[k]) for k in pts], s=18,
                       color=colour, label=label or None, alpha=0.85, zorder=3)
            if labels:
                for k in pts:
                    ax.annotate(k, (float(x[k]), float(y[k])), xytext=(2, 2),
                                textcoords="offset points", fontsize=6, color=colour)
        if lim is not None:
            ax.set_xlim(*lim)
            ax.set_ylim(*lim)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)
    return path
