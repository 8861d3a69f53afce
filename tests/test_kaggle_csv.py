"""Kaggle digit CSV reading, submission writing and atomic_write."""

import os
import re
import stat
import time

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_array_equal

from skdigits.data import atomic_write, kaggle, load_digit_csv, write_submission

PIXELS = [f"pixel{i}" for i in range(784)]
TRAIN_HEADER = "label," + ",".join(PIXELS)
TEST_HEADER = ",".join(PIXELS)


def digit_rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 784), dtype=np.int64), rng.integers(0, 10, n)


def csv_text(pixels, labels=None, header=None):
    header = header if header is not None else (TEST_HEADER if labels is None else TRAIN_HEADER)
    lines = [header]
    for k, row in enumerate(pixels):
        values = ",".join(map(str, row))
        lines.append(values if labels is None else f"{labels[k]},{values}")
    return "\n".join(lines) + "\n"


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def valid_lines(n=5, seed=0):
    pixels, labels = digit_rows(n, seed)
    return csv_text(pixels, labels).splitlines()


# ----------------------------------------------------------------- reading


def test_train_file(tmp_path):
    pixels, labels = digit_rows(6)
    path = tmp_path / "train.csv"
    path.write_text(csv_text(pixels, labels))
    digits = load_digit_csv(path)
    assert digits.data.dtype == np.uint8 and digits.data.shape == (6, 784)
    assert_array_equal(digits.data, pixels)
    assert_array_equal(digits.target, labels)
    assert digits.target.dtype == np.int64
    assert digits.feature_names == PIXELS
    assert isinstance(digits.frame, pd.DataFrame)
    assert list(digits.frame.columns) == ["label"] + PIXELS
    assert_array_equal(digits.frame[PIXELS].to_numpy(), pixels)
    assert (digits.frame[PIXELS].dtypes == np.uint8).all()


def test_test_file_has_no_target(tmp_path):
    pixels, _ = digit_rows(4)
    path = tmp_path / "test.csv"
    path.write_text(csv_text(pixels))
    digits = load_digit_csv(path)
    assert digits.target is None
    assert_array_equal(digits.data, pixels)
    assert list(digits.frame.columns) == PIXELS


def test_custom_or_no_label_column(tmp_path):
    pixels, labels = digit_rows(3)
    path = tmp_path / "t.csv"
    path.write_text(csv_text(pixels, labels, header="digit," + TEST_HEADER))
    assert_array_equal(load_digit_csv(path, label="digit").target, labels)
    with pytest.raises(ValueError, match="line 1.*unexpected column.*'digit'"):
        load_digit_csv(path)
    with pytest.raises(ValueError, match="unexpected column"):
        load_digit_csv(path, label=None)
    with pytest.raises(ValueError, match="label must be"):
        load_digit_csv(path, label=3)


def test_column_order_blank_lines_bom_crlf_and_float_notation(tmp_path):
    pixels, labels = digit_rows(3)
    columns = ["label"] + PIXELS
    order = [0] + list(range(784, 0, -1))  # label first, pixels reversed
    rows = [[labels[k]] + list(pixels[k]) for k in range(3)]
    lines = [",".join(columns[j] for j in order)]
    lines += [",".join(str(r[j]) for j in order) for r in rows]
    fields = lines[2].split(",")
    fields[1] += ".0"  # "7.0" style pixels are whole numbers (labels must be digits)
    lines[2] = ",".join(fields)
    text = "\ufeff" + "\r\n".join([lines[0], lines[1], "", lines[2], lines[3], ""]) + "\r\n"
    path = tmp_path / "odd.csv"
    path.write_bytes(text.encode("utf-8"))
    digits = load_digit_csv(path)
    assert_array_equal(digits.data, pixels)
    assert_array_equal(digits.target, labels)


def test_kaggle_sized_file_loads_fast_as_uint8(tmp_path):
    pixels, labels = digit_rows(1000)
    body = csv_text(pixels, labels).split("\n", 1)[1]
    path = tmp_path / "train.csv"
    with open(path, "w") as f:
        f.write(TRAIN_HEADER + "\n")
        for _ in range(42):
            f.write(body)
    start = time.perf_counter()
    digits = load_digit_csv(path)
    seconds = time.perf_counter() - start
    assert digits.data.shape == (42000, 784) and digits.data.dtype == np.uint8
    assert_array_equal(digits.data[41000:], pixels)
    # About 2-4 s here; the bound only catches a fall back to the slow path.
    assert seconds < 30, seconds


# ------------------------------------------------------------------ defects


def replace_value(lines, line_no, column, value):
    """Set the 0-based field `column` of 1-based file line `line_no`."""
    fields = lines[line_no - 1].split(",")
    fields[column] = value
    lines[line_no - 1] = ",".join(fields)
    return lines


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda L: replace_value(L, 4, 10, "abc"), r"line 4, column 'pixel9'.*'abc' is not a number"),
        (lambda L: replace_value(L, 3, 1, ""), r"line 3, column 'pixel0'.*empty"),
        (lambda L: replace_value(L, 5, 784, "nan"), r"line 5, column 'pixel783'.*'nan'"),
        (lambda L: replace_value(L, 2, 5, "300"), r"line 2, column 'pixel4'.*'300' is outside .*0-255"),
        (lambda L: replace_value(L, 6, 5, "-1"), r"line 6, column 'pixel4'.*'-1' is outside"),
        (lambda L: replace_value(L, 3, 5, "70000"), r"line 3, column 'pixel4'.*'70000' is outside"),
        (lambda L: replace_value(L, 4, 7, "12.5"), r"line 4, column 'pixel6'.*'12.5' is not a whole"),
        (lambda L: replace_value(L, 5, 0, "seven"), r"line 5, column 'label'.*'seven' is not a number"),
        (lambda L: replace_value(L, 2, 0, "1.5"), r"line 2, column 'label'.*not a whole"),
        (lambda L: L[:4] + [L[4].rsplit(",", 3)[0]] + L[5:], r"line 5: expected 785 fields.*found 782"),
        (lambda L: L[:5] + [L[5] + ",0"] + L[6:], r"line 6: expected 785 fields.*found 786"),
        (lambda L: L[:2] + [L[2] + ","] + L[3:], r"line 3: expected 785 fields.*found 786"),
        (lambda L: L[:2] + ["", ""] + replace_value(L[2:], 2, 3, "x"), r"line 6, column 'pixel2'"),
        (lambda L: L[:3] + ["5"] + L[3:], r"line 4: expected 785 fields.*found 1"),
    ],
    ids=[
        "non-numeric", "empty", "nan", "300", "negative", "int16-overflow", "fraction",
        "label-text", "label-fraction", "too-few", "too-many", "trailing-comma",
        "after-blank-lines", "short-line",
    ],
)
def test_defects_name_file_and_line(tmp_path, edit, match):
    path = write_lines(tmp_path / "train.csv", edit(valid_lines()))
    with pytest.raises(ValueError, match=match) as info:
        load_digit_csv(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "header, match",
    [
        ("", "line 1: empty file"),
        (",".join(["1"] + ["0"] * 784), "line 1: missing header"),
        ("label," + ",".join(PIXELS[:-1]), r"line 1: missing pixel column.*'pixel783'"),
        ("label," + ",".join(PIXELS[:-1] + ["pixel784"]), r"line 1: unexpected column.*'pixel784'"),
        ("label," + ",".join(PIXELS + ["extra"]), r"line 1: unexpected column.*'extra'"),
        ("label," + ",".join(PIXELS[:-1] + ["pixel0"]), r"line 1: duplicate column.*'pixel0'"),
        ("label," + ",".join(p.upper() for p in PIXELS), r"line 1: unexpected column.*'PIXEL0'"),
    ],
    ids=["empty", "no-header", "missing-column", "wrong-column", "extra-column", "duplicate", "case"],
)
def test_header_defects(tmp_path, header, match):
    lines = valid_lines(2)[1:]
    path = write_lines(tmp_path / "train.csv", [header] + lines) if header else tmp_path / "train.csv"
    if not header:
        path.write_text("")
    with pytest.raises(ValueError, match=match) as info:
        load_digit_csv(path)
    assert str(path) in str(info.value)


def at(path, line, column=None):
    """The exact place an error must name: 'path, line N[, column 'c']:'."""
    place = f"{path}, line {line}" + ("" if column is None else f", column {column!r}")
    return re.escape(place + ":")


# ------------------------------------------------------- pixel range, lines


def test_pixels_0_and_255_are_kept_and_256_is_refused_where_it_is(tmp_path):
    pixels = np.tile([0, 255], (4, 392))
    lines = csv_text(pixels, [1, 2, 3, 4]).splitlines()
    path = write_lines(tmp_path / "train.csv", lines)
    assert_array_equal(load_digit_csv(path).data, pixels)  # 255 is in range, not wrapped
    # The first bad value comes after rows full of 0 and 255: the line-by-line
    # scan must pass those over too, and name line 5.
    for bad in ("256", "-1"):
        path = write_lines(tmp_path / "train.csv", replace_value(list(lines), 5, 2, bad))
        with pytest.raises(ValueError, match=at(path, 5, "pixel1") + f" value '{bad}' is outside"):
            load_digit_csv(path)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
@pytest.mark.parametrize("line", [2, 3, 6])
def test_defect_line_number_is_exact_for_every_line_ending(tmp_path, newline, line):
    lines = replace_value(valid_lines(5), line, 300, "x")
    path = tmp_path / "train.csv"
    path.write_bytes(newline.join(lines).encode())  # the last line has no line break
    with pytest.raises(ValueError, match=at(path, line, "pixel299") + " value 'x' is not a number"):
        load_digit_csv(path)


# ------------------------------------------------------------------ labels


@pytest.mark.parametrize("label", ["-1", "10", "12", "300", "7.0", "+7", "07", "1e0"])
def test_labels_must_be_the_digits_0_to_9(tmp_path, label):
    path = write_lines(tmp_path / "train.csv", replace_value(valid_lines(), 3, 0, label))
    with pytest.raises(ValueError, match=at(path, 3, "label") + f" value '{re.escape(label)}'"):
        load_digit_csv(path)


@pytest.mark.parametrize("label", ["", "NA", "seven"])
def test_missing_or_text_labels_name_the_line(tmp_path, label):
    path = write_lines(tmp_path / "train.csv", replace_value(valid_lines(), 4, 0, label))
    with pytest.raises(ValueError, match=at(path, 4, "label")):
        load_digit_csv(path)


def test_every_digit_label_is_read_and_spaces_around_it_are_allowed(tmp_path):
    pixels, _ = digit_rows(10)
    labels = [str(d) for d in range(10)]
    labels[3] = " 3 "
    path = tmp_path / "train.csv"
    path.write_text(csv_text(pixels, labels))
    digits = load_digit_csv(path)
    assert digits.target.tolist() == list(range(10))
    assert digits.target.dtype == np.int64
    other = tmp_path / "digit.csv"
    other.write_text(csv_text(pixels, ["9", "12"] + labels[2:], header="digit," + TEST_HEADER))
    with pytest.raises(ValueError, match=at(other, 3, "digit") + " value '12'"):
        load_digit_csv(other, label="digit")


# ---------------------------------------------------------- stray quotes


def test_stray_quote_error_names_the_line_where_the_quote_opens(tmp_path):
    # 60 rows after the quote: the swallowed field passes the csv module's
    # field limit (131072 characters) long before the end of the file.
    lines = valid_lines(64)
    lines[4] = '"' + lines[4]
    path = write_lines(tmp_path / "train.csv", lines)
    assert sum(map(len, lines[4:])) > 131072
    with pytest.raises(ValueError, match=at(path, 5) + " malformed CSV"):
        load_digit_csv(path)


@pytest.mark.parametrize("quoted_line", [2, 5, 6])
def test_stray_quote_near_the_end_names_its_own_line(tmp_path, quoted_line):
    # A short tail: the csv module reads to the end of the file without an
    # error and returns one record spanning several lines.
    lines = valid_lines(6)
    lines[quoted_line - 1] = '"' + lines[quoted_line - 1]
    path = write_lines(tmp_path / "train.csv", lines)
    with pytest.raises(ValueError, match=at(path, quoted_line) + " malformed CSV"):
        load_digit_csv(path)


# ---------------------------------------------------------- runaway lines


@pytest.fixture
def small_line_limit(monkeypatch):
    """MAX_LINE_BYTES lowered to 10,000 (the header is 6,951 bytes); pandas barred when called."""
    monkeypatch.setattr(kaggle, "MAX_LINE_BYTES", 10_000)

    def no_pandas(*args, **kwargs):
        raise AssertionError("an over-long line reached pandas")

    return lambda: monkeypatch.setattr(kaggle.pd, "read_csv", no_pandas)


@pytest.mark.parametrize("line", [2, 4, 7])
def test_over_long_line_is_refused_before_pandas(tmp_path, small_line_limit, line):
    lines = valid_lines(5)
    lines.insert(line - 1, "0," * 5000 + "0")  # 10,001 bytes
    path = write_lines(tmp_path / "train.csv", lines)
    small_line_limit()
    with pytest.raises(ValueError, match=at(path, line) + " line longer than MAX_LINE_BYTES = 10,000"):
        load_digit_csv(path)


def test_line_limit_is_inclusive_and_counts_bytes_without_the_line_break(tmp_path, small_line_limit):
    lines = valid_lines(3)
    for newline in ("\n", "\r\n", "\r"):
        padded = list(lines)
        padded[2] = padded[2] + " " * (10_000 - len(padded[2]))  # exactly at the limit
        path = tmp_path / "train.csv"
        path.write_bytes(newline.join(padded + [""]).encode())
        assert load_digit_csv(path).data.shape == (3, 784), repr(newline)
        padded[2] += " "
        path.write_bytes(newline.join(padded + [""]).encode())
        with pytest.raises(ValueError, match=at(path, 3) + " line longer"):
            load_digit_csv(path)


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["LF", "CRLF"])
@pytest.mark.parametrize("long_line", [8, 10], ids=["middle", "last-unterminated"])
def test_line_scan_across_chunk_boundaries(tmp_path, small_line_limit, monkeypatch, newline,
                                           long_line):
    lines = valid_lines(9)
    lines[long_line - 1] += " " * (10_001 - len(lines[long_line - 1]))
    content = newline.join(lines).encode()
    # Chunks end right after the header's line break begins, so that a "\r\n"
    # is split between two chunks; the long line spans several chunks.
    monkeypatch.setattr(kaggle, "_SCAN_BYTES", content.index(newline.encode()) + 1)
    path = tmp_path / "train.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=at(path, long_line) + " line longer"):
        load_digit_csv(path)
    del lines[long_line - 1]
    path.write_bytes(newline.join(lines).encode())
    assert load_digit_csv(path).data.shape == (8, 784)


def test_over_long_header_is_refused(tmp_path, small_line_limit):
    path = write_lines(tmp_path / "train.csv", [TRAIN_HEADER + "," + "x" * 3100] + valid_lines()[1:])
    small_line_limit()
    with pytest.raises(ValueError, match=at(path, 1) + " line longer"):
        load_digit_csv(path)


def test_default_limit_refuses_a_few_megabyte_first_row(tmp_path):
    # pandas spent tens of seconds and over a gigabyte on a 4 MB first data
    # row before reporting the field count; the scan refuses it up front.
    lines = valid_lines(3)
    lines.insert(1, "0," * (2 * 2**20) + "0")
    path = write_lines(tmp_path / "train.csv", lines)
    assert kaggle.MAX_LINE_BYTES == 65536
    with pytest.raises(ValueError, match=at(path, 2) + " line longer than MAX_LINE_BYTES = 65,536"):
        load_digit_csv(path)


def test_named_pipe_or_folder_is_refused_without_opening_it(tmp_path, named_pipe):
    fifo = named_pipe(tmp_path / "train.csv")
    with pytest.raises(ValueError, match=re.escape(f"{fifo.path}: not a regular file")):
        load_digit_csv(fifo.path)
    assert not fifo.opened
    with pytest.raises(ValueError, match="a folder"):
        load_digit_csv(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_digit_csv(tmp_path / "missing.csv")


def test_binary_file_is_rejected(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ValueError, match="line 1"):
        load_digit_csv(path)


# -------------------------------------------------------------- submission


def test_submission_format(tmp_path):
    path = write_submission(np.array([7, 2, 1]), tmp_path / "sub.csv")
    assert path.read_bytes() == b"ImageId,Label\n1,7\n2,2\n3,1\n"
    write_submission([3.0, 4.0], path, start=0)
    assert path.read_text() == "ImageId,Label\n0,3\n1,4\n"
    write_submission(np.array(["5", "6"]), path, start=10)
    assert path.read_text() == "ImageId,Label\n10,5\n11,6\n"
    back = pd.read_csv(path)
    assert list(back.columns) == ["ImageId", "Label"]


@pytest.mark.parametrize(
    "y_pred, match",
    [
        (np.zeros((3, 1), dtype=int), r"1-D.*\(3, 1\)"),
        (np.zeros((2, 2), dtype=int), "1-D"),
        (5, r"1-D.*\(\)"),
        ([], "empty"),
        ([1.5, 2.0], r"y_pred\[0\] = 1\.5 is not a digit label 0-9"),
        ([np.nan], r"y_pred\[0\] = nan is not a digit"),
        (["a,b"], r"y_pred\[0\] = 'a,b' is not a digit"),
        ([1 + 2j], "digit labels 0-9, got dtype complex"),
        ([3, 10], r"y_pred\[1\] = 10 is not a digit label 0-9"),
        (np.array([0, 9, -1, 12], dtype=np.int8), r"y_pred\[2\] = -1 is not"),
        (np.array([7, 300, 2**40]), r"y_pred\[1\] = 300 is not"),
        ([7.0, 10.0], r"y_pred\[1\] = 10\.0 is not"),
        (np.array(["7", "10"]), r"y_pred\[1\] = '10' is not"),
        (np.array(["7", " 8", "9"]), r"y_pred\[1\] = ' 8' is not"),
        (np.array([1, "x"], dtype=object), r"y_pred\[1\] = 'x' is not"),
        ([True, False], "got dtype bool"),
        (np.array([True, 3], dtype=object), r"y_pred\[0\] = True is not"),
        (["a" * 1000], r"y_pred\[0\] = 'a{59} is not"),
    ],
)
def test_submission_rejects_bad_predictions(tmp_path, y_pred, match):
    path = tmp_path / "sub.csv"
    path.write_text("previous\n")
    with pytest.raises(ValueError, match=match):
        write_submission(y_pred, path)
    assert path.read_text() == "previous\n"
    assert os.listdir(tmp_path) == ["sub.csv"]


def test_submission_accepts_every_digit_in_any_label_dtype(tmp_path):
    expected = "ImageId,Label\n" + "".join(f"{i + 1},{i}\n" for i in range(10))
    path = tmp_path / "sub.csv"
    for y in (np.arange(10, dtype=np.uint8), np.arange(10), np.arange(10.0),
              np.arange(10).astype(str), np.array(list(np.arange(10)), dtype=object),
              [str(d) for d in range(10)], np.arange(10, dtype=np.float32)):
        write_submission(y, path)
        assert path.read_text() == expected, y


@pytest.mark.parametrize("start", [1.0, "1", True, None])
def test_submission_start_must_be_an_integer(tmp_path, start):
    with pytest.raises(ValueError, match="start"):
        write_submission([1], tmp_path / "s.csv", start=start)


# ------------------------------------------------------------ atomic_write


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with atomic_write(target, "wb") as f:
        f.write(b"new")
        assert target.read_bytes() == b"old"  # not visible until the block ends
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["model.bin"]


def test_atomic_write_keeps_the_old_file_and_cleans_up_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target, encoding="utf-8") as f:
            f.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(tmp_path / "new.txt") as f:
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_write_modes_and_permissions(tmp_path):
    for mode in ("r", "a", "x", "rb", "w+r", 1):
        with pytest.raises(ValueError, match="mode"):
            with atomic_write(tmp_path / "f", mode):
                pass
    with pytest.raises(TypeError):
        with atomic_write(tmp_path / "f", "w", no_such_argument=1):
            pass
    assert os.listdir(tmp_path) == []
    target = tmp_path / "script.sh"
    target.write_text("old")
    target.chmod(0o751)
    with atomic_write(target, "wt", newline="") as f:
        f.write("new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o751
    with atomic_write(tmp_path / "fresh.txt") as f:
        f.write("x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "fresh.txt").stat().st_mode) == 0o666 & ~umask
