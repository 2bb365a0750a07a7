"""A fit_many checkpoint: a folder that holds each finished chunk of one run, so a run that
stops (Ctrl-C, a killed job, a lost machine) and is started again fits only what is missing.

The folder holds ``plan.json`` (what the run is: :func:`fingerprint`) and one
``chunk-NNNNNN.npz`` per finished chunk: every array of its fits and its verdicts, read back
exactly (numpy's format, no pickle).  Each file is written whole (a temporary file in the
same folder, fsync, ``os.replace``): a file there is a finished chunk, and a run killed at
any moment leaves only finished chunks and, at worst, a temporary file, which the next run
removes.  A folder made for a different run (another formula, method, options, chunk size
or data) is refused with a one-line ``ValueError``.

Examples
--------
>>> fits = jg.fit_many(formula, sims, by="sim", checkpoint="sims.ckpt")   # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import uuid
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
from .._lazy import pandas as pd

from ..fit.likelihood import RawFit
from .chunk import Bucket, ChunkFits, bucket_structure

PLAN = "plan.json"
_CHUNK_FILE = re.compile(r"chunk-(\d+)\.npz")
#: The layout of the chunk files; a folder written with another is refused.
STORE_VERSION = 1


def _jaxglmm_version() -> str:
    try:
        return metadata.version("jaxglmm")
    except metadata.PackageNotFoundError:   # a source tree on the path, not installed
        return "unknown"


def _describe(value) -> str:
    """A JSON stand-in for a value that is not JSON: arrays by a digest of their values."""
    if isinstance(value, (np.ndarray, pd.Series, pd.Index)):
        array = np.ascontiguousarray(np.asarray(value))
        digest = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
        digest.update(pd.util.hash_array(array.reshape(-1)).tobytes() if array.dtype == object
                      else array.tobytes())
        return f"array sha256:{digest.hexdigest()}"
    return str(value)


def fingerprint(plan) -> dict:
    """What must be the same for a run to reuse saved chunks (a :class:`ManyPlan`'s model,
    method and options, its datasets, labels in order and a digest of their values, and
    how they are split into chunks), as it reads back from ``plan.json``."""
    spec, table = plan.spec, plan.table
    digest = hashlib.sha256(json.dumps([str(c) for c in table.columns]).encode())
    digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    record = {"store": STORE_VERSION, "jaxglmm_version": _jaxglmm_version(),
              **spec.model_kw, "formula": spec.formula, "family": spec.family.name,
              "link": spec.family.link.name, "method": spec.method, "options": spec.options,
              "chunk_size": plan.chunk_size, "datasets": [str(i) for i in plan.ids],
              "data": digest.hexdigest()}
    return json.loads(json.dumps(record, default=_describe))


def saved_chunk_size(folder) -> int | None:
    """The chunk size of the run saved in ``folder``, or None (a run that does not name
    one goes on with it)."""
    if not isinstance(folder, (str, os.PathLike)):
        return None                     # Checkpoint(folder, ...) says what is wrong
    try:
        size = json.loads((Path(folder).expanduser() / PLAN).read_text(encoding="utf-8")).get("chunk_size")
    except (OSError, ValueError, AttributeError):
        return None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def chunk_files(folder) -> dict[int, Path]:
    """``{chunk: file}`` of the finished chunks in ``folder``."""
    found = {}
    folder = Path(folder)
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            match = _CHUNK_FILE.fullmatch(path.name)
            if match:
                found.setdefault(int(match.group(1)), path)
    return found


class Checkpoint:
    """The checkpoint folder of one fit_many run (a :class:`ManyPlan`), opened: checked to
    hold this run's chunks (a new or empty folder gets the run's ``plan.json``).

    ``elsewhere`` names the way out a refusal offers (the command line's output folder)."""

    def __init__(self, folder, plan, *, elsewhere: str = "another checkpoint folder"):
        if not isinstance(folder, (str, os.PathLike)):
            raise TypeError(f"checkpoint must be a folder path (str or os.PathLike), got "
                            f"{type(folder).__name__}")
        self.folder = Path(folder).expanduser()
        self.plan = plan
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"checkpoint {self.folder} is a file, not a folder")
        self._check(fingerprint(plan), elsewhere)
        self.saved = chunk_files(self.folder)

    def _check(self, record: dict, elsewhere: str) -> None:
        folder, plan_file = self.folder, self.folder / PLAN
        way_out = f"choose {elsewhere}, or delete {folder} to start over"
        if plan_file.is_file():
            try:
                saved = json.loads(plan_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise ValueError(f"cannot read {plan_file} ({err}); delete {folder} to start "
                                 "over") from None
            differ = [k for k in record if not isinstance(saved, dict)
                      or saved.get(k) != record[k]]
            if differ:
                raise ValueError(
                    f"{folder} holds the chunks of a different fit-many run (its "
                    f"{', '.join(differ)} {'differs' if len(differ) == 1 else 'differ'} from "
                    f"this run's): {way_out}")
        elif chunk_files(folder):
            raise ValueError(f"{folder} holds chunk files but no {PLAN}, so they cannot be "
                             f"checked against this run: {way_out}")
        else:
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(plan_file, (json.dumps(record, indent=1) + "\n").encode())
        for stale in folder.iterdir():       # the temporary file of a killed write
            if stale.name.startswith(".") and ".tmp-" in stale.name:
                stale.unlink(missing_ok=True)

    def missing(self) -> list[int]:
        """The chunks not saved yet, in order."""
        return [k for k in range(len(self.plan.chunks)) if k not in self.saved]

    def save(self, k: int, fits: ChunkFits) -> None:
        """Chunk ``k``'s fits, written whole."""
        path = self.folder / f"chunk-{k:06d}.npz"
        write_atomic(path, _chunk_bytes(fits))
        self.saved[k] = path

    def load(self, k: int) -> ChunkFits:
        """Chunk ``k``'s fits as they were saved (checked to be chunk ``k``'s datasets)."""
        path = self.saved[k]
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            meta = json.loads(str(arrays.pop("meta")))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            raise ValueError(f"cannot read {path} ({err}); delete it to fit its chunk again"
                             ) from None
        payload = self.plan.payload(k)
        ids = arrays.pop("ids").tolist()
        if ids != [str(i) for i in payload.ids]:
            raise ValueError(f"{path} does not hold chunk {k}'s datasets; delete "
                             f"{self.folder} to start over")
        spec, buckets = self.plan.spec, []
        for b in range(meta["buckets"]):
            positions = arrays[f"{b}.positions"]
            members = [payload.members[j] for j in positions]
            raw = RawFit(**{name: tuple(arrays[f"{b}.{name}.{f}"] for f in range(meta["factors"]))
                            if name in _PER_FACTOR else arrays[f"{b}.{name}"]
                            for name in RawFit._fields})
            buckets.append(Bucket(positions, raw, bucket_structure(spec, members), members))
        return ChunkFits(list(payload.ids), buckets, arrays["converged"], arrays["singular"],
                         [tuple(m) for m in meta["messages"]], meta["seconds"], spec)

    def discard_if_empty(self) -> bool:
        """Remove the folder if no chunk was saved in it (a run that failed at once);
        True if it was removed."""
        if self.folder.is_dir() and not chunk_files(self.folder):
            shutil.rmtree(self.folder, ignore_errors=True)
            return True
        return False

    def remove(self) -> None:
        """Remove the folder (its chunks are written elsewhere now)."""
        shutil.rmtree(self.folder, ignore_errors=True)


_PER_FACTOR = ("b", "b_cov")


def _chunk_bytes(fits: ChunkFits) -> bytes:
    """A chunk's fits as one .npz: ids, verdicts, and each bucket's positions and RawFit
    arrays (``"{bucket}.{field}"``; per-factor fields ``"{bucket}.{field}.{factor}"``)."""
    factors = len(fits.buckets[0].raw.b) if fits.buckets else 0
    meta = {"buckets": len(fits.buckets), "factors": factors,
            "messages": [list(m) for m in fits.messages],
            "seconds": {k: float(v) for k, v in fits.seconds.items()}}
    arrays = {"meta": np.array(json.dumps(meta)), "ids": np.array([str(i) for i in fits.ids]),
              "converged": np.asarray(fits.converged, bool),
              "singular": np.asarray(fits.singular, bool)}
    for b, bucket in enumerate(fits.buckets):
        arrays[f"{b}.positions"] = np.asarray(bucket.positions)
        for name, value in zip(RawFit._fields, bucket.raw):
            if name in _PER_FACTOR:
                arrays.update({f"{b}.{name}.{f}": np.asarray(v) for f, v in enumerate(value)})
            else:
                arrays[f"{b}.{name}"] = np.asarray(value)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_atomic(path: Path, content: bytes) -> None:
    """``content`` into ``path`` whole or not at all: a temporary file beside it, flushed
    to disk, then renamed over it."""
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(temp, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    with contextlib.suppress(OSError):   # the rename itself, on file systems that allow it
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = ["Checkpoint", "PLAN", "chunk_files", "fingerprint", "saved_chunk_size",
           "write_atomic"]
