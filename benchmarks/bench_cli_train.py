"""The default ``skdigits train`` recipe through the command line, as a Kaggle
entrant runs it: 12,000 labelled MNIST rows written in Kaggle's CSV layout,
``skdigits train train.csv -o model.skops``, then ``skdigits evaluate`` on
3,000 other labelled digits.

    python benchmarks/bench_cli_train.py                    # 3 draws
    python benchmarks/bench_cli_train.py --draws 1
    python benchmarks/bench_cli_train.py -- --augment none --lr-schedule none \\
        --no-batch-norm --hidden 128 --learning-rate 0.001     # other train flags

Each draw takes its 12,000 training rows at random from MNIST's 60,000
training digits and its 3,000 others at random from the 10,000 test digits
(seeded by the draw's number).  The time is the whole ``train`` command's
wall clock: start-up, reading the CSV, ``ImageTransformer``, training with
the held-out validation, and saving the model.  Flags after ``--`` go to
``skdigits train``.
"""

import argparse
import datetime
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import DEFAULT_MNIST, load_average, machine


def write_kaggle_csv(path, pixels, labels):
    """Labelled rows of 784 pixels (0-255) in Kaggle Digit Recognizer's layout."""
    header = "label," + ",".join(f"pixel{i}" for i in range(pixels.shape[1]))
    rows = np.column_stack([labels, pixels]).astype(np.int64)
    np.savetxt(path, rows, fmt="%d", delimiter=",", header=header, comments="")


def skdigits(*args):
    """Run the command; (its output, wall seconds)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "skdigits", *args], capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"skdigits {' '.join(args)} failed ({done.returncode}):\n"
                         f"{done.stdout}{done.stderr}")
    return done.stdout + done.stderr, seconds


def one_draw(draw, data, rows, others, train_flags, folder):
    rng = np.random.default_rng(draw)
    train_rows = rng.choice(len(data["X_train"]), rows, replace=False)
    other_rows = rng.choice(len(data["X_test"]), others, replace=False)
    train_csv, others_csv = folder / f"train{draw}.csv", folder / f"others{draw}.csv"
    model = folder / f"model{draw}.skops"
    write_kaggle_csv(train_csv, data["X_train"][train_rows].reshape(rows, -1),
                     data["y_train"][train_rows])
    write_kaggle_csv(others_csv, data["X_test"][other_rows].reshape(others, -1),
                     data["y_test"][other_rows])
    log, train_s = skdigits("train", str(train_csv), "-o", str(model), *train_flags)
    report, _ = skdigits("evaluate", str(others_csv), "-m", str(model))
    accuracy = float(re.search(r"Accuracy: ([0-9.]+)", report).group(1))
    trained = re.search(r"Trained (\d+) epochs in ([0-9.]+) s", log)
    validation = re.search(r"Validation accuracy: ([0-9.]+)", log)
    print(f"| {draw} | {train_s:.1f} s | {trained.group(1)} | {trained.group(2)} s "
          f"| {float(validation.group(1)) * 100:.2f}% | **{100 * accuracy:.2f}%** |", flush=True)
    return accuracy, train_s, log


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_MNIST),
                        help="npz with X_train, y_train, X_test, y_test (uint8 pixels)")
    parser.add_argument("--rows", type=int, default=12000)
    parser.add_argument("--others", type=int, default=3000)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("train_flags", nargs="*", help="after --: flags for skdigits train")
    args = parser.parse_args(argv)
    if not Path(args.data).exists():
        raise SystemExit(f"no MNIST file at {args.data} (--data)")
    with np.load(args.data) as npz:
        data = {key: npz[key] for key in ("X_train", "y_train", "X_test", "y_test")}
    print(f"# bench_cli_train  {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# machine: {machine()}")
    print(f"# {load_average()} at the start; {args.rows} training rows, {args.others} others;"
          f" train flags: {' '.join(args.train_flags) or '(defaults)'}")
    print("| draw | `skdigits train` wall time | epochs | training | validation "
          "| accuracy on the others |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        results = [one_draw(draw, data, args.rows, args.others, args.train_flags, Path(folder))
                   for draw in range(args.draws)]
    accuracies = [a for a, _, _ in results]
    print(f"# accuracy on the others: mean {100 * np.mean(accuracies):.2f}%, "
          f"min {100 * min(accuracies):.2f}%; slowest train command "
          f"{max(s for _, s, _ in results):.1f} s")
    print("# model: " + next(line for line in results[0][2].splitlines()
                             if line.startswith("Model:")))
    print(f"# {load_average()} at the end")


if __name__ == "__main__":
    main()
