"""scikit-learn's estimator checks over every estimator skdigits exports,
with no expected failures."""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

import skdigits


def _exported_estimators():
    from sklearn.base import BaseEstimator

    for name in skdigits.__all__:
        obj = getattr(skdigits, name)
        if isinstance(obj, type) and issubclass(obj, BaseEstimator):
            yield obj()


#: The opt-in training features, switched on: scikit-learn's checks must
#: pass with them too.
WITH_OPTIONS = [
    skdigits.NumpyMLPClassifier(batch_norm=True, lr_schedule="one-cycle", dropout=0.2,
                                augment="affine"),
    skdigits.NumpyCNNClassifier(batch_norm=True, lr_schedule="cosine", augment="elastic"),
    # No augmentation here: distorting the checks' tabular rows as images
    # would be noise on the targets they score against (a regressor's R^2).
    skdigits.NumpyMLPRegressor(batch_norm=True, lr_schedule="one-cycle", dropout=0.2),
]

ESTIMATORS = list(_exported_estimators()) + WITH_OPTIONS


def test_every_exported_estimator_is_checked():
    names = {type(e).__name__ for e in ESTIMATORS}
    assert {"NumpyMLPClassifier", "NumpyMLPRegressor", "NumpyCNNClassifier",
            "ImageTransformer"} <= names


# The checks fit with few iterations and on few rows, as scikit-learn's own
# common tests do (which ignore these warnings too): expected, not news.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore:Got `batch_size` less than 1 or larger than sample size")
@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
