"""Charts of evaluation results (matplotlib, Agg backend: no display needed)::

    from lealla_tf.evaluation import plots
    plots.bar_chart({"deu": 99.1, "fra": 95.0}, "tatoeba.png", title="Tatoeba accuracy")

See docs/evaluation.md, "Tatoeba" (``--output`` also writes the chart).
"""

from __future__ import annotations

from typing import Mapping, Optional


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
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        import io

        from lealla_tf import fileio
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=120)
        fileio.atomic_write(path, png.getvalue())  # any tf.io.gfile path
    finally:
        plt.close(fig)
    return path
