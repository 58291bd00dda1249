"""A human-readable summary of a store, finished or partial (``featcache info``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .journal import Journal
from .splits import split_counts
from .store import FeatureStore

__all__ = ["describe"]


def describe(path: str | os.PathLike) -> str:
    """A human-readable summary of a store (finished or partial): layout, counts, provenance, failures."""
    path = Path(path)
    journal = Journal(path)
    if not path.exists() and journal.exists():
        key = journal.key() or {}
        return (f"{path}: partial extraction, {journal.committed_rows():,} source rows committed in {journal.dir}\n"
                f"  backbone: {key.get('backbone')}  layers: {', '.join(key.get('layers', []))}\n"
                "  re-run the same `featcache extract` command to resume")
    with FeatureStore(path) as fs:
        a = fs.attrs
        lines = [f"{path}  ({path.stat().st_size / 1e6:.1f} MB, featcache store v{a.get('format_version')})",
                 f"  rows: {fs.n_rows:,}   failed inputs: {a.get('n_failed', 0)}   task: {fs.task}"]
        if fs.label_names is not None:
            counts = np.bincount(fs.labels, minlength=len(fs.label_names))
            classes = ", ".join(f"{n} ({c})" for n, c in zip(fs.label_names, counts, strict=True))
            lines.append(f"  classes ({len(fs.label_names)}): {classes}")
        else:
            y = fs.labels
            lines.append(f"  targets: min {y.min():.4g}, mean {y.mean():.4g}, max {y.max():.4g}")
        for layer in fs.layers:
            (n, d), dtype, chunks = fs.layout(layer)
            lines.append(f"  features/{layer}: {n:,} x {d} {dtype}, chunks {chunks}")
        for name in fs.split_names():
            parts = ", ".join(f"{p} {k:,}" for p, k in split_counts(fs.split_assign(name)).items() if k)
            lines.append(f"  split {name}: {parts}")
        lines.append(f"  dataset: {a.get('dataset')}  fingerprint {str(a.get('dataset_fingerprint'))[:16]}")
        lines.append(f"  backbone: {a.get('backbone')}  weights: {a.get('weights_source')}"
                     f"  sha256 {str(a.get('weights_sha256'))[:16]}")
        lines += _text_lines(a) if a.get("modality") == "text" else _image_lines(a)
        fails = fs.failures
        if fails:
            lines.append(f"  failures ({len(fails)}):")
            lines += [f"    {reason}" for _, reason in fails[:20]]
            if len(fails) > 20:
                lines.append(f"    ... and {len(fails) - 20} more")
        return "\n".join(lines)


def _image_lines(a: dict) -> list[str]:
    run = a.get("pipeline") or {}
    lines = [f"  preprocessing: {json.dumps(a.get('preprocessing'))}", _precision_line(a)]
    if run:
        lines.append(f"  batch size: {run.get('batch_size')} ({run.get('batch_size_reason')})")
        lines.append(f"  decoding: {run.get('decoder')}; {run.get('resize')}; {run.get('workers')} loader workers; "
                     f"{run.get('batchnorm_folded', 0)} BatchNorm layers folded into their convolutions")
    return lines


def _text_lines(a: dict) -> list[str]:
    """A text store's encoder settings: pooling, normalisation, maximum length, tokenizer, and how texts were
    batched (the share of padding tokens the length-sorted batches still computed)."""
    t, run = a.get("text") or {}, a.get("pipeline") or {}
    pooling = t.get("pooling")
    if pooling == "sentence-transformers":
        pooling = f"sentence-transformers ({'+'.join(t.get('modes', []))})"
    cols = a.get("source_options") or {}
    shown = ", ".join(f"{k.removesuffix('_col')}={v}" for k, v in cols.items() if v and k.endswith("_col"))
    lines = [f"  text: pooling {pooling}, {'L2-normalised' if t.get('normalize') else 'not normalised'}, "
             f"max length {t.get('max_length')} tokens; tokenizer {t.get('tokenizer')} "
             f"sha256 {str(t.get('tokenizer_sha256'))[:16]}" + (f"; columns {shown}" if shown else ""),
             _precision_line(a)]
    if run:
        lines.append(f"  batch size: {run.get('batch_size')} ({run.get('batch_size_reason')}); texts sorted by length "
                     f"in windows, {100 * float(run.get('padding_share', 0)):.0f} % of the computed tokens were "
                     f"padding; {run.get('truncated', 0):,} texts reached the max length (cut there)")
    return lines


def _precision_line(a: dict) -> str:
    return (f"  precision: {a.get('precision')} on {a.get('device')}   created {a.get('created_at')}"
            f"   featcache {a.get('featcache_version')}")
