"""scikit-learn's own MLP tests, run against our estimators.

The installed scikit-learn's ``neural_network/tests/test_mlp.py`` is copied
with its imports of ``MLPClassifier`` and ``MLPRegressor`` pointed at
:class:`NumpyMLPClassifier` and :class:`NumpyMLPRegressor` and run in a
fresh pytest process.  Tests of scikit-learn's private internals are
deselected, each with the reason, and so are the tests of behaviour skdigits
changes on purpose (README, "What differs"), each with the test here that
checks ours instead; every other test must pass.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sklearn

SUITE = Path(sklearn.__file__).parent / "neural_network" / "tests" / "test_mlp.py"
PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])

#: Tests that read or call scikit-learn's private internals, not behaviour a
#: user can see, with the reason each cannot apply to another implementation.
PRIVATE_INTERNALS = {
    "test_fit": "sets private state (_coef_grads, _coef_velocity, _no_improvement_count, ...) "
                "on an unfitted MLPClassifier so that partial_fit skips initialisation",
    "test_gradient": "calls MLPClassifier._forward_pass / _backprop / _loss_grad_lbfgs "
                     "(ours has its own finite-difference tests: tests/test_nn_gradients.py)",
}

#: Tests of behaviour skdigits changes on purpose (a diverging fit raises
#: ValueError naming the cause and keeps the last finite, or the best,
#: weights): the reason, and the test in tests/test_regressor.py that checks
#: our behaviour in the same scenario.

IMPORT = "from sklearn.neural_network import MLPClassifier, MLPRegressor"

#: scikit-learn's own conftest gives its tests this fixture (42 by default).
CONFTEST = """
import pytest

@pytest.fixture
def global_random_seed():
    return 42
"""


def _suite_source():
    source = SUITE.read_text()
    if IMPORT not in source:
        pytest.fail(f"{SUITE} no longer imports the MLP as {IMPORT!r}; update this test.")
    return source.replace(
        IMPORT,
        "from skdigits import NumpyMLPClassifier as MLPClassifier\n"
        "from skdigits import NumpyMLPRegressor as MLPRegressor")


@pytest.mark.skipif(not SUITE.is_file(), reason="scikit-learn was installed without its tests")
def test_sklearn_mlp_tests_pass_against_numpy_mlps(tmp_path):
    target = tmp_path / "test_sklearn_mlp_ours.py"
    target.write_text(_suite_source())
    (tmp_path / "conftest.py").write_text(CONFTEST)
    present = set(re.findall(r"^def (test_\w+)", target.read_text(), flags=re.M))
    deselect = [f"--deselect={target.name}::{name}"
                for name in PRIVATE_INTERNALS if name in present]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         "-W", "ignore::sklearn.exceptions.ConvergenceWarning", str(target), *deselect],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    summary = proc.stdout[-3000:]
    assert proc.returncode == 0, summary
    assert re.search(r"\d+ passed", summary), summary
