"""Reading one CSV file of the data contract strictly, with errors that name the fix.

Shared by the data stage (`datasets.py`) and `inspect` (`inspect_data.py`), so both refuse
the same files for the same reasons: every cell is read as a string (only empty cells are
missing), a file that is not UTF-8 or not comma-separated is refused naming its line and the
fix, and messages name a data row with the line an editor shows it on. Trailing empty
columns (`userId,movieId,rating,timestamp,,`, as spreadsheets export them) are dropped and
noted rather than refused. Only numpy, pandas and the standard library.
"""

from __future__ import annotations

import csv
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from twotower_utils.data.rawdata import DataValidationError
from twotower_utils.logs import report

__all__ = ["describe_rows", "line_numbers", "read_csv", "row_error", "to_number"]

_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe (|)"}
_UNNAMED = re.compile(r"Unnamed: \d+")  # pandas' name for a column with an empty header


def read_csv(path: Path, required: list[str], hint: str,
             notes: list[str] | None = None) -> pd.DataFrame:
    """Read `path` as strings and check that the `required` columns are there.

    Takes the path, the column names the caller needs, a `hint` saying how to fix a missing
    column, and the notes list that gets a line for each dropped trailing empty column.
    Returns the frame (column names stripped of spaces); raises `DataValidationError` for a
    missing, empty, non-UTF-8, non-comma or ragged file, or a missing column.
    """
    expected = f"expected a CSV file with a header line naming {', '.join(required)}"
    if not path.is_file():
        raise DataValidationError(f"{path}: file not found; {expected}")
    options = dict(dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig",
                   index_col=False)
    try:
        frame = _strict_read(path, options)
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"{path}: empty file; {expected}") from None
    except UnicodeDecodeError:
        raise DataValidationError(f"{path}: {encoding_problem(path)}") from None
    except (pd.errors.ParserWarning, pd.errors.ParserError) as err:
        width, extra_lines = _trailing_empty_fields(path)
        if width and extra_lines:
            # Rows that end in empty fields the header lacks ("1,2,3,,"): read the header's
            # columns only; nothing is lost, since the extra fields are all empty.
            frame = _strict_read(path, {**options, "usecols": range(width)})
            report(notes, f"{path.name}: {extra_lines:,} row(s) end in empty fields beyond the "
                          f"header's {width} columns (trailing commas); ignored them",
                   logging.INFO)
        else:
            problem = (delimiter_problem(path, required) or ragged_line(path)
                       or f"not a readable CSV: {str(err).strip()}")
            raise DataValidationError(f"{path}: {problem}") from None
    frame.columns = [str(column).strip() for column in frame.columns]
    empty = [c for c in frame.columns if _UNNAMED.fullmatch(c) and frame[c].isna().all()]
    if empty:
        frame = frame.drop(columns=empty)
        report(notes, f"{path.name}: dropped {len(empty)} trailing column(s) with an empty "
                      "header and no values (trailing commas)", logging.INFO)
    missing = [column for column in required if column not in frame.columns]
    if missing:
        delimiter = delimiter_problem(path, required)
        if delimiter:
            raise DataValidationError(f"{path}: {delimiter}")
        raise DataValidationError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))} (the header has "
            f"{', '.join(map(repr, frame.columns))}); {hint}"
        )
    if frame.empty:
        raise DataValidationError(f"{path}: the header is there but no data rows follow")
    return frame


def _strict_read(path: Path, options: dict) -> pd.DataFrame:
    with warnings.catch_warnings():
        # Without index_col=False, rows with extra fields silently turn the leading
        # columns into an index; with it pandas only warns and drops data. Refuse instead.
        warnings.simplefilter("error", pd.errors.ParserWarning)
        return pd.read_csv(path, **options)


def _rows_longer_than_header(path: Path):
    """Yield `(line number, row, header width)` for each row with more fields than the
    header; stops quietly on a file csv cannot read (the caller's error path names that)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = csv.reader(handle)
            width = len(next(rows))
            for row in rows:
                if len(row) > width:
                    yield rows.line_num, row, width
    except (OSError, UnicodeDecodeError, csv.Error, StopIteration):
        return


def _trailing_empty_fields(path: Path) -> tuple[int, int]:
    """(header width, rows longer than it) when there are such rows and every extra field is
    empty, else (0, 0)."""
    longer, width = 0, 0
    for _, row, width in _rows_longer_than_header(path):
        if any(field.strip() for field in row[width:]):
            return 0, 0
        longer += 1
    return (width, longer) if longer else (0, 0)


def encoding_problem(path: Path) -> str:
    """Where the first byte that is not UTF-8 sits, and how to fix it (error path only)."""
    with open(path, "rb") as handle:
        if handle.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            return ("the file is UTF-16 (Excel's 'Unicode Text'): save it as UTF-8 with commas "
                    "(Excel: Save As > 'CSV UTF-8'; pandas: pd.read_csv(path, "
                    "encoding='utf-16', sep=None, engine='python').to_csv(path, index=False))")
        handle.seek(0)
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                bad = line[err.start:err.start + 1]
                shown = line.rstrip(b"\r\n").decode("utf-8", errors="backslashreplace")
                return (f"line {number} is not valid UTF-8 (byte 0x{bad.hex()} at character "
                        f"{err.start + 1}: {shown[:80]!r}); the file is probably Latin-1 or "
                        "Windows-1252: save it as UTF-8 (Excel: Save As > 'CSV UTF-8'; pandas: "
                        "pd.read_csv(path, encoding='latin-1').to_csv(path, index=False))")
    return "not valid UTF-8: save it as UTF-8"


def delimiter_problem(path: Path, required: list[str]) -> str | None:
    """If the header is split by ';', tab or '|' rather than ',', say so and how to fix it."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            header = handle.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError):
        return None
    found = []
    for delimiter, label in _DELIMITERS.items():
        fields = [field.strip() for field in header.split(delimiter)]
        if len(fields) > 1:
            found.append((all(c in fields for c in required), header.count(delimiter), label,
                          delimiter))
    if not found:
        return None
    matches, _, label, delimiter = max(found)
    how = ("its header names the expected columns when split on it" if matches
           else "its header line contains it")
    return (f"the file looks {label}-delimited ({delimiter!r}; {how}: {header[:80]!r}); this "
            "project reads comma-separated files: save it with commas (Excel: Save As > 'CSV "
            f"UTF-8'; pandas: pd.read_csv(path, sep={delimiter!r}).to_csv(path, index=False))")


def ragged_line(path: Path) -> str | None:
    """The first line with more fields than the header, in words, or None."""
    for line, row, width in _rows_longer_than_header(path):
        return (f"line {line} has {len(row)} fields but the header has {width}; quote values "
                "that contain commas")
    return None


def line_numbers(path: Path, rows: list[int]) -> dict[int, int]:
    """1-based line (as an editor shows it) where each 0-based data row starts.

    pandas skips blank lines and lets a quoted cell span lines, so a data row is not always
    line row + 2; the file is read only up to the last row asked for (messages only).
    """
    wanted, found = set(rows), {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            data_row, previous_end = -1, 0  # -1: the header comes first
            for record in reader:
                start, previous_end = previous_end + 1, reader.line_num
                if not record:
                    continue  # blank line, skipped by pandas as well
                if data_row in wanted:
                    found[data_row] = start
                    if len(found) == len(wanted):
                        break
                data_row += 1
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return {row: found.get(row, row + 2) for row in rows}


def describe_rows(path: Path, rows: list[int]) -> str:
    """`data row 3 (line 4)` for 0-based data rows of `path` (several joined by "and")."""
    lines = line_numbers(path, rows)
    data = " and ".join(str(row + 1) for row in rows)
    return (f"data row{'s' if len(rows) > 1 else ''} {data} "
            f"(line{'s' if len(rows) > 1 else ''} {' and '.join(str(lines[r]) for r in rows)})")


def row_error(path: Path, frame: pd.DataFrame, column: str, bad: np.ndarray, problem: str,
              expected: str) -> DataValidationError:
    """The error for the rows `bad` (a boolean mask) of one column: file, column, first row
    with its value, what was expected and how many rows are affected."""
    rows = np.flatnonzero(bad)
    first = int(rows[0])
    value = frame[column].iloc[first]
    shown = "an empty cell" if pd.isna(value) else repr(value)
    more = f" ({len(rows)} such rows in all)" if len(rows) > 1 else ""
    return DataValidationError(
        f"{path}: column {column!r}, {describe_rows(path, [first])}: {problem} "
        f"{shown}; expected {expected}{more}"
    )


def to_number(path: Path, frame: pd.DataFrame, column: str, expected: str,
              allow_missing: bool, integer: bool = False) -> pd.Series:
    """Column `column` of `frame` as numbers; a cell that is not one (or empty, unless
    `allow_missing`; or fractional, when `integer`) raises `row_error` naming `expected`."""
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce")
    array = values.to_numpy(dtype=np.float64)
    bad = raw.notna().to_numpy() & ~np.isfinite(array)
    if not allow_missing:
        bad |= raw.isna().to_numpy()
    if integer:
        bad |= np.isfinite(array) & (array != np.round(array))
    if bad.any():
        raise row_error(path, frame, column, bad, "cannot use the value", expected)
    return values
