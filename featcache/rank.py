"""Which backbone, input size and layer? Rank the candidates on the user's own data, cheaply and then measured.

Each candidate store is extracted once under ``DIR/stores`` (an up-to-date store is reused, an interrupted one
resumes: :func:`featcache.extractor.extract`), every store gets the same split (:mod:`featcache.shared_split`),
and the grid engine (:mod:`featcache.grid`) runs LogME and the logistic-regression probe (the ``fit-head`` sweep)
on every candidate x label budget x seed, saving each cell as it finishes. ``--sample N --keep K`` first scores
every candidate by LogME on N images and extracts the full data only for the best K (successive halving). The
outputs (``ranking.json``, ``ranking.md``, the plot and ``ranking.html``) are :mod:`featcache.rank_report`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .candidates import RANDOM, Candidate, StorePlan, check_candidates, parse_candidates, store_plans
from .cells import budget_name
from .compare import parse_budgets, resolved_options
from .errors import InputError
from .files import atomic_write_json, check_output
from .grid import GridRun, GridStore, run_grid, say, store_key_sha256
from .rank_report import RankResult, build_ranking, write_ranking
from .shared_split import share_split
from .sources import Source, open_source
from .store import FeatureStore
from .text_encoders import is_text_backbone

__all__ = ["rank", "RankResult", "PROBE", "DEFAULT_RANK_BUDGETS"]

PROBE = "logreg"  # the measured linear probe: the logistic-regression head, its val sweep and refit
DEFAULT_RANK_BUDGETS = (10, 100)


@dataclass
class Extracted:
    """A candidate store on disk and what its extraction cost (measured when it was extracted)."""

    plan: StorePlan
    path: Path
    record: dict


def _is_rank_folder(path: Path) -> bool:
    return not any(path.iterdir()) or (path / "ranking.json").is_file() or (path / "stores").is_dir()


def _check(budgets: list, seeds: int, sample: int | None, keep: int | None, finetune_top: int) -> None:
    if not isinstance(seeds, int) or seeds < 1:
        raise InputError("--seeds must be at least 1")
    if (sample is None) != (keep is None):
        raise InputError("--sample N and --keep K go together (score every candidate on N images, keep the best K)")
    if sample is not None and (sample < 20 or keep < 1):
        raise InputError("--sample needs at least 20 images and --keep at least 1 candidate")
    if finetune_top < 0:
        raise InputError("--finetune-top is a number of candidates (0: none)")
    if not budgets:
        raise InputError("--budgets names at least one label budget")


# long: the steps of a ranking in order (check, sample pass, extract, share the split, grid, report, hand over)
def rank(source: str | os.PathLike | Source | None, *, backbones: str | Sequence[str],
         image_sizes: str | Sequence | None = None, layers: str | Sequence[str] | None = None,
         budgets: str | Sequence = DEFAULT_RANK_BUDGETS, seeds: int = 3, out: str | os.PathLike | None = None,
         random_baseline: bool = True, sample: int | None = None, keep: int | None = None, finetune_top: int = 0,
         limit: int | None = None, extract_options: dict | None = None, overwrite: bool = False,
         quiet: bool = False, **ft_options) -> RankResult:
    """Rank every backbone x input size x layer on ``source`` and write the ranking into ``out``; returns it.

    ``extract_options`` go to every extraction (``precision``, ``device``, ``batch_size``, ``workers``);
    ``ft_options`` to the fine-tunes of ``finetune_top`` (the best K candidates handed to ``compare``).
    Killed and run again with the same arguments, it resumes: finished stores and cells are reused."""
    # smallest first, every row ('all') last: the recommendation speaks for the largest budget, whatever the order given
    budgets = sorted(dict.fromkeys(parse_budgets(budgets)), key=lambda b: (b is None, b or 0))
    _check(budgets, seeds, sample, keep, finetune_top)
    if any(is_text_backbone(b) for b in (backbones.split(",") if isinstance(backbones, str) else backbones)):
        raise InputError("rank compares image backbones; to compare text encoders, extract one store per hf: model "
                         "and compare their heads")
    candidates = parse_candidates(backbones, image_sizes, layers, random_baseline)
    check_candidates(candidates)  # every bad candidate named at once, before anything is written
    if finetune_top:
        resolved_options(ft_options)  # a bad fine-tune option fails now, not after the ranking
    out = Path(out if out is not None else Path("data") / "rank" / "ranking").resolve()
    check_output(out, kind="rank folder", is_own=_is_rank_folder, overwrite=overwrite, folder=True)
    src = source if isinstance(source, Source) else open_source(source, limit=limit)
    if src.modality != "image":
        raise InputError(f"rank compares image backbones, and {src.spec} holds {src.unit}")
    if src.task != "classification":
        raise InputError("rank measures a logistic-regression probe: it needs a classification source")
    _check_budgets_in(src, budgets)
    extract_options = {"quiet": quiet, **(extract_options or {})}
    halving, floor = None, candidates[-1].tag if random_baseline and candidates[-1].weights == RANDOM else None
    if sample is not None and len(src) > sample:
        candidates, halving = _halve(src, candidates, floor, sample, keep, out, extract_options, quiet)
    stores = _extract_all(src, store_plans(candidates), out / "stores", out / "extractions.json", extract_options,
                          quiet)
    schemes = share_split([s.path for s in stores], seeds)
    _check_budgets(stores[0].path, budgets, schemes[0])
    by_store = {c.tag: s for s in stores for c in s.plan.candidates}
    plan = [("logme", None, 0)] + [(PROBE, b, s) for s in range(seeds) for b in budgets]
    grid = run_grid([GridStore(by_store[c.tag].path, schemes, c.tag, c.layer) for c in candidates], plan, out,
                    options={}, ft_options={}, quiet=quiet)
    ranking = build_ranking(candidates, grid, {c.tag: (by_store[c.tag].path, by_store[c.tag].record)
                                               for c in candidates},
                            budgets=[budget_name(b) for b in budgets], seeds=seeds, source=src.spec,
                            halving=halving, extracted=[s.plan.tag for s in stores if s.record.get("this_run")])
    if finetune_top:
        ranking["finetune"] = _finetune_top(ranking, finetune_top, budgets, seeds, out, schemes[0], ft_options, quiet)
    write_ranking(ranking, out)
    return RankResult(ranking, out)


def _check_budgets_in(src: Source, budgets: list) -> None:
    """A budget larger than the source's smallest class can never be met: refused before any extraction (one
    that only the train split cannot meet is caught once the split exists, still before any cell runs)."""
    _, counts = np.unique(np.asarray(src.labels), return_counts=True)
    too_big = [b for b in budgets if b is not None and counts.size and b > counts.min()]
    if too_big:
        raise InputError(f"a budget of {too_big[0]} labels per class is more than the data has ({counts.min()} "
                         f"rows in its smallest class); nothing was extracted")


def _check_budgets(store: Path, budgets: list, scheme: str) -> None:
    with FeatureStore(store) as fs:
        for b in budgets:
            if b is not None:
                fs.row_indices(f"{scheme}:train", per_class=b)  # too large a budget fails before any cell runs


def _key_sha(path: Path) -> str:
    with FeatureStore(path) as fs:
        return store_key_sha256(fs)


def _extract_all(src: Source, plans: list[StorePlan], folder: Path, ledger_path: Path, options: dict,
                 quiet: bool) -> list[Extracted]:
    """Extract (or reuse, or resume) each store; its measured throughput is kept in a ledger beside the stores,
    so a resumed ranking still reports what the first extraction of a reused store cost."""
    from .extractor import extract

    try:
        ledger = json.loads(ledger_path.read_text())
    except (OSError, ValueError):
        ledger = {}
    out = []
    for plan in plans:
        path = folder / f"{plan.tag}.h5"
        say(quiet, f"extract {plan.tag} ({', '.join(plan.layers)})")
        res = extract(src, path, backbone=plan.backbone, weights=plan.weights, layers=plan.layers,
                      image_size=plan.image_size, **options)
        key = _key_sha(path)
        if not res.up_to_date and res.extracted:
            ledger[plan.tag] = {"key_sha256": key, "images_per_s": res.images_per_s, "seconds": res.seconds,
                                "rows": res.rows, "extracted": res.extracted, "device": res.device,
                                "precision": res.precision}
            atomic_write_json(ledger_path, ledger)
        record = dict(ledger.get(plan.tag, {})) if ledger.get(plan.tag, {}).get("key_sha256") == key else {}
        record["this_run"] = bool(res.extracted)
        out.append(Extracted(plan, path, record))
    return out


def _halve(src: Source, candidates: list[Candidate], floor: str | None, sample: int, keep: int, out: Path,
           options: dict, quiet: bool) -> tuple[list[Candidate], dict]:
    """Successive halving: LogME of every candidate on ``sample`` images (its own stores, under ``DIR/sample``);
    the best ``keep`` go on to the full data (the random floor, a reference, always does)."""
    sub = src.limit(sample)
    stores = _extract_all(sub, store_plans(candidates), out / "sample" / "stores", out / "sample" / "extractions.json",
                          options, quiet)
    schemes = share_split([s.path for s in stores], 1)
    by_store = {c.tag: s for s in stores for c in s.plan.candidates}
    grid: GridRun = run_grid([GridStore(by_store[c.tag].path, schemes, c.tag, c.layer) for c in candidates],
                             [("logme", None, 0)], out / "sample", options={}, ft_options={}, quiet=quiet)
    score = {tag: cells[0]["score"] for tag, cells in grid.cells.items() if cells}
    ranked = sorted((c for c in candidates if c.tag != floor), key=lambda c: -score.get(c.tag, float("-inf")))
    kept = {c.tag for c in ranked[:keep]} | ({floor} if floor else set())
    dropped = [c for c in candidates if c.tag not in kept]
    kept_stores = {c.store_tag for c in candidates if c.tag in kept}
    saved = 0.0
    for s in stores:
        ips = s.record.get("images_per_s") or 0.0
        if s.plan.tag not in kept_stores and ips > 0:
            saved += len(src) / ips  # the full extraction this store would have cost
    spent = sum(s.record.get("seconds", 0.0) for s in stores) + sum(
        cells[0].get("train_seconds", 0.0) for cells in grid.cells.values() if cells)
    halving = {"sample": len(sub), "keep": keep, "logme_on_sample": score,
               "skipped": [c.tag for c in dropped], "kept": [c.tag for c in candidates if c.tag in kept],
               "estimated_full_extraction_seconds_skipped": saved, "sample_pass_seconds": spent,
               "estimated_seconds_saved": saved - spent}
    say(quiet, f"sample pass: kept {len(kept)} of {len(candidates)} candidates; skipped {len(dropped)}, "
               f"about {saved - spent:.0f} s saved")
    return [c for c in candidates if c.tag in kept], halving


def _finetune_top(ranking: dict, k: int, budgets: list, seeds: int, out: Path, scheme: str, ft_options: dict,
                  quiet: bool) -> list[dict]:
    """Hand the best ``k`` pretrained candidates to ``compare`` (heads vs the fine-tune modes) on the shared split."""
    from .compare import DEFAULT_METHODS, compare

    largest = ranking["budgets"][-1]
    best = sorted((c for c in ranking["candidates"] if c["weights"] != RANDOM and largest in c["probe"]),
                  key=lambda c: -c["probe"][largest]["mean"])[:k]
    done = []
    for c in best:
        folder = out / "compare" / c["tag"]
        say(quiet, f"compare {c['tag']}: heads vs fine-tuning")
        res = compare(c["store"], methods=DEFAULT_METHODS, budgets=budgets, seeds=seeds, out=folder, quiet=quiet,
                      split=scheme, layer=c["layer"], **ft_options)
        done.append({"tag": c["tag"], "folder": str(folder), "recommendation": res.recommendation})
    return done
