"""Plain helpers shared by several test files (fixtures live in conftest.py)."""


def model_params(clf):
    """A fitted network estimator's weight matrices, then its bias vectors."""
    return list(clf.coefs_) + list(clf.intercepts_)
