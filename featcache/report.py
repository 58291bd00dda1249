"""What a comparison says: the summary table over seeds, each method's total cost, the recommendation with its
evidence, per-class accuracy, what was run, and ``report.md``. Everything here reads ``results.json``'s content;
nothing trains. The page (:mod:`featcache.page`) and the plots (:mod:`featcache.figures`) say the same from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cells import budget_name
from .files import atomic_write_text

__all__ = ["summarise", "extract_share", "total_seconds", "format_table", "recommend", "recommendations",
           "Recommendation", "per_class", "best_pairs", "pareto_front", "what_ran", "skipped_cells", "command",
           "cost_note", "write_markdown", "budget_label", "class_names", "unit"]

WITHIN = 0.01  # the recommendation: the cheapest method whose accuracy is within this of the best


def extract_share(results: dict, cell: dict) -> float | None:
    """A head cell's share of the store's one-off extraction: the rows it reads (train, val, test) at the store's
    measured seconds per row. None for a fine-tune (it reads images, not features) or when not recorded."""
    store = (results.get("run") or {}).get("store") or {}
    seconds, n_rows = store.get("extract_seconds"), store.get("n_rows")
    if cell.get("kind") != "head" or not seconds or not n_rows:
        return None
    split = ((results.get("run") or {}).get("splits") or {}).get(str(cell.get("seed", 0)), {})
    n_read = cell["n_train"] + int(split.get("val", 0)) + int(np.sum(cell["metrics"].get("confusion_matrix", 0)))
    return float(seconds) * n_read / int(n_rows)


def total_seconds(results: dict, cell: dict) -> float:
    """What a cell cost in all: its training, plus for a head its share of the extraction."""
    return float(cell["train_seconds"]) + (extract_share(results, cell) or 0.0)


def summarise(results: dict) -> list[dict]:
    """One table line per (method, budget): mean and std over seeds of every figure, and the total cost (a head's
    training plus its share of the extraction: the rows it reads, at the store's seconds per row)."""
    rows = []
    groups: dict[tuple, list[dict]] = {}
    for c in results["cells"]:
        groups.setdefault((c["method"], budget_name(c["budget"])), []).append(c)
    for (method, budget), cs in groups.items():
        done = [c for c in cs if "skipped" not in c]
        row = {"method": method, "budget": budget, "seeds_run": len(done),
               "kind": next((c["kind"] for c in done if "kind" in c), "finetune"),
               "skipped": next((c["skipped"] for c in cs if "skipped" in c), None)}
        if done:
            acc = np.array([c["metrics"]["accuracy"] for c in done])
            row.update(accuracy=float(acc.mean()), accuracy_std=float(acc.std()),
                       macro_f1=float(np.mean([c["metrics"]["macro_f1"] for c in done])),
                       train_seconds=float(np.mean([c["train_seconds"] for c in done])),
                       peak_rss_mib=float(np.max([c["peak_rss_bytes"] for c in done]) / 2**20),
                       trainable_params=int(done[0]["trainable_params"]), n_train=int(done[0]["n_train"]),
                       n_test=int(np.sum(done[0]["metrics"].get("confusion_matrix", 0))))
            shares = [extract_share(results, c) for c in done]
            row["extract_share_seconds"] = None if None in shares else float(np.mean(shares))
            row["total_seconds"] = float(np.mean([total_seconds(results, c) for c in done]))
        rows.append(row)
    order = {m: i for i, m in enumerate(results["methods"])}
    budgets = {b: i for i, b in enumerate(results["budgets"])}
    return sorted(rows, key=lambda r: (budgets.get(r["budget"], 99), order.get(r["method"], 99)))


def _accuracy(r: dict) -> str:
    """Mean ± std over seeds; a single seed has no spread to show, so none is printed."""
    return f"{r['accuracy']:.4f} ± {r['accuracy_std']:.4f}" if r["seeds_run"] > 1 else f"{r['accuracy']:.4f}"


def format_table(rows: list[dict]) -> str:
    """The summary as a plain-text table (the CLI and the benchmark print it)."""
    lines = [f"{'method':<8}{'labels/class':>13}{'accuracy':>18}{'macro-F1':>10}{'train s':>9}{'total s':>9}"
             f"{'peak MiB':>10}{'trainable':>12}"]
    for r in rows:
        if "accuracy" in r:
            lines.append(f"{r['method']:<8}{r['budget']:>13}{_accuracy(r):>18}{r['macro_f1']:>10.4f}"
                         f"{r['train_seconds']:>9.1f}{r['total_seconds']:>9.1f}{r['peak_rss_mib']:>10.0f}"
                         f"{r['trainable_params']:>12,}")
        else:
            lines.append(f"{r['method']:<8}{r['budget']:>13}  skipped: {r['skipped']}")
    return "\n".join(lines)


def budget_label(budget: str) -> str:
    return "all labels" if budget == "all" else f"{budget} labels per class"


KIND_WORDS = {"head": "cached-feature head", "finetune": "fine-tune", "baseline": "baseline"}
FAMILIES = ("head", "finetune")  # what the recommendation chooses between; a baseline is evidence only


def unit(results: dict) -> str:
    """What the store's rows are: "texts" for a text store, else "images"."""
    return "texts" if ((results.get("run") or {}).get("store") or {}).get("modality") == "text" else "images"


def _kind_word(row: dict) -> str:
    return KIND_WORDS.get(row["kind"], "fine-tune")


def _time_words(ratio: float) -> str:
    """The recommended method's total time relative to the one it is weighed against."""
    if ratio >= 1.5:
        return f"at {ratio:.0f}x the total time" if ratio >= 10 else f"at {ratio:.1f}x the total time"
    if ratio <= 1 / 1.5:
        return f"at 1/{1 / ratio:.0f} of the total time" if ratio <= 0.1 else f"at 1/{1 / ratio:.1f} of the total time"
    return "at about the same total time"


@dataclass
class Versus:
    """The recommended method weighed against another: accuracy gap (chosen - other), its 95 % interval, basis."""

    other: dict
    gap: float
    low: float
    high: float
    basis: str

    def words(self, chosen: dict, label: str) -> str:
        o = self.other
        return (f"vs {label}{o['method']} ({o['accuracy']:.3f}): {100 * self.gap:+.1f} points (95% interval "
                f"{100 * self.low:+.1f} to {100 * self.high:+.1f}, {self.basis}), "
                f"{_time_words(chosen['total_seconds'] / max(o['total_seconds'], 1e-9))}")


@dataclass
class Recommendation:
    """One budget's recommendation and its evidence: the gap to the most accurate method (or, when it is the most
    accurate, to the runner-up) and to the other family's best (heads vs fine-tunes), each with its 95 % interval
    (test-set sampling with one seed, paired over seeds otherwise) and the time ratio."""

    budget: str
    chosen: dict
    best: dict
    versus: list[Versus]
    note: str = ""
    baseline: Versus | None = None  # the most accurate baseline (TF-IDF on a text store), when one finished

    def parts(self, strong: Callable[[str], str] = str) -> tuple[str, list[str], str]:
        """The headline, the evidence (one comparison each, the baseline last) and the one-seed caveat. A baseline
        more accurate than every head and fine-tune is said in the headline: the reader must not miss it."""
        c = self.chosen
        why = "is the most accurate" if c is self.best else f"is within {100 * WITHIN:.0f} point of the most accurate"
        head = (f"{budget_label(self.budget)}: {strong(c['method'])} ({_kind_word(c)}, {c['accuracy']:.3f}, "
                f"{c['total_seconds']:.1f} s in all) {why}")
        evidence = [v.words(c, "the best " + ("head, " if v.other["kind"] == "head" else "fine-tune, ")
                            if v.other["kind"] != c["kind"] else "") for v in self.versus]
        if self.baseline is not None:
            b = self.baseline.other
            evidence.append(self.baseline.words(c, "the baseline "))
            if b["accuracy"] > self.best["accuracy"]:
                head += (f" of the heads and fine-tunes, but the baseline {strong(b['method'])} ({b['accuracy']:.3f}, "
                         f"{b['total_seconds']:.1f} s) beats the best of them ({self.best['method']}, "
                         f"{self.best['accuracy']:.3f})")
        return head, evidence, self.note

    def sentence(self, strong: Callable[[str], str] = str) -> str:
        """The recommendation in one sentence (then the one-seed caveat); ``strong`` marks the method's name."""
        head, evidence, note = self.parts(strong)
        return head + (": " + "; ".join(evidence) if evidence else "") + "." + (f" {note}" if note else "")


def _seed_accuracies(results: dict, method: str, budget: str) -> dict[int, float]:
    return {c["seed"]: c["metrics"]["accuracy"] for c in results["cells"]
            if c["method"] == method and budget_name(c["budget"]) == budget and "skipped" not in c}


def _gap_interval(results: dict, c: dict, a: dict) -> tuple[float, float, float, str]:
    """The gap chosen - against and its 95 % interval: paired over seeds (t) when both ran several, else the
    test-set sampling error of two accuracies (normal; conservative, both are scored on the same images)."""
    sc, sa = _seed_accuracies(results, c["method"], c["budget"]), _seed_accuracies(results, a["method"], a["budget"])
    paired = [sc[s] - sa[s] for s in sorted(set(sc) & set(sa))]
    if len(paired) >= 2:
        from scipy.stats import t

        gap, sd = float(np.mean(paired)), float(np.std(paired, ddof=1))
        half = float(t.ppf(0.975, len(paired) - 1)) * sd / math.sqrt(len(paired))
        return gap, max(gap - half, -1.0), min(gap + half, 1.0), f"paired over {len(paired)} seeds"
    gap, n = c["accuracy"] - a["accuracy"], max(c["n_test"], 1)
    half = 1.96 * math.sqrt((c["accuracy"] * (1 - c["accuracy"]) + a["accuracy"] * (1 - a["accuracy"])) / n)
    return gap, max(gap - half, -1.0), min(gap + half, 1.0), f"test-set sampling, {c['n_test']} {unit(results)}"


def _versus(results: dict, done: list[dict], chosen: dict, best: dict) -> list[Versus]:
    """Against the most accurate (or the runner-up when the chosen one is), and the other family's best."""
    others = [r for r in done if r is not chosen]
    first = best if chosen is not best else max(others, key=lambda r: r["accuracy"], default=None)
    other_kind = max((r for r in others if r["kind"] != chosen["kind"]), key=lambda r: r["accuracy"], default=None)
    picks = [r for r in dict.fromkeys(map(id, [first, other_kind])) if r != id(None)]
    by_id = {id(r): r for r in others}
    return [Versus(by_id[i], *_gap_interval(results, chosen, by_id[i])) for i in picks]


def recommendations(rows: list[dict], results: dict, within: float = WITHIN) -> list[Recommendation]:
    """Per budget: the cheapest head or fine-tune (total time) whose accuracy is within ``within`` of the best, with
    evidence; a baseline is not chosen (it answers another question than "extract or fine-tune?") but is weighed."""
    out = []
    for budget in dict.fromkeys(r["budget"] for r in rows):
        finished = [r for r in rows if r["budget"] == budget and "accuracy" in r]
        done = [r for r in finished if r["kind"] in FAMILIES]
        if not done:
            continue
        best = max(done, key=lambda r: r["accuracy"])
        chosen = min((r for r in done if r["accuracy"] >= best["accuracy"] - within), key=lambda r: r["total_seconds"])
        rec = Recommendation(budget, chosen, best, _versus(results, done, chosen, best))
        baseline = max((r for r in finished if r["kind"] not in FAMILIES), key=lambda r: r["accuracy"], default=None)
        if baseline is not None:
            rec.baseline = Versus(baseline, *_gap_interval(results, chosen, baseline))
        if best["seeds_run"] < 2 and best.get("n_test"):
            # one run: the only spread we know is the test set's sampling error of the best accuracy
            half = 1.96 * np.sqrt(best["accuracy"] * (1 - best["accuracy"]) / best["n_test"])
            rec.note = (f"One seed on {best['n_test']} test {unit(results)}: ±{100 * half:.1f} points (95%), so gaps "
                        f"smaller than that are not resolved; use --seeds to measure the spread.")
        out.append(rec)
    return out


def recommend(rows: list[dict], results: dict, within: float = WITHIN) -> list[str]:
    """The recommendations as Markdown list items."""
    return [f"- {r.sentence(lambda m: f'**{m}**')}" for r in recommendations(rows, results, within)]


def per_class(results: dict, method: str, budget: str) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy (recall) of each class and the confusion matrix, summed over the seeds that ran."""
    cms = [np.asarray(c["metrics"]["confusion_matrix"]) for c in results["cells"]
           if c["method"] == method and budget_name(c["budget"]) == budget and "skipped" not in c]
    cm = np.sum(cms, axis=0)
    return cm.diagonal() / np.maximum(cm.sum(axis=1), 1), cm


def best_pairs(rows: list[dict]) -> list[tuple[str, dict | None, dict | None]]:
    """Per budget: the most accurate head and the most accurate fine-tune (None where none finished)."""
    out = []
    for budget in dict.fromkeys(r["budget"] for r in rows):
        done = [r for r in rows if r["budget"] == budget and "accuracy" in r]
        pick = [max((r for r in done if r["kind"] == k), key=lambda r: r["accuracy"], default=None)
                for k in ("head", "finetune")]
        out.append((budget, *pick))
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and accuracy (higher), cheapest first."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def class_names(results: dict, n: int) -> list[str]:
    names = (results.get("run") or {}).get("label_names")
    return [str(x) for x in names] if names and len(names) == n else [f"class {i}" for i in range(n)]


def skipped_cells(results: dict) -> list[tuple[str, str, int, str]]:
    return [(c["method"], budget_name(c["budget"]), c.get("seed", 0), c["skipped"]) for c in results["cells"]
            if "skipped" in c]


def what_ran(results: dict) -> list[tuple[str, str]]:
    """The facts a reader needs to trust or redo the comparison, as (what, value) pairs."""
    run = results.get("run") or {}
    store = run.get("store") or {}
    splits = run.get("splits") or {}
    missing = "not recorded (results.json from an older featcache)"
    facts = [("store", f"{results['store']} (fingerprint {results['store_fingerprint'][:12]})"),
             ("dataset", str(store.get("dataset", missing))),
             ("backbone", str(store.get("backbone", missing))),
             ("weights", f"{store.get('weights_source', missing)}, SHA-256 {store.get('weights_sha256', '?')}"),
             ("text encoding", _flat(store["text"])) if "text" in store else
             ("preprocessing", _flat(store.get("preprocessing", missing))),
             ("features", f"layers {_flat(store.get('layers', '?'))}"
                          + ("" if "text" in store else f" at {store.get('image_size', '?')} px")
                          + f", {store.get('dtype', '?')}, extracted in {store.get('precision', '?')} on "
                          f"{store.get('device', '?')} in {store.get('extract_seconds', '?')} s "
                          f"({store.get('n_rows', '?')} rows)" if store else missing),
             ("splits", "; ".join(f"seed {s}: {v['scheme']} (train {v['train']}, val {v['val']}, test {v['test']}, "
                                  f"SHA-256 {v['sha256'][:12]})" for s, v in splits.items()) or missing),
             ("methods", ", ".join(results["methods"])),
             ("label budgets (per class)", ", ".join(results["budgets"])),
             ("seeds", str(results["seeds"])),
             ("fine-tune options", _flat(run.get("fine_tune_options") or results.get("fine_tune_options") or {})),
             ("machine", _flat(run.get("machine", missing))),
             ("featcache", f"{run.get('featcache_version', missing)}, {run.get('created_at', '')}".rstrip(", "))]
    return facts


def _flat(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_flat(v)}" for k, v in value.items()) or "defaults"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flat(v) for v in value) + "]"
    return str(value)


def command(results: dict) -> str:
    """The command that reproduces the comparison (recorded by compare; rebuilt, less the fine-tune options, for
    results from an older featcache)."""
    run = results.get("run") or {}
    if run.get("command"):
        return run["command"]
    return (f"python -m featcache compare {results['store']} --methods {','.join(results['methods'])} "
            f"--budgets {','.join(results['budgets'])} --seeds {results['seeds']} --out {results.get('out', 'DIR')}  "
            "# rebuilt: add the fine-tune options listed above")


def cost_note(results: dict) -> str:
    """How the times were counted, and whether the extraction's share could be added."""
    heads = [c for c in results["cells"] if c.get("kind") == "head" and "skipped" not in c]
    missing = heads and all(extract_share(results, c) is None for c in heads)
    baseline = any(c.get("kind") == "baseline" for c in results["cells"])
    return COST_NOTE + (" This results.json does not record the extraction time (an older featcache, or a store "
                        "without it), so here a head's total time is its training time." if missing else "") + (
        BASELINE_NOTE if baseline else "")


PLOTS = [("accuracy_vs_labels.png", "accuracy vs labels per class"),
         ("accuracy_vs_time.png", "accuracy vs total time (cost), Pareto front marked"),
         ("per_class.png", "per-class accuracy, best head vs best fine-tune")]


# long: the page's sections in order, each a few lines of Markdown; splitting it scatters the order
def write_markdown(results: dict, out: Path) -> None:
    """report.md: the same sections as report.html (code forges render it), the plots as PNG files beside it."""
    rows = summarise(results)
    among = "head or fine-tune" if any(r["kind"] == "baseline" for r in rows) else "method"
    lines = [f"# featcache compare: {Path(results['store']).name}", "",
             f"## Recommendation (cheapest {among} within 1 point of the best, per budget)", ""]
    lines += recommend(rows, results) or ["- no finished cells yet"]
    lines += ["", "## Results", "",
              f"Store `{results['store']}` (fingerprint {results['store_fingerprint'][:12]}), "
              f"{results['seeds']} seed(s); accuracy is mean ± std over seeds on the test split (no ± with one seed).",
              "",
              "| method | labels/class | accuracy | macro-F1 | train time (s) | total time (s) | peak memory (MiB) "
              "| trainable params |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "accuracy" in r:
            lines.append(f"| {r['method']} | {r['budget']} | {_accuracy(r)} | {r['macro_f1']:.4f} | "
                         f"{r['train_seconds']:.1f} | {r['total_seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
                         f"{r['trainable_params']:,} |")
        else:
            lines.append(f"| {r['method']} | {r['budget']} | skipped: {r['skipped']} | | | | | |")
    lines += ["", cost_note(results), "", "## Plots", ""]
    lines += [f"![{alt}]({name})" for name, alt in PLOTS]
    lines += ["", "## Per class: best head vs best fine-tune", ""]
    for budget, head, tune in best_pairs(rows):
        if head is None or tune is None:
            lines.append(f"- {budget_label(budget)}: needs a finished head and a finished fine-tune")
            continue
        (acc_h, cm_h), (acc_t, cm_t) = per_class(results, head["method"], budget), per_class(results, tune["method"],
                                                                                            budget)
        names = [n.replace("|", "\\|") for n in class_names(results, len(acc_h))]  # a "|" would split a cell
        lines += [f"### {budget_label(budget)}: {head['method']} vs {tune['method']}", "",
                  f"| class | {head['method']} | {tune['method']} | difference (points) |", "| --- | --- | --- | --- |"]
        lines += [f"| **{n}** | {h:.3f} | {t:.3f} | {100 * (t - h):+.1f} |" for n, h, t in zip(names, acc_h, acc_t,
                                                                                          strict=True)]
        for method, cm in ((head["method"], cm_h), (tune["method"], cm_t)):
            lines += ["", f"Confusion matrix of {method} (rows: true class, columns: predicted; summed over seeds)", "",
                      "| true \\ predicted | " + " | ".join(names) + " |", "| --- " * (len(names) + 1) + "|"]
            # row names in bold, as header cells: only the results table has plain (method, budget) rows
            lines += [f"| **{n}** | " + " | ".join(map(str, row)) + " |" for n, row in zip(names, cm, strict=True)]
        lines.append("")
    skipped = skipped_cells(results)
    lines += ["", "## Skipped cells", ""]
    lines += [f"- {m} at {b} labels/class, seed {s}: {why}" for m, b, s, why in skipped] or ["- none"]
    lines += ["", "## What was run", ""] + [f"- **{k}**: {v}" for k, v in what_ran(results)]
    lines += ["", "Reproduce with:", "", "```bash", command(results), "```", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))


COST_NOTE = ("Train time is the head's sweep and refit (cached features), or the fine-tune's training epochs. Total "
             "time adds to a head its share of the one-off extraction: the rows it reads (its train, val and test "
             "rows) at the store's measured seconds per row; the extraction is paid once for every head. Peak memory "
             "is the process's peak resident set during the cell.")
BASELINE_NOTE = (" A baseline (tfidf: TF-IDF word unigrams and bigrams with a logistic regression, C chosen on val) "
                 "reads the raw texts of the same train, val and test rows, with no backbone: its total time is its "
                 "vectorising and sweep. It is shown for reference; the recommendation chooses among heads and "
                 "fine-tunes.")
