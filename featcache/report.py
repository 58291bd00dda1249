"""What a comparison says: the summary table over seeds, the recommendation computed from it,
``report.md`` and the two plots. Everything here reads ``results.json``'s content; nothing trains.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .cells import budget_name
from .files import atomic_path, atomic_write_text

__all__ = ["summarise", "format_table", "recommend", "write_report"]


def summarise(results: dict) -> list[dict]:
    """One table line per (method, budget): mean and std over seeds of every figure."""
    rows = []
    groups: dict[tuple, list[dict]] = {}
    for c in results["cells"]:
        groups.setdefault((c["method"], budget_name(c["budget"])), []).append(c)
    for (method, budget), cs in groups.items():
        done = [c for c in cs if "skipped" not in c]
        row = {"method": method, "budget": budget, "seeds_run": len(done),
               "skipped": next((c["skipped"] for c in cs if "skipped" in c), None)}
        if done:
            acc = np.array([c["metrics"]["accuracy"] for c in done])
            row.update(accuracy=float(acc.mean()), accuracy_std=float(acc.std()),
                       macro_f1=float(np.mean([c["metrics"]["macro_f1"] for c in done])),
                       train_seconds=float(np.mean([c["train_seconds"] for c in done])),
                       peak_rss_mib=float(np.max([c["peak_rss_bytes"] for c in done]) / 2**20),
                       trainable_params=int(done[0]["trainable_params"]), n_train=int(done[0]["n_train"]),
                       n_test=int(np.sum(done[0]["metrics"].get("confusion_matrix", 0))))
        rows.append(row)
    order = {m: i for i, m in enumerate(results["methods"])}
    budgets = {b: i for i, b in enumerate(results["budgets"])}
    return sorted(rows, key=lambda r: (budgets.get(r["budget"], 99), order.get(r["method"], 99)))


def _accuracy(r: dict) -> str:
    """Mean ± std over seeds; a single seed has no spread to show, so none is printed."""
    return f"{r['accuracy']:.4f} ± {r['accuracy_std']:.4f}" if r["seeds_run"] > 1 else f"{r['accuracy']:.4f}"


def format_table(rows: list[dict]) -> str:
    """The summary as a plain-text table (the CLI and the benchmark print it)."""
    lines = [f"{'method':<8}{'labels/class':>13}{'accuracy':>18}{'macro-F1':>10}{'train s':>9}{'peak MiB':>10}"
             f"{'trainable':>12}"]
    for r in rows:
        if "accuracy" in r:
            lines.append(f"{r['method']:<8}{r['budget']:>13}{_accuracy(r):>18}{r['macro_f1']:>10.4f}"
                         f"{r['train_seconds']:>9.1f}{r['peak_rss_mib']:>10.0f}{r['trainable_params']:>12,}")
        else:
            lines.append(f"{r['method']:<8}{r['budget']:>13}  skipped: {r['skipped']}")
    return "\n".join(lines)


def recommend(rows: list[dict], within: float = 0.01) -> list[str]:
    """Per budget: the cheapest method (train time) whose accuracy is within ``within`` of the best."""
    lines = []
    for budget in dict.fromkeys(r["budget"] for r in rows):
        done = [r for r in rows if r["budget"] == budget and "accuracy" in r]
        if not done:
            continue
        best = max(done, key=lambda r: r["accuracy"])
        close = [r for r in done if r["accuracy"] >= best["accuracy"] - within]
        cheap = min(close, key=lambda r: r["train_seconds"])
        label = "all labels" if budget == "all" else f"{budget} labels per class"
        if cheap is best:
            lines.append(f"- {label}: **{best['method']}** is both the most accurate ({best['accuracy']:.3f}) and the "
                         f"cheapest within {100 * within:.0f} point ({best['train_seconds']:.1f} s).")
        else:
            ratio = best["train_seconds"] / max(cheap["train_seconds"], 1e-9)
            saving = f"at {ratio:.0f}x less training time." if ratio >= 1.5 else "at about the same training time."
            lines.append(f"- {label}: **{cheap['method']}** ({cheap['accuracy']:.3f}, {cheap['train_seconds']:.1f} s) "
                         f"is within {100 * within:.0f} point of the best, {best['method']} ({best['accuracy']:.3f}, "
                         f"{best['train_seconds']:.1f} s), {saving}")
        if best["seeds_run"] < 2 and best.get("n_test"):
            # one run: the only spread we know is the test set's sampling error of the best accuracy
            half = 1.96 * np.sqrt(best["accuracy"] * (1 - best["accuracy"]) / best["n_test"])
            lines[-1] += (f" One seed on {best['n_test']} test images: ±{100 * half:.1f} points (95%), so gaps "
                          f"smaller than that are not resolved; use --seeds to measure the spread.")
    return lines


def write_report(results: dict, out: Path) -> None:
    """report.md with the measured table and a recommendation from it, and the two plots."""
    rows = summarise(results)
    lines = [f"# featcache compare: {Path(results['store']).name}", "",
             f"Store `{results['store']}` (fingerprint {results['store_fingerprint'][:12]}), "
             f"{results['seeds']} seed(s); accuracy is mean ± std over seeds on the test split (no ± with one seed).",
             "",
             "| method | labels/class | accuracy | macro-F1 | train time (s) | peak memory (MiB) | trainable params |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "accuracy" in r:
            lines.append(f"| {r['method']} | {r['budget']} | {_accuracy(r)} | "
                         f"{r['macro_f1']:.4f} | {r['train_seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
                         f"{r['trainable_params']:,} |")
        else:
            lines.append(f"| {r['method']} | {r['budget']} | skipped: {r['skipped']} | | | | |")
    lines += ["", "Train time is the head's sweep and refit (cached features), or the fine-tune's training epochs; "
              "extraction is paid once for every head. Peak memory is the process's peak resident set during the "
              "cell.", "", "## Recommendation (cheapest method within 1 point of the best, per budget)", ""]
    lines += recommend(rows) or ["- no finished cells yet"]
    lines += ["", "![accuracy vs labels per class](accuracy_vs_labels.png)",
              "![accuracy vs training time](accuracy_vs_time.png)", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    _plots(rows, results, out)


def _plots(rows: list[dict], results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "accuracy" in r]
    n_all = max((r["n_train"] for r in done if r["budget"] == "all"), default=None)
    n_classes = None
    for r in done:
        if r["budget"] != "all" and r["n_train"]:
            n_classes = r["n_train"] / int(r["budget"])

    def x_of(r):
        if r["budget"] != "all":
            return int(r["budget"])
        return (n_all / n_classes) if (n_all and n_classes) else math.nan

    def save(fig, ax, xlabel: str, name: str) -> None:
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in results["methods"]:
        pts = sorted((x_of(r), r["accuracy"], r["accuracy_std"]) for r in done if r["method"] == method)
        if pts:
            xs, ys, es = zip(*pts, strict=True)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)
    save(fig, ax, "labelled examples per class ('all' at the train split's mean per class)", "accuracy_vs_labels.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in results["methods"]:
        pts = [(r["train_seconds"], r["accuracy"], r["budget"]) for r in done if r["method"] == method]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=method)
            for x, y, b in pts:
                ax.annotate(b, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    save(fig, ax, "training time (s, log scale)", "accuracy_vs_time.png")
