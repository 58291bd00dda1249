"""A ranking's outputs: ``ranking.json`` (one entry per candidate), ``ranking.md``, the accuracy-vs-cost plot
(``ranking_cost.png``, Pareto front marked, std over seeds as error bars), the self-contained ``ranking.html``,
the one-sentence recommendation, and :class:`RankResult`, what ``featcache.rank`` hands back to a notebook.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from html import escape
from pathlib import Path

import numpy as np

from .candidates import RANDOM, Candidate
from .errors import InputError
from .figures import MARKERS, Plot
from .files import atomic_path, atomic_write_json, atomic_write_text, utc_now
from .grid import GridRun
from .page import CSS, svg_of
from .report import budget_label, pareto_front
from .run_record import machine
from .store import FeatureStore

__all__ = ["RankResult", "build_ranking", "write_ranking", "recommendation", "ranking_plot", "kendall_tau"]


def _entry(c: Candidate, cells: list[dict], path: Path, record: dict) -> dict:
    """One candidate's line of ranking.json: identity, LogME, the probe per budget (mean and std over seeds), cost."""
    with FeatureStore(path) as fs:
        attrs, dim, rows = fs.attrs, fs.dim(c.layer), fs.n_rows
    ips = record.get("images_per_s") or (rows / attrs["extract_seconds"] if attrs.get("extract_seconds") else None)
    score = next((x for x in cells if x["method"] == "logme" and "score" in x), None)
    probes: dict[str, list[dict]] = {}
    for x in cells:
        if x["method"] != "logme" and "metrics" in x:
            probes.setdefault("all" if x["budget"] is None else str(x["budget"]), []).append(x)
    probe = {b: {"mean": float(np.mean([x["metrics"]["accuracy"] for x in xs])),
                 "std": float(np.std([x["metrics"]["accuracy"] for x in xs])), "seeds": len(xs)}
             for b, xs in probes.items()}
    heads = [x["train_seconds"] for xs in probes.values() for x in xs]
    return {"tag": c.tag, "label": c.label, "backbone": c.backbone, "weights": c.weights or "pretrained",
            "image_size": int(attrs.get("preprocessing", {}).get("input_size", c.image_size or 0)) or c.image_size,
            "layer": c.layer, "dim": dim, "weights_sha256": attrs.get("weights_sha256"),
            "extract_images_per_s": ips, "extract_seconds_per_1000": 1000 / ips if ips else None,
            "store": str(path), "store_bytes": path.stat().st_size, "logme": score["score"] if score else None,
            "logme_seconds": score["train_seconds"] if score else None, "probe": probe,
            "head_seconds": float(np.mean(heads)) if heads else None}


def kendall_tau(candidates: list[dict], budget: str) -> float | None:
    """Kendall's tau between LogME and the measured probe at ``budget`` (None with fewer than 3 candidates)."""
    pairs = [(c["logme"], c["probe"][budget]["mean"]) for c in candidates
             if c["logme"] is not None and budget in c["probe"]]
    if len(pairs) < 3:
        return None
    from scipy.stats import kendalltau

    tau = kendalltau(*zip(*pairs, strict=True)).statistic
    return None if math.isnan(tau) else float(tau)


def build_ranking(candidates: list[Candidate], grid: GridRun, stores: dict[str, tuple[Path, dict]], *,
                  budgets: list[str], seeds: int, source: str, halving: dict | None, extracted: list[str]) -> dict:
    """ranking.json's content: the candidates best first (probe at the largest budget), the recommendation."""
    entries = [_entry(c, grid.cells.get(c.tag, []), *stores[c.tag]) for c in candidates]
    decisive = budgets[-1]
    entries.sort(key=lambda e: -(e["probe"].get(decisive, {}).get("mean", -1.0)))
    ranking = {"source": source, "budgets": budgets, "seeds": seeds, "decisive_budget": decisive,
               "candidates": entries, "logme_probe_kendall_tau": kendall_tau(entries, decisive),
               "computed": grid.computed, "extracted": extracted, "halving": halving,
               "created_at": utc_now(), "machine": machine()}
    ranking["recommendation"] = recommendation(ranking)
    return ranking


def _per_1000(c: dict) -> str:
    s = c.get("extract_seconds_per_1000")
    return "an unknown time" if s is None else f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


# long: one sentence assembled from its clauses (winner, margin, spread, cost, LogME), each a case or two
def recommendation(ranking: dict) -> str:
    """Which candidate, by how much, whether within the seed spread, its cost per 1,000 images against the
    runner-up, and whether LogME agrees with the measured probe."""
    b = ranking["decisive_budget"]
    done = [c for c in ranking["candidates"] if b in c["probe"]]
    if not done:
        return "No candidate has a finished probe yet; run the same command again to finish the ranking."
    best = done[0]
    acc = f"{best['probe'][b]['mean']:.3f}"
    head = f"Use {best['label']}: probe accuracy {acc} at {budget_label(b)}"
    if best["weights"] == RANDOM:
        head += " (the random-init floor: pretraining does not help on this data)"
    if len(done) == 1:
        return head + ", the only candidate measured."
    second = done[1]
    gap = best["probe"][b]["mean"] - second["probe"][b]["mean"]
    spread = max(best["probe"][b]["std"], second["probe"][b]["std"])
    if ranking["seeds"] < 2:
        judged = "with one seed there is no spread to judge that by"
    elif gap <= spread:
        judged = f"within the seed spread (±{spread:.3f}), so the two are not told apart"
    else:
        judged = f"beyond the seed spread (±{spread:.3f})"
    text = (f"{head}, {100 * gap:.1f} points above the runner-up {second['label']} "
            f"({second['probe'][b]['mean']:.3f}), {judged}; it extracts 1,000 images in {_per_1000(best)} "
            f"against {_per_1000(second)} for the runner-up")
    scored = [c for c in done if c["logme"] is not None]
    if scored:
        top = max(scored, key=lambda c: c["logme"])
        text += ("; LogME agrees" if top["tag"] == best["tag"] else
                 f"; LogME disagrees: it ranks {top['label']} first (trust the measured probe)")
    return text + "."


def ranking_plot(ranking: dict) -> Plot:
    """Probe accuracy against extraction seconds per 1,000 images, one marker per budget, std as error bars,
    the Pareto front of the largest budget drawn as a step line."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.4), layout="constrained")
    ax = fig.add_subplot()
    cands = [c for c in ranking["candidates"] if c["extract_seconds_per_1000"]]
    alt = []
    for i, b in enumerate(ranking["budgets"]):
        pts = [(c["extract_seconds_per_1000"], c["probe"][b]["mean"], c["probe"][b]["std"], c) for c in cands
               if b in c["probe"]]
        if not pts:
            continue
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt=MARKERS[i % len(MARKERS)],
                    color=colormaps["tab10"](i % 10), capsize=3, label=budget_label(b))
        alt += [f"{p[3]['label']} at {budget_label(b)}: {p[1]:.3f} ± {p[2]:.3f}, {p[0]:.1f} s per 1,000 images"
                for p in pts]
        if b == ranking["decisive_budget"]:
            front = [pts[j] for j in pareto_front([(p[0], p[1]) for p in pts])]
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="0.3", linestyle=":",
                    label="Pareto front")
            for p in pts:
                ax.annotate(p[3]["label"], (p[0], p[1]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    if cands and max(c["extract_seconds_per_1000"] for c in cands) > 8 * min(c["extract_seconds_per_1000"]
                                                                              for c in cands):
        ax.set_xscale("log")
    ax.set(xlabel="extraction: seconds per 1,000 images (this machine)", ylabel="probe test accuracy")
    ax.grid(alpha=0.3)
    if alt:
        ax.legend(fontsize=8, loc="lower right")
    return Plot("ranking_cost", "Probe accuracy against extraction cost",
                "; ".join(alt) or "no finished candidate yet", fig)


def _fmt(value, spec: str, missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def _table_rows(ranking: dict) -> list[list[str]]:
    rows = []
    for i, c in enumerate(ranking["candidates"], 1):
        probe = [f"{c['probe'][b]['mean']:.3f} ± {c['probe'][b]['std']:.3f}" if b in c["probe"] else "–"
                 for b in ranking["budgets"]]
        rows.append([str(i), c["label"], str(c["dim"]), _fmt(c["logme"], ".4f"), *probe,
                     _fmt(c["extract_images_per_s"], ".1f"), f"{c['store_bytes'] / 1e6:.1f}",
                     _fmt(c["head_seconds"], ".2f")])
    return rows


def _header(ranking: dict) -> list[str]:
    return ["#", "candidate", "dim", "LogME", *[f"probe @ {budget_label(b)}" for b in ranking["budgets"]],
            "extraction images/s", "store MB", "probe fit s"]


def _halving_lines(ranking: dict) -> list[str]:
    h = ranking.get("halving")
    if not h:
        return ["No sample pass (every candidate extracted in full)."]
    skipped = ", ".join(h["skipped"]) or "none"
    return [f"Sample pass on {h['sample']:,} images kept the best {h['keep']} by LogME (and the random floor).",
            f"Skipped: {skipped}.",
            f"Full extractions skipped: about {h['estimated_full_extraction_seconds_skipped']:.0f} s; the sample "
            f"pass cost {h['sample_pass_seconds']:.0f} s; net saving about {h['estimated_seconds_saved']:.0f} s."]


def _markdown(ranking: dict) -> str:
    head = _header(ranking)
    lines = [f"# featcache rank: {ranking['source']}", "", "## Recommendation", "", ranking["recommendation"], "",
             "## Candidates", "", f"Probe: logistic regression (fit-head's val sweep), mean ± std over "
             f"{ranking['seeds']} seed(s) on one split shared by every candidate. LogME: train rows, no training.",
             "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in _table_rows(ranking)]
    tau = ranking.get("logme_probe_kendall_tau")
    lines += ["", f"Kendall's tau, LogME vs probe at {budget_label(ranking['decisive_budget'])}: "
              f"{_fmt(tau, '.2f', 'n/a (fewer than 3 candidates)')}", "",
              "![probe accuracy against extraction cost, Pareto front marked](ranking_cost.png)", "",
              "## Sample pass", "", *_halving_lines(ranking), ""]
    return "\n".join(lines)


def _html(ranking: dict, plot: Plot) -> str:
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in _header(ranking))
    body = "".join("<tr>" + f'<td>{escape(r[0])}</td><th scope="row">{escape(r[1])}</th>'
                   + "".join(f"<td>{escape(v)}</td>" for v in r[2:]) + "</tr>" for r in _table_rows(ranking))
    tau = _fmt(ranking.get("logme_probe_kendall_tau"), ".2f", "n/a (fewer than 3 candidates)")
    halving = "".join(f"<p>{escape(t)}</p>" for t in _halving_lines(ranking))
    title = f"featcache rank: {ranking['source']}"
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body><main>"
            f"<header><h1>{escape(title)}</h1><p class=\"lede\">Which backbone, input size and layer, measured on "
            f"this data: {len(ranking['candidates'])} candidates, {ranking['seeds']} seed(s).</p></header>"
            f'<h2 id="recommendation">Recommendation</h2>{summary_html(ranking, head, body)}'
            f"<p class=\"note\">Kendall's tau, LogME vs probe: {escape(tau)}</p>"
            f'<h2 id="cost">Accuracy vs extraction cost</h2><figure>{svg_of(plot)}<figcaption>'
            "Error bars: std over seeds; dotted: the Pareto front at the largest budget.</figcaption></figure>"
            f'<h2 id="sample">Sample pass</h2>{halving}</main></body></html>\n')


def summary_html(ranking: dict, head: str | None = None, body: str | None = None) -> str:
    """The recommendation and the candidates' table (what a notebook shows for a :class:`RankResult`)."""
    if head is None or body is None:
        head = "".join(f'<th scope="col">{escape(h)}</th>' for h in _header(ranking))
        body = "".join("<tr>" + f'<td>{escape(r[0])}</td><th scope="row">{escape(r[1])}</th>'
                       + "".join(f"<td>{escape(v)}</td>" for v in r[2:]) + "</tr>" for r in _table_rows(ranking))
    return (f"<p>{escape(ranking['recommendation'])}</p><div class=\"scroll\"><table><caption>candidates, best "
            f"first</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def write_ranking(ranking: dict, out: Path) -> None:
    """ranking.json, ranking.md, ranking_cost.png and ranking.html, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "ranking.json", ranking)
    plot = ranking_plot(ranking)
    with atomic_path(out / "ranking_cost.png") as tmp:
        plot.figure.savefig(tmp, dpi=110, format="png")
    atomic_write_text(out / "ranking.md", _markdown(ranking))
    atomic_write_text(out / "ranking.html", _html(ranking, plot))


class RankResult(Mapping):
    """A finished ranking. Reads like ranking.json (``res["candidates"]``); ``to_frame()`` is one row per
    candidate, ``recommendation`` the sentence, and a notebook displays the table."""

    def __init__(self, ranking: dict, folder: str | os.PathLike):
        self.ranking, self.folder = ranking, Path(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> RankResult:
        try:
            return cls(json.loads((Path(folder) / "ranking.json").read_text()), folder)
        except (OSError, ValueError) as exc:
            raise InputError(f"{folder} holds no readable ranking.json ({exc.__class__.__name__})") from None

    def __getitem__(self, key: str):
        return self.ranking[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.ranking)

    def __len__(self) -> int:
        return len(self.ranking)

    def __repr__(self) -> str:
        return f"RankResult({len(self.ranking['candidates'])} candidates, in {self.folder})"

    @property
    def recommendation(self) -> str:
        return self.ranking["recommendation"]

    def to_frame(self):
        """One row per candidate: identity, LogME, the probe's mean and std per budget, and the costs."""
        from .results import _pandas

        rows = []
        for c in self.ranking["candidates"]:
            row = {k: c[k] for k in ("tag", "backbone", "weights", "image_size", "layer", "dim", "logme",
                                     "extract_images_per_s", "store_bytes", "head_seconds")}
            for b, p in c["probe"].items():
                row[f"probe_{b}_mean"], row[f"probe_{b}_std"] = p["mean"], p["std"]
            rows.append(row)
        return _pandas().DataFrame(rows)

    def _repr_html_(self) -> str:
        page = escape(str(self.folder / "ranking.html"))
        return summary_html(self.ranking) + f'<p class="note">Full page: {page}</p>'
