"""Exceptions that mean "the user gave us something we cannot use".

The CLI turns every :class:`FeatcacheError` into a one-line message and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "FeatcacheError",
    "InputError",
    "UnknownBackboneError",
    "UnknownLayerError",
    "WeightsNotFoundError",
    "StoreMismatchError",
    "StoreIncompleteError",
    "CorruptInputError",
    "OutputExistsError",
    "StoreBusyError",
    "UntrustedFileError",
]


class FeatcacheError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""


class InputError(FeatcacheError, ValueError):
    """A path, manifest, option or dataset that cannot be used as given."""


class CorruptInputError(InputError):
    """One image could not be read or decoded (raised only with ``strict=True``)."""


class UnknownBackboneError(InputError):
    """The backbone name is not known to timm or torchvision."""


class UnknownLayerError(InputError):
    """A requested layer does not exist in the backbone or the store."""


class WeightsNotFoundError(FeatcacheError, FileNotFoundError):
    """Pretrained weights were asked for but found nowhere we looked."""


class StoreMismatchError(FeatcacheError):
    """An existing store (or partial run) was made from other inputs or settings."""


class StoreIncompleteError(FeatcacheError):
    """The store has not been completely extracted yet."""


class OutputExistsError(InputError):
    """The output path holds something that is not this command's kind of output (see ``--overwrite``)."""


class StoreBusyError(FeatcacheError):
    """Another process is writing the same store (one writer at a time)."""


class UntrustedFileError(InputError):
    """A file that could run code when loaded (a pickle), or whose origin cannot be checked, without ``--trust``."""


class NoSpaceError(FeatcacheError, OSError):
    """Not enough free disk space to write a file; nothing was written and the work done so far is kept."""
