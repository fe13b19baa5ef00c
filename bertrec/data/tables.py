"""Raw tables read as text, and validated conversions that name file, row, column and value.

Every source format is read into a :class:`RawTable` of string columns first, so that each
conversion (ids, numbers, timestamps) can report exactly which line of which file is wrong.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bertrec.errors import DataError

MAX_EXAMPLES = 5
_INT_RE = re.compile(r"^-?\d+$")


@dataclass(frozen=True)
class RawTable:
    """A file's rows as strings, with what is needed to point at a row in the file.

    ``first_line`` is the 1-based line of the first data row in a text file; ``None`` for Parquet,
    whose rows are counted from 1.
    """

    path: Path
    frame: pd.DataFrame
    first_line: int | None

    def where(self, index: int) -> str:
        if self.first_line is None:
            return f"{self.path}:row {index + 1}"
        return f"{self.path}:{index + self.first_line}"

    def fail(self, mask: np.ndarray, column: str, expected: str) -> DataError:
        """One error for every row where ``mask`` is true: the first row, or a count and examples."""
        bad = np.flatnonzero(mask)
        values = self.frame[column].to_numpy()
        if len(bad) == 1:
            i = bad[0]
            return DataError(f"{self.where(i)}: column {column!r} is {values[i]!r}; expected {expected}")
        examples = "; ".join(f"{self.where(i)} {values[i]!r}" for i in bad[:MAX_EXAMPLES])
        return DataError(
            f"{self.path}: column {column!r} has {len(bad)} bad values; expected {expected}. First: {examples}"
        )


def _decode(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}:{line}: byte {data[exc.start:exc.start + 1]!r} at offset {exc.start} is not valid {encoding}; "
            "set data.encoding to the file's encoding (e.g. latin-1)"
        ) from None


def read_delimited(
    path: Path,
    delimiter: str,
    *,
    names: list[str] | None = None,
    encoding: str = "utf-8",
    comment: str | None = None,
) -> RawTable:
    """Read a delimited text file as strings. With ``names``, the file has no header line.

    Multi-character delimiters (MovieLens ``::``) are supported. Raises DataError for an empty
    file or undecodable bytes.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    text = _decode(path, encoding)
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    sep = delimiter
    if len(delimiter) > 1:
        text, sep = text.replace(delimiter, "\x1f"), "\x1f"
    quoting = csv.QUOTE_MINIMAL if sep == "," else csv.QUOTE_NONE
    frame = pd.read_csv(
        io.StringIO(text),
        sep=sep,
        header=None if names is not None else 0,
        names=names,
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        skip_blank_lines=False,
        quoting=quoting,
        comment=comment,
        engine="c",
        index_col=False,
    )
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty and names is None:
        raise DataError(f"{path}: file has a header line but no rows")
    return RawTable(path, frame, 1 if names is not None else 2)


def read_parquet(path: Path) -> RawTable:
    """Read a Parquet file; columns are kept as they are stored (converted on demand)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    if frame.empty:
        raise DataError(f"{path}: file is empty")
    return RawTable(path, frame.reset_index(drop=True), None)


def read_table(path: Path, delimiter: str = ",", encoding: str = "utf-8") -> RawTable:
    """Read CSV/TSV or Parquet, chosen by the file's suffix."""
    path = Path(path)
    if path.suffix.lower() in {".parquet", ".pq"}:
        return read_parquet(path)
    return read_delimited(path, delimiter, encoding=encoding)


def require_columns(table: RawTable, columns: list[str], what: str) -> None:
    """Fail when a column is missing, hinting at a wrong delimiter when the header looks joined."""
    present = list(table.frame.columns)
    missing = [c for c in columns if c not in present]
    if not missing:
        return
    hint = ""
    if len(present) == 1:
        header = present[0]
        for name, sep in (("tab", "\t"), ("comma", ","), ("semicolon", ";"), ("'|'", "|"), ("'::'", "::")):
            if sep in header:
                hint = f"; the header {header!r} is one column: is the delimiter a {name}? (set data.delimiter)"
                break
    line = f"{table.path}:1" if table.first_line == 2 else str(table.path)
    raise DataError(
        f"{line}: {what} needs column(s) {missing}, found {present}{hint}"
    )


def ids(table: RawTable, column: str) -> np.ndarray:
    """A column of identifiers as stripped strings; empty ids are an error."""
    series = table.frame[column]
    if series.dtype.kind == "f":
        integral = series.dropna().map(float.is_integer).all()
        if integral:
            series = series.astype("Int64")
    values = series.astype(str).str.strip()
    bad = values.isin(["", "nan", "<NA>", "None"]).to_numpy()
    if bad.any():
        raise table.fail(bad, column, "a non-empty id")
    return values.to_numpy(dtype=object)


def numbers(table: RawTable, column: str) -> np.ndarray:
    """A numeric column as float64; anything unparseable is an error."""
    series = table.frame[column]
    if series.dtype.kind in "iuf":
        values = series.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
    else:
        values = pd.to_numeric(series.astype(str).str.strip(), errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
    if bad.any():
        raise table.fail(bad, column, "a number")
    return values


def timestamps(table: RawTable, column: str) -> np.ndarray:
    """Timestamps as epoch seconds: int64, or float64 when some are fractional.

    Accepts numbers (epoch seconds) and ISO-8601 date/time strings.
    """
    series = table.frame[column]
    if pd.api.types.is_datetime64_any_dtype(series):
        parsed = pd.to_datetime(series, utc=True)
        bad = parsed.isna().to_numpy()
        if bad.any():
            raise table.fail(bad, column, "a timestamp")
        return _epoch_seconds(parsed)
    text = series.astype(str).str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    result = np.array(numeric, dtype=np.float64)
    dates = numeric.isna().to_numpy()
    if dates.any():
        parsed = pd.to_datetime(text[dates], utc=True, errors="coerce", format="ISO8601")
        ok = parsed.notna().to_numpy()
        result[np.flatnonzero(dates)[ok]] = _epoch_seconds(parsed[ok])
        still_bad = np.zeros(len(text), dtype=bool)
        still_bad[np.flatnonzero(dates)[~ok]] = True
        if still_bad.any():
            raise table.fail(still_bad, column, "epoch seconds or an ISO-8601 date")
    if not np.all(np.isfinite(result)):
        raise table.fail(~np.isfinite(result), column, "a finite timestamp")
    if np.all(result == np.floor(result)):
        return result.astype(np.int64)
    return result


def _epoch_seconds(parsed: pd.Series) -> np.ndarray:
    """Whole seconds since 1970 of tz-aware datetimes, whatever their resolution."""
    epoch = pd.Timestamp(0, tz="UTC")
    return ((parsed - epoch) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def id_order(values: np.ndarray) -> np.ndarray:
    """Sort order of ids: numeric when every id is an integer, else lexicographic (stable)."""
    values = np.asarray(values, dtype=object)
    if all(_INT_RE.match(v) for v in values):
        keys = np.array([int(v) for v in values], dtype=object)
        try:
            return np.argsort(keys.astype(np.int64), kind="stable")
        except OverflowError:
            return np.array(sorted(range(len(values)), key=lambda i: keys[i]))
    return np.argsort(values.astype(str), kind="stable")
