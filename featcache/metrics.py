"""One metrics function for every method (heads and fine-tunes), so their numbers compare."""

from __future__ import annotations

import numpy as np

__all__ = ["score", "format_metrics", "selection_score"]


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


def format_metrics(metrics: dict, label_names: list[str] | None = None) -> str:
    """A short table: the scalar metrics, then the confusion matrix (rows: true, columns: predicted)."""
    scalars = [(k, v) for k, v in metrics.items() if isinstance(v, float)]
    lines = [f"  {k:<18} {v:.4f}" for k, v in scalars] + [f"  {'n':<18} {metrics['n']}"]
    cm = metrics.get("confusion_matrix")
    if cm is not None and len(cm) <= 20:
        fits = label_names is not None and len(label_names) == len(cm)  # a sidecar's names may not be the store's
        names = [str(n)[:8] for n in (label_names if fits else range(len(cm)))]
        width = max(6, max(len(n) for n in names) + 1)
        lines.append("  confusion matrix (rows: true, columns: predicted)")
        lines.append("  " + " " * width + "".join(f"{n:>{width}}" for n in names))
        for n, row in zip(names, cm, strict=True):
            lines.append(f"  {n:>{width}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)
