"""Where the chunks of a batch run: here, one after another, or on a Dask cluster.

:func:`run_chunks` applies one function to a list of payloads (one payload per chunk of
datasets) and returns the results in payload order.  With ``executor=None`` it runs them in
this process; with a :class:`dask.distributed.Client` it submits each payload as a task and
collects the results as they finish.  The function and the payloads then travel to the
workers by pickle (cloudpickle for the function), so they must be picklable, and a function
pickled by reference (a module-level function such as :func:`jaxglmm.many.batch.fit_chunk`)
must be importable on every worker: install jaxglmm there too.

Dask re-runs a task whose worker died (the scheduler's ``allowed-failures``), so a chunk can
finish after its worker was lost; each chunk's result is kept once, and ``done(k, result)``
is called exactly once per chunk, as it finishes, whatever the cluster went through.

Dask is optional: ``pip install jaxglmm[dask]``.  It is imported only when a client is given.

Examples
--------
>>> run_chunks(abs, [-1, 2, -3], progress=False)
[1, 2, 3]
"""
from __future__ import annotations

import sys
import uuid
from typing import Any, Callable, Sequence

from tqdm import tqdm

__all__ = ["run_chunks"]

_ACCEPTED = "None (run the chunks here, one after another) or a dask.distributed.Client"
_INSTALL = "pip install jaxglmm[dask]"


def run_chunks(fn: Callable[[Any], Any], payloads: Sequence, executor=None, progress=None,
               done: Callable[[int, Any], None] | None = None, desc: str = "datasets",
               sizes: Sequence[int] | None = None) -> list:
    """``[fn(p) for p in payloads]``, here or on a Dask cluster, with a progress bar.

    Parameters
    ----------
    fn
        A function of one payload.  With a Dask client it must be picklable (a module-level
        function importable on the workers, or anything cloudpickle can send).
    payloads
        One input per chunk; picklable with a Dask client.  A sequence (``len`` and
        indexing) is read one item at a time, so it may build each payload on demand.
    executor
        ``None``: run in this process, in order.  A :class:`dask.distributed.Client`: one
        task per payload, run wherever the cluster puts it.
    progress
        A tqdm bar on stderr, over datasets (``sizes``) or over chunks.  ``None``: shown
        when stderr is a terminal; ``False``: never; ``True``: always.
    done
        Called as ``done(k, result)`` once per chunk ``k`` (its index in ``payloads``), in
        this process, as the chunk finishes (in order of completion with a cluster).
    desc
        The progress bar's label.
    sizes
        ``sizes[k]``: how many datasets chunk ``k`` holds, for the bar.

    Returns
    -------
    list
        ``fn(payloads[k])`` at position ``k``.

    Raises
    ------
    TypeError
        ``executor`` is neither ``None`` nor a Dask client.
    ImportError
        A Dask client was asked for and dask.distributed is not installed.
    Exception
        The first failing chunk's exception; from a cluster, of the same type where it can
        be rebuilt, its message starting ``chunk K:``.
    """
    if not (hasattr(payloads, "__len__") and hasattr(payloads, "__getitem__")):
        payloads = list(payloads)   # a sequence is indexed as it goes: built when needed
    counts = _sizes(sizes, len(payloads))
    client = None if executor is None else _client(executor)
    results: list = [None] * len(payloads)
    finished = [False] * len(payloads)
    bar = tqdm(total=sum(counts), desc=desc, unit="dataset" if sizes is not None else "chunk",
               file=sys.stderr, disable=not _show(progress), dynamic_ncols=True)

    def finish(k: int, result) -> None:
        if finished[k]:     # a task Dask ran twice (its first worker died late): keep one
            return
        finished[k] = True
        results[k] = result
        if done is not None:
            done(k, result)
        bar.update(counts[k])

    try:
        if client is None:
            for k in range(len(payloads)):
                try:
                    result = fn(payloads[k])
                except Exception as err:
                    err.add_note(f"(in chunk {k} of {len(payloads)})")
                    raise
                finish(k, result)
        else:
            _run_on_cluster(client, fn, payloads, finish)
    finally:
        bar.close()
    return results


def _sizes(sizes, n: int) -> list[int]:
    if sizes is None:
        return [1] * n
    counts = [int(s) for s in sizes]
    if len(counts) != n:
        raise ValueError(f"sizes has {len(counts)} entries for {n} payloads")
    return counts


def _show(progress) -> bool:
    if progress is None:
        isatty = getattr(sys.stderr, "isatty", None)
        return bool(isatty and isatty())
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None (on when stderr is a "
                        f"terminal), got {progress!r}")
    return progress


def _name(obj) -> str:
    kind = type(obj)
    return kind.__qualname__ if kind.__module__ == "builtins" else \
        f"{kind.__module__}.{kind.__qualname__}"


def _client(executor):
    """``executor`` checked to be a Dask client."""
    try:
        from dask.distributed import Client
    except ImportError:
        if _name(executor).split(".")[0] in ("distributed", "dask"):
            raise ImportError(f"executor= needs dask.distributed, which is not installed: "
                              f"{_INSTALL}") from None
        raise TypeError(f"executor must be {_ACCEPTED} ({_INSTALL}), got {_name(executor)}") \
            from None
    if not isinstance(executor, Client):
        raise TypeError(f"executor must be {_ACCEPTED}, got {_name(executor)}")
    return executor


def _run_on_cluster(client, fn, payloads, finish) -> None:
    """One task per payload, unique keys (no two runs share a task), results as they come."""
    from dask.distributed import as_completed

    token = uuid.uuid4().hex
    label = getattr(fn, "__name__", "chunk")
    index = {}
    futures = []
    for k in range(len(payloads)):
        future = client.submit(fn, payloads[k], pure=False, key=f"jaxglmm-{label}-{token}-{k}")
        index[future.key] = k
        futures.append(future)
    try:
        for future in as_completed(futures, loop=client.loop):
            k = index[future.key]
            if future.status == "finished":
                finish(k, future.result())
                future.release()      # the result is here now; let the cluster drop it
                continue
            error = future.exception() if future.status == "error" else None
            raise _with_chunk(error, k, len(payloads), future.status)
    finally:
        client.cancel([f for f in futures if not f.done()])


def _with_chunk(error: BaseException | None, k: int, n: int, status: str) -> BaseException:
    """The task's exception again, its message naming the chunk (the same type where the
    type can be rebuilt from one message; else the original, with a note)."""
    if error is None:
        return RuntimeError(f"chunk {k} of {n} did not finish on the cluster ({status})")
    message = f"chunk {k} of {n}: {error}"
    try:
        again = type(error)(message)
    except Exception:
        again = None
    if again is None or str(again) != message:
        error.add_note(f"(in chunk {k} of {n}, on the cluster)")
        return error
    again.__cause__ = error
    return again
