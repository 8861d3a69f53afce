"""Speed and memory of the data layer.

1. ``load_digit_csv`` on a Kaggle-sized train.csv (42,000 rows x 785 columns),
   against a plain ``pandas.read_csv`` of the same file in the same run.
2. ``ImageTransformer().transform(paths)`` on 10,000 PNG files (28 x 28, dark
   digits on white, so auto-inversion and centring both do work), plus 1,000
   larger 280 x 280 pictures to show the cost of decoding and shrinking.

The CSV is built from MNIST (``../shared/data/mnist.npz`` or ``--data``); if
that file is absent it falls back to scikit-learn's 8 x 8 digits upscaled to
28 x 28 and repeated. Everything is written to a temporary folder that is
removed afterwards.

Peak memory is what tracemalloc sees: NumPy and Python allocations, not the
pandas C parser's private buffers.

Run from the repository root::

    python benchmarks/bench_data.py [--data PATH] [--rows 42000] [--images 10000]
"""

import argparse
import datetime
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from _common import DEFAULT_MNIST, REPO, load_average, machine

sys.path.insert(0, str(REPO))

from skdigits.data import ImageTransformer, load_digit_csv  # noqa: E402


def digits_28(n_rows, data_path):
    """(images uint8 (n, 28, 28) ink high, labels, description)."""
    if data_path.is_file():
        with np.load(data_path) as mnist:
            X, y = mnist["X_train"], mnist["y_train"]
        reps = -(-n_rows // len(y))
        return np.tile(X, (reps, 1, 1))[:n_rows], np.tile(y, reps)[:n_rows], f"MNIST ({data_path})"
    from sklearn.datasets import load_digits

    small = load_digits()
    big = np.zeros((len(small.target), 28, 28), dtype=np.uint8)
    for k, img in enumerate(small.images):
        glyph = Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((20, 20), Image.Resampling.BILINEAR)
        big[k, 4:24, 4:24] = np.asarray(glyph)
    reps = -(-n_rows // len(small.target))
    return (
        np.tile(big, (reps, 1, 1))[:n_rows],
        np.tile(small.target, reps)[:n_rows],
        "scikit-learn digits upscaled to 28 x 28 (no MNIST file found)",
    )


def write_kaggle_csv(path, images, labels):
    table = np.array([str(v) for v in range(256)], dtype=object)
    header = "label," + ",".join(f"pixel{i}" for i in range(784))
    with open(path, "w", newline="") as f:
        f.write(header + "\n")
        for label, row in zip(labels.tolist(), images.reshape(len(images), -1)):
            f.write(f"{label}," + ",".join(table[row]) + "\n")


def measure(fn, repeat):
    """(result, best seconds over `repeat` runs, tracemalloc peak MiB in one extra run)."""
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
        del result
    tracemalloc.start()
    try:
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    return result, best, peak


def write_pngs(folder, images, scale=1):
    paths = []
    for k, img in enumerate(images):
        picture = Image.fromarray(255 - img)  # dark ink on white paper
        if scale != 1:
            picture = picture.resize((28 * scale, 28 * scale), Image.Resampling.BILINEAR)
        path = folder / f"{k:05d}.png"
        picture.save(path)
        paths.append(path)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("SKDIGITS_MNIST", DEFAULT_MNIST)),
                        help="mnist.npz (keys X_train, y_train); falls back to sklearn digits")
    parser.add_argument("--rows", type=int, default=42_000, help="rows in the CSV")
    parser.add_argument("--images", type=int, default=10_000, help="28 x 28 PNG files")
    parser.add_argument("--large-images", type=int, default=1_000, help="280 x 280 PNG files")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best is kept")
    args = parser.parse_args(argv)

    images, labels, source = digits_28(max(args.rows, args.images, args.large_images), args.data)
    work = Path(tempfile.mkdtemp(prefix="skdigits-bench-"))
    rows = []
    try:
        csv_path = work / "train.csv"
        write_kaggle_csv(csv_path, images[: args.rows], labels[: args.rows])
        size_mb = csv_path.stat().st_size / 1e6

        bunch, t_ours, m_ours = measure(lambda: load_digit_csv(csv_path), args.repeat)
        assert bunch.data.dtype == np.uint8 and bunch.data.shape == (args.rows, 784)
        assert np.array_equal(bunch.data, images[: args.rows].reshape(args.rows, -1))
        del bunch
        _, t_pandas, m_pandas = measure(lambda: pd.read_csv(csv_path), args.repeat)
        rows.append((f"load_digit_csv, {args.rows:,} rows ({size_mb:.0f} MB)", t_ours,
                     f"{args.rows / t_ours:,.0f} rows/s", m_ours, "uint8"))
        rows.append((f"pandas.read_csv, same file", t_pandas,
                     f"{args.rows / t_pandas:,.0f} rows/s", m_pandas, "int64"))

        if args.images:
            small_dir = work / "png28"
            small_dir.mkdir()
            paths = write_pngs(small_dir, images[: args.images])
            out, t_small, m_small = measure(lambda: ImageTransformer().transform(paths), args.repeat)
            assert out.shape == (args.images, 784) and out.dtype == np.float32
            rows.append((f"ImageTransformer, {args.images:,} PNG 28x28", t_small,
                         f"{args.images / t_small:,.0f} images/s", m_small, "float32"))

        if args.large_images:
            large_dir = work / "png280"
            large_dir.mkdir()
            large = write_pngs(large_dir, images[: args.large_images], scale=10)
            _, t_large, m_large = measure(lambda: ImageTransformer().transform(large), args.repeat)
            rows.append((f"ImageTransformer, {args.large_images:,} PNG 280x280", t_large,
                         f"{args.large_images / t_large:,.0f} images/s", m_large, "float32"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"date:    {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"command: python {' '.join([Path(sys.argv[0]).as_posix()] + (argv or sys.argv[1:]))}")
    print(f"machine: {machine()}; pandas {pd.__version__}, Pillow {Image.__version__}; "
          f"{load_average()}")
    print(f"data:    {source}")
    print(f"timing:  best of {args.repeat} runs; peak = tracemalloc peak of one more run\n")
    width = max(len(r[0]) for r in rows)
    print(f"| {'task':<{width}} | seconds | throughput        | peak MiB | output  |")
    print(f"| {'-' * width} | ------- | ----------------- | -------- | ------- |")
    for task, seconds, rate, peak, dtype in rows:
        print(f"| {task:<{width}} | {seconds:7.2f} | {rate:<17} | {peak:8.1f} | {dtype:<7} |")
    print(f"\nload_digit_csv / pandas.read_csv time ratio: {t_ours / t_pandas:.2f}")


if __name__ == "__main__":
    main()
