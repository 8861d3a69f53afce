"""benchmarks/bench_mlp.py runs end to end on a small data set, with and
without batch norm (where scikit-learn sits out), printing a row per
contender."""

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_blas_thread", "no_convergence_warnings")


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory, digits):
    """scikit-learn's digits as a tiny MNIST-like archive (pixels 0-255)."""
    X, y = digits
    images = np.round(X * 255).astype(np.uint8).reshape(-1, 8, 8)
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, X_train=images[:400], y_train=y[:400], X_test=images[400:600],
             y_test=y[400:600])
    return path


def rows_of(output):
    """The contender of every row of the printed tables."""
    return [line.split("|")[1].strip() for line in output.splitlines()
            if line.startswith("| ") and not line.startswith(("| model", "| ---"))]


@pytest.mark.parametrize("extra, expected", [
    ([], ["skdigits", "sklearn"]),
    (["--batch-norm", "--one-thread"], ["skdigits", "skdigits 1 thread"]),
])
def test_bench_mlp_runs(benchmark_script, small_npz, capsys, extra, expected):
    bench = benchmark_script("bench_mlp")
    bench.main(["--data", str(small_npz), "--epochs", "1", "--repeats", "1", "--no-torch",
                "--batch-sizes", "32", "--hidden", "16", *extra])
    output = capsys.readouterr().out
    assert rows_of(output) == expected
    assert ("with batch norm" in output) == ("--batch-norm" in extra)
