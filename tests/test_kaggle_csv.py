"""Kaggle digit CSV reading, submission writing and atomic_write."""

import os
import stat
import time

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_array_equal

from skdigits.data import atomic_write, load_digit_csv, write_submission

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
    lines[2] = lines[2].replace(",", ".0,", 1)  # "7.0" style numbers are whole numbers
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
        ([1.5, 2.0], "non-integer"),
        ([np.nan], "non-integer"),
        (["a,b"], "comma"),
        ([1 + 2j], "class labels"),
    ],
)
def test_submission_rejects_bad_predictions(tmp_path, y_pred, match):
    path = tmp_path / "sub.csv"
    path.write_text("previous\n")
    with pytest.raises(ValueError, match=match):
        write_submission(y_pred, path)
    assert path.read_text() == "previous\n"
    assert os.listdir(tmp_path) == ["sub.csv"]


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
