"""The compare grid's cells on a Dask cluster, through joblib's Dask backend (one cell per task).

Cells are independent (each reads the store and its split; a fine-tune writes only its own run folder),
so a cluster runs them as they come. The driver saves each finished cell atomically as its result
arrives, exactly as the sequential loop does, so results, report and resume behaviour are the same.
Fine-tune cells ask for one ``GPU`` resource when the cluster's workers declare one
(``dask worker ... --resources GPU=1``), so two never share a card; heads ask for nothing. The store and
the output folder must be on a filesystem every worker sees.

Needs the optional extra: ``pip install featcache[dask]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from .errors import InputError

__all__ = ["dask_client", "run_on_dask"]

INSTALL = "compare --backend dask needs Dask: pip install 'featcache[dask]' (dask[distributed])"


@contextlib.contextmanager
def dask_client(scheduler: str | None, quiet: bool = True) -> Iterator[object]:
    """A client of the cluster at ``scheduler`` (``tcp://host:8786``), or of a local cluster of worker
    processes (one thread each) when none is given; closed on the way out."""
    try:
        import joblib
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise InputError(INSTALL) from None
    if tuple(int(x) for x in joblib.__version__.split(".")[:2]) < (1, 4):
        raise InputError(f"compare --backend dask needs joblib >= 1.4 (unordered results), found {joblib.__version__}")
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        with client:
            yield client
        return
    with LocalCluster(processes=True, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as c:
        if not quiet:
            print(f"dask: local cluster of {len(cluster.workers)} worker processes", flush=True)
        yield c


def _has_gpus(client) -> bool:
    workers = client.scheduler_info().get("workers", {})
    return any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers.values())


def run_on_dask(client, heads: Sequence[tuple], finetunes: Sequence[tuple], task: Callable) -> Iterator[dict]:
    """``task(*args)`` for every cell, heads first then fine-tunes (with a GPU each where the cluster has
    them); yields results as they finish, in any order."""
    from joblib import Parallel, delayed, parallel_config

    gpu = {"resources": {"GPU": 1}} if _has_gpus(client) else {}
    for cells, extra in ((heads, {}), (finetunes, gpu)):
        if not cells:
            continue
        with parallel_config(backend="dask", **extra):
            yield from Parallel(return_as="generator_unordered")(delayed(task)(*args) for args in cells)
