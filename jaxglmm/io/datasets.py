"""Bundled example data and a table reader that keeps R's factors as labels.

The CSV files in ``jaxglmm/datasets/`` were written by R's ``write.csv``: factor and
character columns are quoted (``"308"``), numbers are not (``249.56``).  :func:`read_table`
keeps that distinction, so ``herd``, ``period`` or ``Subject`` come back as string labels
and not as numbers, exactly as an R user sees them.
"""
from __future__ import annotations

import os
from importlib import resources

from .._lazy import pandas as pd

__all__ = ["load_dataset", "list_datasets", "read_table"]

_SCAN_BYTES = 1 << 20  # how much of a CSV is scanned to find its quoted columns


def list_datasets() -> list[str]:
    """Names of the bundled datasets.

    Examples
    --------
    >>> "sleepstudy" in list_datasets()
    True
    """
    folder = resources.files("jaxglmm").joinpath("datasets")
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".csv"))


def load_dataset(name: str) -> pd.DataFrame:
    """Load a bundled dataset (``cbpp``, ``classroom``, ``grouseticks``, ``pastes``,
    ``penicillin``, ``sleepstudy``, ``wine``).

    Parameters
    ----------
    name:
        One of :func:`list_datasets`.

    Returns
    -------
    pandas.DataFrame
        Quoted CSV fields (R's factors) as strings, the rest as numbers.

    Examples
    --------
    >>> df = load_dataset("cbpp")
    >>> df.loc[0, "herd"], int(df.loc[0, "size"])
    ('1', 14)
    """
    names = list_datasets()
    if name not in names:
        raise ValueError(f"unknown dataset {name!r}; choose one of {names}")
    resource = resources.files("jaxglmm").joinpath("datasets", f"{name}.csv")
    with resources.as_file(resource) as path:
        frame = read_table(path)
    frame.attrs["name"] = name       # the summary's "Data:" line, as lme4 prints it
    return frame


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV or Parquet file.

    For CSV, a column with quoted fields is read as strings (``"1"`` stays the label
    ``"1"``), as R's ``write.csv`` quotes factors and characters; unquoted columns are parsed
    by pandas as usual (numbers, with ``NA`` and empty fields missing).

    Parameters
    ----------
    path:
        A ``.csv`` file (any other suffix but ``.parquet``/``.pq`` is read as CSV) or a
        Parquet file.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist (the message names it).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file not found: {path}")
    if path.lower().endswith((".parquet", ".pq")):
        frame = pd.read_parquet(path)
    else:
        header = pd.read_csv(path, nrows=0).columns
        with open(path, newline="", encoding="utf-8") as handle:
            quoted = _quoted_positions(handle.read(_SCAN_BYTES))
        dtype = {header[i]: str for i in quoted if i < len(header)}
        frame = pd.read_csv(path, dtype=dtype)
    frame.attrs["name"] = os.path.basename(path)    # the summary's "Data:" line
    return frame


def _quoted_positions(text: str) -> set[int]:
    """Positions of the columns that have a quoted field in some data row of ``text``.

    A small CSV scanner: the :mod:`csv` module does not tell whether a field was quoted.
    A record cut off at the end of ``text`` is ignored.
    """
    records: list[list[bool]] = []
    record: list[bool] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == '"':
            j = i + 1
            while True:
                j = text.find('"', j)
                if j < 0:
                    return _columns_with_quotes(records)
                if text[j + 1:j + 2] == '"':
                    j += 2
                    continue
                break
            record.append(True)
            i = j + 1
            while i < n and text[i] not in ",\r\n":
                i += 1
        else:
            j = i
            while j < n and text[j] not in ",\r\n":
                j += 1
            record.append(False)
            i = j
        if i >= n:
            break  # the last record may be cut off: leave it out
        if text[i] == ",":
            i += 1
            if i >= n:
                break
            continue
        records.append(record)
        record = []
        i += 2 if text[i] == "\r" and text[i + 1:i + 2] == "\n" else 1
    return _columns_with_quotes(records)


def _columns_with_quotes(records: list[list[bool]]) -> set[int]:
    return {k for record in records[1:] for k, q in enumerate(record) if q}
