"""``report.html``: the comparison as one self-contained page a person opens, reads at a glance and forwards.

Plots are inline SVG, style and the table's sorting are inline, and nothing is fetched: the file works offline,
attached to a mail or from a shared drive. Accessible by construction: real headings in order, header cells with
scopes, a ``<title>`` and a description on every figure (the description lists the numbers plotted), numbers
printed in every shaded cell, and a layout that reflows at a laptop's width.
"""

from __future__ import annotations

import io
from html import escape
from pathlib import Path

from .figures import Plot, plots
from .files import atomic_write_text
from .report import (
    best_pairs,
    budget_label,
    class_names,
    command,
    cost_note,
    per_class,
    recommendations,
    skipped_cells,
    summarise,
    what_ran,
)

__all__ = ["render_page", "summary_html", "write_page", "svg_of"]

CSS = """
:root { color-scheme: light; --ink: #1a1a1a; --muted: #555; --line: #d0d0d0; --band: #f4f6f8; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Liberation Sans", sans-serif;
       color: var(--ink); background: #fff; }
main { max-width: 70rem; margin: 0 auto; padding: 1.5rem 1.25rem 3rem; }
h1 { font-size: 1.7rem; margin: 0 0 .25rem; } h2 { font-size: 1.35rem; margin: 2.2rem 0 .6rem;
border-bottom: 2px solid var(--line); padding-bottom: .2rem; } h3 { font-size: 1.1rem; margin: 1.4rem 0 .4rem; }
p.lede, .note { color: var(--muted); } .note { font-size: .92rem; }
nav ul { display: flex; flex-wrap: wrap; gap: .3rem 1.1rem; padding: 0; margin: .6rem 0 0; list-style: none; }
a { color: var(--accent); } code, pre { font: .9rem/1.45 ui-monospace, "DejaVu Sans Mono", monospace; }
pre { background: var(--band); padding: .8rem 1rem; overflow-x: auto; white-space: pre-wrap; word-break: break-all; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: .4rem 0; }
th, td { padding: .3rem .6rem; border-bottom: 1px solid var(--line); text-align: right; vertical-align: top; }
th[scope=row], td.text, th.text, thead th:first-child { text-align: left; }
td, th[scope=row] { white-space: nowrap; } td.skipped { white-space: normal; }
caption { text-align: left; caption-side: top; padding: 0 0 .3rem; }
ul.recommendation > li { margin: .7rem 0; } ul.recommendation ul { margin: .2rem 0; padding-left: 1.3rem; }
ul.recommendation ul li { margin: .1rem 0; }
thead th { background: var(--band); font-weight: 600; }
thead th button { font: inherit; font-weight: 600; border: 0; background: none; padding: 0; cursor: pointer;
                  color: inherit; text-align: inherit; }
thead th button::after { content: "\\00a0\\2195"; color: var(--muted); }
thead th[aria-sort=ascending] button::after { content: "\\00a0\\2191"; }
thead th[aria-sort=descending] button::after { content: "\\00a0\\2193"; }
tr.chosen th, tr.chosen td { background: #fff6d6; }
.badge { font-size: .75rem; border: 1px solid #b08800; border-radius: .6rem; padding: 0 .4rem; margin-left: .3rem; }
figure { margin: 1rem 0; } figure svg { width: 100%; max-width: 52rem; height: auto; display: block; }
figcaption { color: var(--muted); font-size: .92rem; margin-top: .3rem; max-width: 52rem; }
table.confusion td { min-width: 2.4rem; text-align: center; } table.confusion td.diag { font-weight: 700;
outline: 2px solid #333; outline-offset: -2px; }
dl.facts { display: grid; grid-template-columns: minmax(9rem, max-content) 1fr; gap: .25rem 1rem; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
details { margin: .6rem 0; } summary { cursor: pointer; font-weight: 600; }
@media (max-width: 40rem) { dl.facts { grid-template-columns: 1fr; } }
"""

# Sort the results table by a header's column: numbers numerically (data-sort), text alphabetically.
SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th button").forEach(function (button, col) {
    button.addEventListener("click", function () {
      var th = button.parentElement, asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-sort"), y = b.cells[col].getAttribute("data-sort");
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : (isNaN(nx) - isNaN(ny)) || x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

COLUMNS = ("method", "kind", "labels/class", "accuracy", "± std", "macro-F1", "train time (s)", "total time (s)",
           "peak memory (MiB)", "trainable params")
SPREAD = COLUMNS.index("± std")


def svg_of(plot: Plot) -> str:
    """The figure as inline SVG with a ``<title>`` and ``<desc>`` (what screen readers and tooltips show)."""
    import matplotlib

    buf = io.StringIO()
    # text stays text (selectable, small); a salt per plot keeps element ids unique across the page's SVGs
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"featcache-{plot.name}"}):
        plot.figure.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    head_end = svg.index(">") + 1
    ids = f"{plot.name}-title {plot.name}-desc"
    return (svg[:4] + f' role="img" aria-labelledby="{ids}"' + svg[4:head_end]
            + f'<title id="{plot.name}-title">{escape(plot.title)}</title>'
            + f'<desc id="{plot.name}-desc">{escape(plot.alt)}</desc>' + svg[head_end:])


def _recommendation(rec) -> str:
    """The headline with the method in bold, its evidence as a sub-list, the one-seed caveat last."""
    head, evidence, note = rec.parts(lambda m: f"\x00{m}\x01")
    head = escape(head).replace("\x00", "<strong>").replace("\x01", "</strong>")
    items = "".join(f"<li>{escape(e)}</li>" for e in evidence) + (f'<li class="note">{escape(note)}</li>'
                                                                   if note else "")
    return f"<li>{head}.<ul>{items}</ul></li>" if items else f"<li>{head}.</li>"


def _num(value, fmt: str) -> str:
    return ("", "") if value is None else (f"{value:{fmt}}", repr(float(value)))


def _row(r: dict, chosen: set[tuple[str, str]], spread_column: bool) -> str:
    budget_key = "1e12" if r["budget"] == "all" else r["budget"]
    kind = {"head": "head", "baseline": "baseline"}.get(r["kind"], "fine-tune")
    badge = '<span class="badge">recommended</span>' if (r["method"], r["budget"]) in chosen else ""
    cells = [f'<th scope="row" data-sort="{escape(r["method"])}">{escape(r["method"])}{badge}</th>',
             f'<td class="text" data-sort="{kind}">{kind}</td>',
             f'<td data-sort="{budget_key}">{escape(r["budget"])}</td>']
    if "accuracy" not in r:
        cells.append(f'<td class="text skipped" colspan="{len(COLUMNS) - 3 - (not spread_column)}" data-sort="">'
                     f'skipped: {escape(str(r["skipped"]))}</td>')
        return f"<tr>{''.join(cells)}</tr>"
    spread = r["accuracy_std"] if r["seeds_run"] > 1 else None
    values = [(r["accuracy"], ".4f"), (spread, ".4f"), (r["macro_f1"], ".4f"), (r["train_seconds"], ".1f"),
              (r["total_seconds"], ".1f"), (r["peak_rss_mib"], ".0f"), (r["trainable_params"], ",")]
    for i, (value, fmt) in enumerate(values, start=3):
        if i == SPREAD and not spread_column:
            continue
        shown, key = _num(value, fmt)
        cells.append(f'<td data-sort="{key}">{shown or "&ndash;"}</td>')
    cls = ' class="chosen"' if (r["method"], r["budget"]) in chosen else ""
    return f"<tr{cls}>{''.join(cells)}</tr>"


def results_table(rows: list[dict], chosen: set[tuple[str, str]], sortable: bool = True) -> str:
    """The results as a table; ``± std`` only when some cell ran several seeds (one seed has no spread)."""
    spread = any(r["seeds_run"] > 1 for r in rows)
    columns = [c for i, c in enumerate(COLUMNS) if spread or i != SPREAD]
    head = "".join(f'<th scope="col"{" class=text" if c == "kind" else ""}>'
                   + (f'<button type="button">{escape(c)}</button>' if sortable else escape(c)) + "</th>"
                   for c in columns)
    body = "\n".join(_row(r, chosen, spread) for r in rows)
    caption = "Every (method, label budget) cell: mean over seeds on the test split" + (
        "; select a column header to sort" if sortable else "")
    return (f'<div class="scroll" role="region" aria-label="results table" tabindex="0"><table'
            f'{" class=sortable" if sortable else ""}><caption class="note">{caption}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table></div>")


def summary_html(results: dict, sortable: bool = False) -> str:
    """The report's summary: the recommendation per budget and the results table (a notebook cell shows this)."""
    rows = summarise(results)
    recs = recommendations(rows, results)
    items = "".join(_recommendation(r) for r in recs) or "<li>no finished cells yet</li>"
    chosen = {(r.chosen["method"], r.budget) for r in recs}
    among = " head or fine-tune" if any(r["kind"] == "baseline" for r in rows) else " method"
    return (f'<h2 id="recommendation">Recommendation</h2><p class="note">Per label budget, the cheapest{among} '
            f'(total time) within 1 point of the most accurate, with the evidence.</p>'
            f'<ul class="recommendation">{items}</ul>'
            f'<h2 id="results">Results</h2>{results_table(rows, chosen, sortable)}'
            f'<p class="note">{escape(cost_note(results))}</p>')


def _confusion(cm, names: list[str], method: str) -> str:
    top = max(int(cm.max()), 1)
    head = "".join(f'<th scope="col"><abbr title="{escape(n)}">{i}</abbr></th>' for i, n in enumerate(names))
    body = []
    for i, (name, row) in enumerate(zip(names, cm, strict=True)):
        tds = []
        for j, v in enumerate(row):
            share = int(v) / top
            ink = "#fff" if share > 0.55 else "#1a1a1a"
            tds.append(f'<td class="{"diag" if i == j else ""}" style="background: rgba(11, 92, 173, '
                       f'{share:.2f}); color: {ink}">{int(v)}</td>')
        body.append(f'<tr><th scope="row">{i} {escape(name)}</th>{"".join(tds)}</tr>')
    return (f'<div class="scroll" role="region" aria-label="confusion matrix of {escape(method)}" tabindex="0">'
            f'<table class="confusion"><caption>Confusion matrix of {escape(method)}</caption>'
            f'<thead><tr><th scope="col">true \\ predicted</th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _per_class_section(results: dict, rows: list[dict]) -> str:
    parts, pairs = [], best_pairs(rows)
    for n, (budget, head, tune) in enumerate(pairs):
        if head is None or tune is None:
            parts.append(f"<p>{escape(budget_label(budget))}: needs a finished head and a finished fine-tune.</p>")
            continue
        (acc_h, cm_h), (acc_t, cm_t) = (per_class(results, r["method"], budget) for r in (head, tune))
        names = class_names(results, len(acc_h))
        lines = "".join(f'<tr><th scope="row">{escape(c)}</th><td>{h:.3f}</td><td>{t:.3f}</td>'
                        f'<td>{100 * (t - h):+.1f}</td></tr>' for c, h, t in zip(names, acc_h, acc_t, strict=True))
        table = (f'<div class="scroll"><table><thead><tr><th scope="col">class</th><th scope="col">'
                 f'{escape(head["method"])}</th><th scope="col">{escape(tune["method"])}</th><th scope="col">'
                 f'difference (points)</th></tr></thead><tbody>{lines}</tbody></table></div>')
        parts.append(f'<details{" open" if n == len(pairs) - 1 else ""}><summary>'
                     f'{escape(budget_label(budget))}: {escape(head["method"])} (head) vs {escape(tune["method"])} '
                     f'(fine-tune)</summary><h3>Per-class accuracy, {escape(budget_label(budget))}</h3>{table}'
                     f'<h3>Confusion matrices, {escape(budget_label(budget))}</h3><p class="note">Rows are the true '
                     f'class, columns the predicted class (numbered as the rows), summed over seeds; the diagonal '
                     f'is outlined.</p>'
                     f'{_confusion(cm_h, names, head["method"])}{_confusion(cm_t, names, tune["method"])}</details>')
    return "".join(parts)


def _figure(plot: Plot, caption: str) -> str:
    return f"<figure>{svg_of(plot)}<figcaption>{escape(caption)}</figcaption></figure>"


def render_page(results: dict, figures: list[Plot] | None = None) -> str:
    """The whole page as one HTML string (``figures``: the plots, when already made for the PNGs)."""
    rows = summarise(results)
    labels, cost, per = figures or plots(results, rows)
    name = Path(results["store"]).name
    skipped = skipped_cells(results)
    skipped_html = ("<ul>" + "".join(f"<li>{escape(m)} at {escape(b)} labels/class, seed {escape(str(s))}: "
                                     f"{escape(why)}</li>"
                                     for m, b, s, why in skipped) + "</ul>") if skipped else "<p>None.</p>"
    facts = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in what_ran(results))
    sections = [("recommendation", "Recommendation"), ("results", "Results"), ("labels", "Accuracy vs labels"),
                ("cost", "Accuracy vs total time"), ("per-class", "Per class"), ("skipped", "Skipped cells"),
                ("run", "What was run")]
    nav = "".join(f'<li><a href="#{i}">{escape(t)}</a></li>' for i, t in sections)
    body = (f"<header><h1>featcache compare: {escape(name)}</h1><p class=\"lede\">Feature extraction or "
            f"fine-tuning? {len(results['methods'])} methods, label budgets {escape(', '.join(results['budgets']))}, "
            f"{escape(str(results['seeds']))} seed(s), measured on one store's splits.</p>"
            f'<nav aria-label="sections"><ul>{nav}</ul></nav></header>'
            f"{summary_html(results, sortable=True)}"
            f'<h2 id="labels">Accuracy vs labels per class</h2>'
            f"{_figure(labels, 'Test accuracy at each label budget; error bars are the std over seeds.')}"
            f'<h2 id="cost">Accuracy vs total time</h2>'
            f"{_figure(cost, 'A head pays its share of the one-off extraction; circled points are the Pareto front.')}"
            f'<h2 id="per-class">Per class: best head vs best fine-tune</h2>'
            f"{_figure(per, 'Where the best head and the best fine-tune differ, class by class.')}"
            f"{_per_class_section(results, rows)}"
            f'<h2 id="skipped">Skipped cells</h2>{skipped_html}'
            f'<h2 id="run">What was run</h2><dl class="facts">{facts}</dl>'
            f"<h3>Reproduce</h3><pre><code>{escape(command(results))}</code></pre>")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>featcache compare: {escape(name)}</title><style>{CSS}</style></head>\n"
            f"<body><main>{body}</main><script>{SORT_JS}</script></body></html>\n")


def write_page(results: dict, out: Path, figures: list[Plot] | None = None) -> Path:
    path = Path(out) / "report.html"
    atomic_write_text(path, render_page(results, figures))
    return path
