"""One metrics function for every method (heads and fine-tunes), so their numbers compare."""

from __future__ import annotations

import numpy as np

__all__ = ["score", "format_metrics", "format_confusion", "selection_score"]


def score(task: str, y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str] | None = None) -> dict:
    """Classification: accuracy, macro-F1, balanced accuracy, confusion matrix. Regression: R², MAE, RMSE."""
    from sklearn import metrics as m

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    out: dict = {"n": int(y_true.shape[0])}
    if task == "classification":
        labels = list(range(len(label_names))) if label_names is not None else sorted(set(y_true) | set(y_pred))
        out.update(
            accuracy=float(m.accuracy_score(y_true, y_pred)),
            macro_f1=float(m.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
            balanced_accuracy=float(m.balanced_accuracy_score(y_true, y_pred)),
            confusion_matrix=m.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        )
    else:
        out.update(
            r2=float(m.r2_score(y_true, y_pred)),
            mae=float(m.mean_absolute_error(y_true, y_pred)),
            rmse=float(np.sqrt(m.mean_squared_error(y_true, y_pred))),
        )
    return out


def selection_score(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The number model selection maximises: accuracy, or R² for regression."""
    if task == "classification":
        return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))
    from sklearn.metrics import r2_score

    return float(r2_score(y_true, y_pred))


def format_metrics(metrics: dict, label_names: list[str] | None = None, max_classes: int | None = 20) -> str:
    """A short table: the scalar metrics, then the confusion matrix (rows: true, columns: predicted) when there
    are at most ``max_classes`` classes (None: always)."""
    scalars = [(k, v) for k, v in metrics.items() if isinstance(v, float)]
    lines = [f"  {k:<18} {v:.4f}" for k, v in scalars] + [f"  {'n':<18} {metrics['n']}"]
    cm = metrics.get("confusion_matrix")
    if cm is not None and (max_classes is None or len(cm) <= max_classes):
        lines.append(format_confusion(cm, label_names))
    return "\n".join(lines)


def format_confusion(cm: list[list[int]], label_names: list[str] | None = None) -> str:
    """The confusion matrix with each row named in full ("T-shirt/top", not "T-shirt/") and the columns numbered
    as the rows, so long class names cost one column of width, not one per class."""
    fits = label_names is not None and len(label_names) == len(cm)  # a sidecar's names may not be the store's
    rows = [f"{i} {n}" if fits else str(i) for i, n in enumerate(label_names if fits else range(len(cm)))]
    name_w = max(len(r) for r in rows)
    width = max(len(str(len(cm) - 1)), *(len(str(v)) for row in cm for v in row)) + 2
    lines = ["  confusion matrix (rows: true, columns: predicted, numbered as the rows)",
             "  " + " " * name_w + "".join(f"{j:>{width}}" for j in range(len(cm)))]
    lines += [f"  {r:<{name_w}}" + "".join(f"{v:>{width}}" for v in row) for r, row in zip(rows, cm, strict=True)]
    return "\n".join(lines)
