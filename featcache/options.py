"""Options declared once: each with its default, help text and constraint, checked in one place.

As scikit-learn's ``_parameter_constraints``: an option's constraint is written beside its default
(:func:`option`, in a dataclass field's metadata), :func:`validate` checks a whole config at once with
one message format, and the command line builds its flags from the same fields (:func:`add_arguments`),
so a default, a choice list or a bound is never written twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError

__all__ = ["Interval", "OneOf", "option", "validate", "check", "add_arguments", "per_run_fields"]


@dataclass(frozen=True)
class Interval:
    """A number of ``kind`` between ``low`` and ``high`` (None: unbounded); ``open`` excludes an end."""

    kind: type
    low: float | None = None
    high: float | None = None
    open: str = ""  # "", "low", "high" or "both"
    none: bool = False  # None is allowed (and means "not set")

    def __call__(self, name: str, value: Any) -> None:
        if value is None and self.none:
            return
        import numpy as np

        integer = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        ok_type = integer or (self.kind is float and isinstance(value, (float, np.floating)))
        if not ok_type or (isinstance(value, float) and not math.isfinite(value)):
            raise InputError(f"{name} must be {'a number' if self.kind is float else 'an integer'}"
                             f"{self._range()}, got {value!r}")
        too_low = self.low is not None and (value <= self.low if self.open in ("low", "both") else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.open in ("high", "both")
                                              else value > self.high)
        if too_low or too_high:
            raise InputError(f"{name} must be{self._range()}, got {value!r}")

    def _range(self) -> str:
        lo = "(" if self.open in ("low", "both") else "["
        hi = ")" if self.open in ("high", "both") else "]"
        if self.low is not None and self.high is not None:
            return f" in {lo}{self.low:g}, {self.high:g}{hi}"
        if self.low is not None:
            return f" {'>' if lo == '(' else '>='} {self.low:g}"
        if self.high is not None:
            return f" {'<' if hi == ')' else '<='} {self.high:g}"
        return ""


@dataclass(frozen=True)
class OneOf:
    """One of a registry's names; ``names`` is called, so the registry is read when checked, not copied."""

    names: Callable[[], Sequence[str]]
    none: bool = False

    def __call__(self, name: str, value: Any) -> None:
        if value is None and self.none:
            return
        choices = list(self.names())
        if value not in choices:
            raise InputError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _any(name: str, value: Any) -> None:
    return None


def option(default: Any, help: str, constraint: Callable[[str, Any], None] = _any, *, flag: str | None = None,
           per_run: bool = False) -> Any:
    """A dataclass field carrying its help text and constraint. ``per_run`` options (a run's mode, seed,
    budget) are set by the command itself, not offered as shared flags."""
    return field(default=default, metadata={"help": help, "constraint": constraint, "flag": flag,
                                            "per_run": per_run})


def check(name: str, value: Any, constraint: Callable[[str, Any], None]) -> None:
    """Check one value that is not part of a config (an API argument), with the same messages."""
    constraint(name, value)


def validate(config: Any) -> None:
    """Check every field of a dataclass config against its declared constraint."""
    for f in dataclasses.fields(config):
        f.metadata.get("constraint", _any)(f.name, getattr(config, f.name))


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def per_run_fields(config_cls: type) -> list[str]:
    """The fields a command sets for each run (mode, budget, seed, ...), as opposed to shared settings."""
    return [f.name for f in dataclasses.fields(config_cls) if f.metadata.get("per_run")]


def add_arguments(group: argparse._ActionsContainer, config_cls: type, *, per_run: bool = False) -> list[str]:
    """Add a flag per field of ``config_cls`` (the shared settings, or with ``per_run`` the per-run ones),
    with the field's default, choices and help; returns the field names, to hand the parsed values back."""
    names = []
    for f in dataclasses.fields(config_cls):
        if bool(f.metadata.get("per_run")) != per_run:
            continue
        help_ = f.metadata.get("help", "")
        constraint = f.metadata.get("constraint")
        kwargs: dict[str, Any] = {"dest": f.name, "default": f.default}
        if isinstance(f.default, bool):
            if f.default:
                group.add_argument("--no-" + f.name.replace("_", "-"), action="store_false",
                                   help=f"turn off: {help_} (on by default)", **kwargs)
            else:
                group.add_argument(_flag(f), action="store_true", help=help_, **kwargs)
            names.append(f.name)
            continue
        if isinstance(constraint, OneOf):
            kwargs["choices"] = list(constraint.names())
        elif isinstance(constraint, Interval):
            kwargs["type"] = constraint.kind
        default = "" if f.default is None else f" (default: {f.default})"
        group.add_argument(_flag(f), help=help_ + default, **kwargs)
        names.append(f.name)
    return names
