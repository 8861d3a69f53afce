"""Shared by the hardening and persistence tests: tiny estimators, outcome
counting for the issue's table, and a class that leaves a marker if
anything ever rebuilds it from a file."""

import collections
import json
import os

import pytest
from hypothesis import HealthCheck, Phase, settings
from threadpoolctl import threadpool_limits

from skdigits import NumpyCNNClassifier, NumpyMLPClassifier

# Tiny networks: these tests are about input handling and faults, not accuracy.
MLP_SMALL = {"hidden_layer_sizes": (8,), "max_iter": 3, "random_state": 0}
CNN_SMALL = {"conv_filters": (4,), "hidden_layer_sizes": (8,), "max_iter": 3, "random_state": 0}
ESTIMATORS = {"mlp": (NumpyMLPClassifier, MLP_SMALL), "cnn": (NumpyCNNClassifier, CNN_SMALL)}


#: SKDIGITS_FUZZ_SCALE multiplies every property's example count;
#: SKDIGITS_FUZZ_RANDOM draws fresh examples instead of the fixed ones.
FUZZ_SCALE = float(os.environ.get("SKDIGITS_FUZZ_SCALE", "1"))
FUZZ_RANDOM = bool(os.environ.get("SKDIGITS_FUZZ_RANDOM"))


def fuzz(max_examples):
    """Hypothesis settings for the hardening properties: reproducible by
    default, no deadline, no shrinking (a failing property reports its first
    failing example; shrinking one that fails through the CSV diagnosis took
    minutes)."""
    return settings(
        max_examples=max(1, int(max_examples * FUZZ_SCALE)),
        deadline=None,
        derandomize=not FUZZ_RANDOM,
        database=None,
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                               HealthCheck.data_too_large],
    )


def make(name, **params):
    cls, base = ESTIMATORS[name]
    return cls(**{**base, **params})


_OUTCOMES = collections.defaultdict(collections.Counter)


def record(family, outcome):
    _OUTCOMES[family][outcome] += 1


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread_and_outcomes():
    """One BLAS thread unless a test says otherwise (the machine is shared);
    at the end of a module, append its outcome counts to the JSON-lines file
    named by SKDIGITS_HARDENING_OUTCOMES."""
    with threadpool_limits(1, user_api="blas"):
        yield
    path = os.environ.get("SKDIGITS_HARDENING_OUTCOMES")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            for family, counts in sorted(_OUTCOMES.items()):
                f.write(json.dumps({"family": family, **counts}) + "\n")
    _OUTCOMES.clear()


class SideEffect:
    """Leaves a marker file when pickle rebuilds it (via __reduce__) or skops
    would (via __setstate__)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))

    def __setstate__(self, state):  # pragma: no cover - must never run
        open(state["marker"], "w").close()

    def __getstate__(self):
        return {"marker": self.marker}
