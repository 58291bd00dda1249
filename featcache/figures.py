"""The comparison's plots as matplotlib figures: accuracy vs labels per class, accuracy vs total time with the
Pareto front, and per-class accuracy of the best head against the best fine-tune. The same figures become the
PNGs beside report.md, the inline SVGs of report.html and ``CompareResult.plot()``.

Figures are made with ``matplotlib.figure.Figure`` (no pyplot): no global state, no backend to choose, safe in
any process. Each method keeps one colour (tab10, chosen for colour-blind readers) *and* one marker, and heads
are solid lines, fine-tunes dashed, baselines (TF-IDF on a text store) dotted, so no distinction rests on colour
alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .report import best_pairs, budget_label, class_names, pareto_front, per_class

__all__ = ["Plot", "plots", "style_of"]

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")


@dataclass
class Plot:
    """A figure, its file name and the text a reader who cannot see it gets instead (title and alt text)."""

    name: str
    title: str
    alt: str
    figure: object  # matplotlib.figure.Figure


def style_of(methods: list[str], method: str, kind: str) -> dict:
    """Colour, marker and line style of a method: the same in every plot of a report."""
    from matplotlib import colormaps

    i = methods.index(method) if method in methods else len(methods)
    return {"color": colormaps["tab10"](i % 10), "marker": MARKERS[i % len(MARKERS)],
            "linestyle": {"head": "-", "baseline": ":"}.get(kind, "--")}


def _x_of(rows: list[dict]):
    """Labels per class as a number: 'all' sits at the train split's mean per class."""
    n_all = max((r["n_train"] for r in rows if r["budget"] == "all"), default=None)
    per = [r["n_train"] / int(r["budget"]) for r in rows if r["budget"] != "all" and r["n_train"]]
    n_classes = per[-1] if per else None
    return lambda r: int(r["budget"]) if r["budget"] != "all" else (n_all / n_classes if n_all and n_classes
                                                                    else math.nan)


def _new(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def accuracy_vs_labels(rows: list[dict], methods: list[str]) -> Plot:
    done = [r for r in rows if "accuracy" in r]
    x_of = _x_of(done)
    fig = _new(7.5, 4.2)
    ax = fig.add_subplot()
    alt = []
    for method in methods:
        pts = sorted((x_of(r), r["accuracy"], r["accuracy_std"], r["budget"], r["kind"]) for r in done
                     if r["method"] == method)
        if not pts:
            continue
        xs, ys, es, bs, kinds = zip(*pts, strict=True)
        ax.errorbar(xs, ys, yerr=es, capsize=3, label=method, **style_of(methods, method, kinds[0]))
        alt.append(f"{method}: " + ", ".join(f"{y:.3f} at {b}" for y, b in zip(ys, bs, strict=True)))
    ax.set_xscale("log")
    ticks = sorted({(x_of(r), r["budget"]) for r in done if not math.isnan(x_of(r))})
    if ticks:
        ax.set_xticks([x for x, _ in ticks], [b if b != "all" else f"all ({x:.0f})" for x, b in ticks])
        ax.minorticks_off()
    ax.set_xlabel("labelled examples per class (log scale; 'all' at the train split's mean per class)")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    if alt:
        fig.legend(loc="outside right upper", fontsize=8)
    return Plot("accuracy_vs_labels", "Test accuracy against labelled examples per class",
                "Line chart, one line per method (heads solid, fine-tunes dashed, baselines dotted), error bars "
                "over seeds. "
                + "; ".join(alt), fig)


def _plain_log_ticks(ax) -> None:
    """Seconds as plain numbers (0.4, 2, 30), not 4x10^-1; no labelled minor ticks to collide."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=6))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def accuracy_vs_cost(rows: list[dict], methods: list[str]) -> Plot:
    done = [r for r in rows if "accuracy" in r]
    budgets = list(dict.fromkeys(r["budget"] for r in done)) or ["-"]
    cols = min(len(budgets), 2)
    fig = _new(7, 3.6 * math.ceil(len(budgets) / cols))
    axes = fig.subplots(math.ceil(len(budgets) / cols), cols, squeeze=False, sharey=True).ravel()
    alt = []
    for ax, budget in zip(axes, budgets, strict=False):
        pts = [r for r in done if r["budget"] == budget]
        for r in pts:
            st = style_of(methods, r["method"], r["kind"])
            ax.scatter([r["total_seconds"]], [r["accuracy"]], color=st["color"], marker=st["marker"], s=45,
                       label=r["method"], zorder=3)
        front = [pts[i] for i in pareto_front([(r["total_seconds"], r["accuracy"]) for r in pts])]
        if front:
            ax.step([r["total_seconds"] for r in front], [r["accuracy"] for r in front], where="post", color="0.2",
                    linewidth=1, linestyle=":", zorder=2)
            ax.scatter([r["total_seconds"] for r in front], [r["accuracy"] for r in front], s=160,
                       facecolors="none", edgecolors="0.1", linewidths=1.2, zorder=4, label="Pareto front")
            alt.append(f"{budget_label(budget)}: Pareto front " + ", ".join(
                f"{r['method']} ({r['total_seconds']:.1f} s, {r['accuracy']:.3f})" for r in front))
        ax.set_xscale("log")
        _plain_log_ticks(ax)
        ax.set_title(budget_label(budget), fontsize=10)
        ax.set_xlabel("total time, s (log scale)")
        ax.grid(alpha=0.3)
    for ax in axes[len(budgets):]:
        ax.set_visible(False)
    axes[0].set_ylabel("test accuracy")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5), fontsize=8)
    return Plot("accuracy_vs_time", "Test accuracy against total time, Pareto front circled",
                "Scatter plots, one panel per label budget; a head's total time includes its share of the "
                "extraction; circled points form the Pareto front (nothing is both cheaper and more accurate). "
                + "; ".join(alt), fig)


def _tick(name: str, width: int = 40) -> str:
    """A class name as an axis label: ``$`` literal (matplotlib would read "$5 - $10" as maths, or fail on an
    unbalanced one) and cut to ``width`` characters (the page's tables keep the full name)."""
    name = name if len(name) <= width else name[: width - 1] + "…"
    return name.replace("$", r"\$")


def per_class_plot(results: dict, rows: list[dict], methods: list[str]) -> Plot:
    """Per budget, each class's accuracy under the best head and the best fine-tune, classes sorted by difference."""
    pairs = [(b, h, t) for b, h, t in best_pairs(rows) if h is not None and t is not None]
    n_classes = len(per_class(results, pairs[0][1]["method"], pairs[0][0])[0]) if pairs else 1
    fig = _new(7, max(2.2, 0.32 * n_classes + 1.3) * max(len(pairs), 1))
    axes = fig.subplots(max(len(pairs), 1), 1, squeeze=False).ravel()
    alt = []
    for ax, (budget, head, tune) in zip(axes, pairs, strict=False):
        acc_h, _ = per_class(results, head["method"], budget)
        acc_t, _ = per_class(results, tune["method"], budget)
        names = class_names(results, len(acc_h))
        order = sorted(range(len(names)), key=lambda i: acc_t[i] - acc_h[i])
        ys = range(len(order))
        ax.hlines(ys, [acc_h[i] for i in order], [acc_t[i] for i in order], color="0.6", linewidth=1.5)
        for r, acc in ((head, acc_h), (tune, acc_t)):
            st = style_of(methods, r["method"], r["kind"])
            ax.scatter([acc[i] for i in order], ys, color=st["color"], marker=st["marker"], s=40, zorder=3,
                       label=f"{r['method']} ({'head' if r['kind'] == 'head' else 'fine-tune'})")
        ax.set_yticks(list(ys), [_tick(names[i]) for i in order], fontsize=8)
        ax.set_title(f"{budget_label(budget)}: {head['method']} vs {tune['method']}", fontsize=10)
        ax.set_xlabel("accuracy of the class (recall), summed over seeds")
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=8, loc="lower right")
        diffs = sorted(((acc_t[i] - acc_h[i], names[i]) for i in range(len(names))), reverse=True)
        alt.append(f"{budget_label(budget)}: {tune['method']} ahead most on {diffs[0][1]} "
                   f"({100 * diffs[0][0]:+.1f} points), {head['method']} ahead most on {diffs[-1][1]} "
                   f"({100 * diffs[-1][0]:+.1f} points)")
    if not pairs:
        axes[0].text(0.5, 0.5, "needs a finished head and a finished fine-tune at the same budget", ha="center",
                     va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    return Plot("per_class", "Per-class accuracy: best head against best fine-tune",
                "Dot plot per label budget, one row per class, the two methods' accuracy joined by a line. "
                + ("; ".join(alt) if alt else "No budget has both a finished head and a finished fine-tune."), fig)


def plots(results: dict, rows: list[dict]) -> list[Plot]:
    """Every plot of the report, in the page's order."""
    methods = list(results["methods"])
    return [accuracy_vs_labels(rows, methods), accuracy_vs_cost(rows, methods), per_class_plot(results, rows, methods)]
