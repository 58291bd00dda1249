"""What ``compare`` and ``finetune`` hand back: objects a notebook displays and slices, and the one place that writes
a comparison's reports (report.md with its PNGs, report.html), so ``compare`` and ``featcache report`` agree.

pandas is optional (``pip install 'featcache[notebook]'``): only ``to_frame`` needs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from html import escape
from pathlib import Path

from .cells import budget_name
from .errors import InputError
from .figures import plots
from .files import atomic_path
from .page import summary_html, write_page
from .report import recommendations, summarise, total_seconds, write_markdown

__all__ = ["CompareResult", "write_reports", "rebuild_reports", "finetune_frame", "finetune_plot", "finetune_html"]


def _pandas():
    try:
        import pandas
    except ImportError:
        raise ImportError("to_frame needs pandas: pip install 'featcache[notebook]'") from None
    return pandas


def write_reports(results: dict, out: str | os.PathLike) -> Path:
    """report.md, its PNG plots and report.html in ``out``, from results.json's content; returns the page's path."""
    out = Path(out)
    figures = plots(results, summarise(results))
    for plot in figures:
        with atomic_path(out / f"{plot.name}.png") as tmp:
            plot.figure.savefig(tmp, dpi=110, format="png")
    write_markdown(results, out)
    return write_page(results, out, figures)


def _read_results(folder: Path) -> dict:
    path = folder / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{folder} holds no results.json (is it a compare folder?)") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is unreadable ({exc.__class__.__name__}: {exc})") from None
    needed = ("store", "store_fingerprint", "methods", "budgets", "seeds", "cells")
    if (not isinstance(results, dict) or any(k not in results for k in needed)
            or not isinstance(results["cells"], list) or not all(isinstance(c, dict) for c in results["cells"])):
        raise InputError(f"{path} is not a featcache compare results file")
    return results


def rebuild_reports(folder: str | os.PathLike) -> Path:
    """Write the reports again from ``folder/results.json`` alone (no cell is recomputed); returns report.html."""
    folder = Path(folder)
    return write_reports(_read_results(folder), folder)


class CompareResult(Mapping):
    """A finished comparison. Reads like the results.json dict (``res["cells"]``); in a notebook,
    ``to_frame()`` is the cells as a DataFrame, ``recommendation`` the computed text, ``plot()`` the figures,
    and the object itself displays as the report's summary."""

    def __init__(self, results: dict, folder: str | os.PathLike | None = None):
        self.results = results
        self.folder = Path(folder if folder is not None else results["out"])

    @classmethod
    def load(cls, folder: str | os.PathLike) -> CompareResult:
        """An earlier comparison, from its folder's results.json (nothing is recomputed)."""
        return cls(_read_results(Path(folder)), folder)

    def __getitem__(self, key: str):
        return self.results[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __repr__(self) -> str:
        done = sum("skipped" not in c for c in self.results["cells"])
        return f"CompareResult({done} cells finished, {len(self.results['cells']) - done} skipped, in {self.folder})"

    @property
    def report(self) -> Path:
        return self.folder / "report.html"

    @property
    def recommendation(self) -> str:
        """One sentence per label budget: what to use, and the evidence."""
        return "\n".join(r.sentence() for r in recommendations(summarise(self.results), self.results))

    def to_frame(self):
        """One row per cell (method, budget, seed): its metrics, times and size; skipped cells with their reason."""
        rows = []
        for c in self.results["cells"]:
            row = {"method": c["method"], "kind": c.get("kind", "finetune"), "budget": budget_name(c["budget"]),
                   "seed": c.get("seed", 0)}
            if "skipped" in c:
                row["skipped"] = c["skipped"]
            else:
                m = c["metrics"]
                row.update(accuracy=m["accuracy"], macro_f1=m["macro_f1"],
                           balanced_accuracy=m.get("balanced_accuracy"), train_seconds=c["train_seconds"],
                           total_seconds=total_seconds(self.results, c), peak_rss_mib=c["peak_rss_bytes"] / 2**20,
                           trainable_params=c["trainable_params"], n_train=c["n_train"], n_test=m.get("n"))
            rows.append(row)
        return _pandas().DataFrame(rows)

    def plot(self) -> dict:
        """The report's figures (matplotlib), by name: accuracy_vs_labels, accuracy_vs_time, per_class."""
        return {p.name: p.figure for p in plots(self.results, summarise(self.results))}

    def _repr_html_(self) -> str:
        return summary_html(self.results) + f'<p class="note">Full report: {escape(str(self.report))}</p>'


def finetune_frame(record: dict):
    """A fine-tune's history, one row per epoch (loss, val accuracy, seconds)."""
    return _pandas().DataFrame(record["history"])


def finetune_plot(record: dict):
    """Training loss and val accuracy per epoch, the kept (best) epoch marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = [h["epoch"] + 1 for h in record["history"]]
    loss_ax.plot(epochs, [h["loss"] for h in record["history"]], marker="o", color="tab:blue")
    loss_ax.set(xlabel="epoch", ylabel="training loss")
    acc_ax.plot(epochs, [h["val_accuracy"] for h in record["history"]], marker="s", color="tab:orange")
    acc_ax.axvline(record["best_epoch"] + 1, color="0.3", linestyle=":", label="kept epoch")
    acc_ax.set(xlabel="epoch", ylabel="val accuracy")
    acc_ax.legend(fontsize=8)
    return fig


def finetune_html(record: dict, summary: str) -> str:
    """A fine-tune's summary line and test metrics as HTML (what a notebook cell shows)."""
    m = record["metrics"]
    cells = "".join(f"<tr><th scope=\"row\">{escape(k)}</th><td>{v:.4f}</td></tr>" for k, v in m.items()
                    if isinstance(v, float))
    return (f"<p>{escape(summary)}</p><table><caption>test split ({m['n']} images)</caption>"
            f"<tbody>{cells}</tbody></table>")
