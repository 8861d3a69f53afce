"""Kaggle "Digit Recognizer" CSV files: reading train/test, writing submissions.

Layout: a header ``label,pixel0,...,pixel783`` (train.csv) or
``pixel0,...,pixel783`` (test.csv), then one digit per line with grey levels
0-255, ink high. A submission is ``ImageId,Label`` with ids counted from 1.
"""

import csv
import math
import os
import re
import stat
from numbers import Integral
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.utils import Bunch

from ._atomic import atomic_write

__all__ = ["MAX_LINE_BYTES", "N_PIXELS", "load_digit_csv", "write_submission"]

#: Pixels per digit in Kaggle's files (28 x 28).
N_PIXELS = 784

#: Longest line, in bytes, that is handed to the parsers. A Kaggle row is at
#: most about 3 KB ("255," x 784), the header 7 KB, and even NumPy's
#: ``savetxt`` default format ("%.18e") gives 20 KB lines; pandas, however,
#: spends seconds and gigabytes on a multi-megabyte first row before it can
#: say that the field count is wrong, so longer lines are refused up front.
MAX_LINE_BYTES = 64 * 1024

# The only label texts of Kaggle's layout (surrounding spaces aside).
_LABEL_CODES = {str(digit): digit for digit in range(10)}

# Bytes read at a time when scanning the file for over-long lines.
_SCAN_BYTES = 1 << 20

PIXEL_NAMES = tuple(f"pixel{i}" for i in range(N_PIXELS))
_PIXEL_SET = frozenset(PIXEL_NAMES)
_SUBMISSION_HEADER = "ImageId,Label\n"


def _where(path, line, column=None):
    place = f"{os.fspath(path)!s}, line {line}"
    return place if column is None else f"{place}, column {column!r}"


# -------------------------------------------------------------- line length


def _check_line_lengths(path):
    """Raise a ValueError naming the first line longer than MAX_LINE_BYTES.

    Reads the file once in fixed-size binary chunks, so time is linear in
    the file size and memory is one chunk. Line breaks are those of pandas'
    and the csv module's readers: "\\n", "\\r\\n" and a lone "\\r".
    """
    limit = MAX_LINE_BYTES  # read at call time: tests lower it
    offset = 0  # file offset of the current chunk
    carried = 0  # bytes of a line begun in earlier chunks
    with open(path, "rb") as f:
        while chunk := f.read(_SCAN_BYTES):
            data = np.frombuffer(chunk, dtype=np.uint8)
            breaks = np.flatnonzero((data == 10) | (data == 13))
            if breaks.size:
                # "\r\n" counts as two breaks around an empty line: harmless here.
                lengths = np.diff(breaks, prepend=-1) - 1
                lengths[0] += carried
                too_long = np.flatnonzero(lengths > limit)
                if too_long.size:
                    k = too_long[0]
                    _raise_line_too_long(path, offset + int(breaks[k]) - int(lengths[k]), limit)
                carried = len(chunk) - 1 - int(breaks[-1])
            else:
                carried += len(chunk)
            offset += len(chunk)
            if carried > limit:
                _raise_line_too_long(path, offset - carried, limit)


def _raise_line_too_long(path, line_start, limit):
    raise ValueError(
        f"{_where(path, _line_number_at(path, line_start))}: line longer than "
        f"MAX_LINE_BYTES = {limit:,} bytes; a row of a Kaggle digit CSV is about 3 KB "
        "(the header about 7 KB)"
    )


def _line_number_at(path, offset):
    """1-based number of the line that starts at byte `offset`."""
    breaks, last = 0, b""
    with open(path, "rb") as f:
        while offset > 0 and (chunk := f.read(min(_SCAN_BYTES, offset))):
            offset -= len(chunk)
            breaks += chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n")
            if last == b"\r" and chunk.startswith(b"\n"):
                breaks -= 1  # a "\r\n" split between two chunks
            last = chunk[-1:]
    return breaks + 1


# ------------------------------------------------------------------- header


def _read_header(path):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return next(csv.reader(f), None)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{_where(path, 1)}: not a UTF-8 text file ({exc})") from exc
    except csv.Error as exc:  # e.g. an unclosed quote swallowing the file
        raise ValueError(f"{_where(path, 1)}: malformed CSV ({exc})") from exc


def _looks_numeric(field):
    try:
        float(field)
    except ValueError:
        return False
    return True


def _check_header(path, header, label):
    """Return (columns, has_label) or raise a ValueError naming line 1."""
    if not header:
        raise ValueError(
            f"{_where(path, 1)}: empty file or empty header; expected "
            f"'label,pixel0,...,pixel{N_PIXELS - 1}' or 'pixel0,...,pixel{N_PIXELS - 1}'"
        )
    columns = [name.strip() for name in header]
    if all(_looks_numeric(name) for name in columns):
        raise ValueError(
            f"{_where(path, 1)}: missing header (the first line holds numbers); expected "
            f"'label,pixel0,...,pixel{N_PIXELS - 1}' or 'pixel0,...,pixel{N_PIXELS - 1}'"
        )
    seen, duplicates = set(), []
    for name in columns:
        if name in seen:
            duplicates.append(name)
        seen.add(name)
    if duplicates:
        raise ValueError(f"{_where(path, 1)}: duplicate column(s) {_preview(duplicates)}")
    has_label = label is not None and label in seen
    unexpected = [c for c in columns if c not in _PIXEL_SET and not (has_label and c == label)]
    if unexpected:
        raise ValueError(
            f"{_where(path, 1)}: unexpected column(s) {_preview(unexpected)}; expected "
            f"{label!r} (optional) and pixel0 ... pixel{N_PIXELS - 1}"
        )
    missing = [name for name in PIXEL_NAMES if name not in seen]
    if missing:
        raise ValueError(
            f"{_where(path, 1)}: missing pixel column(s) {_preview(missing)} "
            f"({len(missing)} of {N_PIXELS})"
        )
    return columns, has_label


def _preview(names, limit=5, width=40):
    # A header field may be 64 KB long: quote only its start.
    shown = ", ".join(repr(n if len(n) <= width else n[:width] + "...") for n in names[:limit])
    return shown + (", ..." if len(names) > limit else "")


# -------------------------------------------------------------- diagnosis


#: What pandas' reader accepts as a number: ASCII digits only (Python's int()
#: and float() also take '١', '１', '1_0' and non-breaking spaces).
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)
_INT64_MAX = 2**63 - 1


def _parse_value(raw):
    """The number in a CSV field, or a reason why there is none."""
    text = raw.strip(" \t")
    if not text:
        return None, "is empty (missing value)"
    if not _NUMBER.fullmatch(text):
        return None, f"{raw!r} is not a number"
    try:
        value = int(text)
    except ValueError:
        pass
    else:
        if abs(value) > _INT64_MAX:
            return None, f"{raw!r} is too large"
        return value, None
    try:
        value = float(text)
    except ValueError:
        return None, f"{raw!r} is not a number"
    if not math.isfinite(value) or value != math.floor(value):
        return None, f"{raw!r} is not a whole number"
    if abs(value) > _INT64_MAX:
        return None, f"{raw!r} is too large"
    return int(value), None


def _is_label_text(raw):
    return raw.strip(" \t") in _LABEL_CODES


def _value_problem(raw, is_label):
    """Why a field is not a pixel (0-255) or a label (a digit 0-9), or None."""
    value, problem = _parse_value(raw)
    if problem is not None:
        return problem
    if is_label and not _is_label_text(raw):
        # "7.0", "+7" and "07" spell 7, but Kaggle's labels are the digit alone.
        return f"{raw!r} is not a label: Kaggle's labels are the digits 0-9"
    if not is_label and not 0 <= value <= 255:
        return f"{raw!r} is outside the pixel range 0-255"
    return None


def _check_row(path, line, row, columns, label_index):
    for j, raw in enumerate(row):
        problem = _value_problem(raw, j == label_index)
        if problem is not None:
            raise ValueError(f"{_where(path, line, columns[j])}: value {problem}")


def _diagnose(path, columns, label_index):
    """Scan the file with the csv module and raise on the first defect found.

    Only runs once the fast reader has failed, so plain Python speed is fine;
    it is what turns pandas' errors into exact 1-based line numbers.
    """
    n_fields = len(columns)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        # reader.line_num is the line a record *ends* on; a record starts on
        # the line after the previous one ended, which is what errors name.
        end = 1
        try:
            next(reader)
            end = reader.line_num
            for row in reader:
                start, end = end + 1, reader.line_num
                if end > start:
                    raise ValueError(
                        f"{_where(path, start)}: malformed CSV (a quoted field opened on "
                        f"this line runs on to line {end}; numbers are never quoted "
                        "across lines)"
                    )
                _diagnose_row(path, start, row, columns, label_index, n_fields)
        except UnicodeDecodeError as exc:
            # Text is decoded a chunk at a time: find the line in the bytes.
            raise ValueError(f"{_where(path, _first_undecodable_line(path))}: not valid "
                             f"UTF-8 text ({exc.reason})") from exc
        except csv.Error as exc:  # e.g. an unclosed quote swallowing the rest of the file
            raise ValueError(f"{_where(path, end + 1)}: malformed CSV ({exc})") from exc


def _first_undecodable_line(path):
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def _diagnose_row(path, line, row, columns, label_index, n_fields):
    """Raise a ValueError naming ``line`` if ``row`` has a defect."""
    if not row:
        return  # blank lines are skipped, as pandas does
    if len(row) != n_fields:
        raise ValueError(
            f"{_where(path, line)}: expected {n_fields} fields as in the header, "
            f"found {len(row)}"
        )
    try:
        values = np.array(row, dtype=np.float64)
    except ValueError:
        values = None
    joined = ",".join(row)
    # NumPy parses like Python (non-ASCII digits, '1_0'); pandas does not.
    suspicious = (not joined.isascii() or "_" in joined
                  or (values is not None and np.abs(values).max() > _INT64_MAX)
                  or (label_index is not None and not _is_label_text(row[label_index])))
    if values is None or suspicious or not _row_is_clean(values, label_index):
        _check_row(path, line, row, columns, label_index)


def _row_is_clean(values, label_index):
    if not np.isfinite(values).all() or (values != np.floor(values)).any():
        return False
    pixels = values if label_index is None else np.delete(values, label_index)
    return bool(((pixels >= 0) & (pixels <= 255)).all())


# ------------------------------------------------------------------- public


def _to_uint8_rows(frame):
    """Row-major uint8 copy of a range-checked int16 frame, built column by column.

    Filling a preallocated array skips the intermediate whole-frame copy that
    ``to_numpy`` makes, so the peak stays at the parsed frame plus 33 MB.
    """
    data = np.empty(frame.shape, dtype=np.uint8)
    for j, (_, column) in enumerate(frame.items()):
        data[:, j] = column.to_numpy()
    return data


def _check_regular_file(path):
    """Refuse folders, named pipes and devices (opening a pipe would wait forever)."""
    mode = os.stat(path).st_mode  # a missing file raises FileNotFoundError, an OSError
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise ValueError(f"{os.fspath(path)!s}: {kind}; expected a CSV file")


def _label_codes(index):
    """The labels as int64 0-9, or None if any is not one of the texts "0" ... "9"."""
    texts = pd.Series(index, dtype=object)
    codes = texts.str.strip(" \t").map(_LABEL_CODES)  # missing values and non-text give NaN
    if codes.isna().any():
        return None
    return codes.to_numpy(dtype=np.int64)


def load_digit_csv(path, *, label="label"):
    """Load a Kaggle "Digit Recognizer" CSV file (train.csv or test.csv).

    Parameters
    ----------
    path : str or path-like
        CSV file with a header naming ``pixel0`` ... ``pixel783`` and, for
        training files, a label column. Column order does not matter; blank
        lines are ignored.
    label : str or None, default="label"
        Name of the label column. When the file has no such column (Kaggle's
        test.csv) `target` is None. None means the file never has one.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With the fields

        data : ndarray of shape (n_samples, 784), uint8
            Grey levels, ink high, in ``pixel0`` ... ``pixel783`` order
            (row-major 28 x 28).
        target : ndarray of shape (n_samples,), int64, or None
            The labels, the digits 0-9, or None without a label column.
        feature_names : list of str
            ``["pixel0", ..., "pixel783"]``.
        frame : pandas.DataFrame
            The label column (if any) followed by the uint8 pixel columns.

    Raises
    ------
    ValueError
        If `path` is not a regular file, a line is longer than
        ``MAX_LINE_BYTES`` (64 KiB), the header is missing or its pixel
        columns are wrong, or a row has too few or too many fields, a
        missing, non-numeric or non-integer value, a pixel outside 0-255 or a
        label that is not one of the digits ``0`` ... ``9`` (``"7.0"``,
        ``"10"`` and ``"-1"`` are refused). The message names the file, the
        1-based line (the header is line 1) and, where it applies, the column.

    Notes
    -----
    A first pass over the bytes refuses over-long lines, on which pandas
    would otherwise spend seconds and gigabytes before reporting the wrong
    field count. The file is then parsed by pandas' C reader into 16-bit
    integers (the label as text), range checked, then stored as uint8 (33 MB
    for Kaggle's 42,000 training rows).
    The slow line-by-line scan that pinpoints a defect runs only after the
    fast reader has refused the file or the range check has failed, so a
    value such as 300 is never wrapped into range and a short row is never
    padded with NaN.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from skdigits.data import load_digit_csv
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "train.csv"
    >>> header = "label," + ",".join(f"pixel{i}" for i in range(784))
    >>> _ = path.write_text(header + "\\n7," + ",".join(["0"] * 783 + ["255"]) + "\\n")
    >>> digits = load_digit_csv(path)
    >>> digits.data.shape, digits.data.dtype, digits.target.tolist()
    ((1, 784), dtype('uint8'), [7])
    """
    if label is not None and not isinstance(label, str):
        raise ValueError(f"label must be a column name (str) or None, got {label!r}")
    _check_regular_file(path)
    _check_line_lengths(path)
    header = _read_header(path)
    columns, has_label = _check_header(path, header, label)
    label_index = columns.index(label) if has_label else None

    dtypes = {name: np.int16 for name in PIXEL_NAMES}
    if has_label:
        # Read as text: an integer parser would take "7.0" or "+7" for 7.
        dtypes[label] = object
    try:
        frame = pd.read_csv(
            path,
            header=0,
            names=columns,
            dtype=dtypes,
            # The label as the index leaves only pixel columns in the frame.
            index_col=label_index,
            engine="c",
            encoding="utf-8-sig",
            skip_blank_lines=True,
        )
    except (ValueError, pd.errors.ParserError, OverflowError) as exc:
        _diagnose(path, columns, label_index)
        raise ValueError(f"{os.fspath(path)!s}: cannot parse the file ({exc})") from exc

    if list(frame.columns) != list(PIXEL_NAMES):
        frame = frame[list(PIXEL_NAMES)]
    # Column-wise reductions: the parser leaves one block per column, and a
    # whole-frame reduction would first copy all of it into one int16 array.
    if len(frame) and (frame.min().min() < 0 or frame.max().max() > 255):
        _diagnose(path, columns, label_index)
        raise ValueError(f"{os.fspath(path)!s}: pixel values outside 0-255")

    target = _label_codes(frame.index) if has_label else None
    if has_label and target is None:
        _diagnose(path, columns, label_index)
        raise ValueError(f"{os.fspath(path)!s}: labels other than the digits 0-9")
    data = _to_uint8_rows(frame)
    del frame
    out_frame = pd.DataFrame(data, columns=list(PIXEL_NAMES), copy=False)
    if target is not None:
        out_frame.insert(0, label, target)
    return Bunch(
        data=data,
        target=target,
        feature_names=list(PIXEL_NAMES),
        frame=out_frame,
    )


def _digit_text(value):
    """"0" ... "9" for a label that is one of the digits, else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, str):
        return value if value in _LABEL_CODES else None
    if isinstance(value, (Integral, float, np.floating)):
        # 7.0 is the digit 7 (float predictions); NaN and 2.5 are not digits.
        return str(int(value)) if value in range(10) else None
    return None


def _format_labels(y):
    """The labels as "0" ... "9"; raise naming the first that is not a digit."""
    if y.dtype.kind not in "iufOUST":
        raise ValueError(f"y_pred must hold the digit labels 0-9, got dtype {y.dtype}")
    values = y.tolist()
    texts = [_digit_text(v) for v in values]
    if None in texts:
        i = texts.index(None)
        raise ValueError(
            f"y_pred[{i}] = {values[i]!r:.60} is not a digit label 0-9; a Kaggle digit "
            "submission holds only the labels 0 to 9"
        )
    return texts


def write_submission(y_pred, path, *, start=1):
    """Write predictions in Kaggle's ``ImageId,Label`` submission format.

    The file is written to a temporary name and moved into place, so an
    interrupted run never leaves a truncated submission behind.

    Parameters
    ----------
    y_pred : array-like of shape (n_samples,)
        Predicted labels, in the order of the test file.
    path : str or path-like
        Output CSV file; replaced if it exists.
    start : int, default=1
        ImageId of the first row (Kaggle counts from 1).

    Returns
    -------
    path : pathlib.Path
        The file written.

    Raises
    ------
    ValueError
        If `y_pred` is not 1-D, is empty, or holds a value that is not one of
        the digit labels 0-9 (e.g. 10, -1, 2.5, NaN, "a"; 7.0 and "7" are
        the digit 7); or `start` is not an integer. The message names the
        first bad value and its index.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from skdigits.data import write_submission
    >>> out = write_submission([7, 2, 1], pathlib.Path(tempfile.mkdtemp()) / "sub.csv")
    >>> print(out.read_text(), end="")
    ImageId,Label
    1,7
    2,2
    3,1
    """
    if isinstance(start, (bool, np.bool_)) or not isinstance(start, Integral):
        raise ValueError(f"start must be an integer, got {start!r}")
    y = np.asarray(y_pred)
    if y.ndim != 1:
        raise ValueError(f"y_pred must be 1-D (one label per image), got shape {y.shape}")
    if y.size == 0:
        raise ValueError("y_pred is empty; there is nothing to submit")
    labels = _format_labels(y)
    first = int(start)
    body = "".join(f"{first + i},{text}\n" for i, text in enumerate(labels))
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        f.write(_SUBMISSION_HEADER)
        f.write(body)
    return Path(path)
