"""benchmarks/bench_time_to_accuracy.py --same-start: PyTorch gets skdigits'
initial weights (its logits equal ours) and skdigits' batch order (as a real
fit gathers it), and the checks that guard both catch the likely mistakes."""

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("bench_time_to_accuracy")


@pytest.fixture(scope="module")
def digits28(digits):
    """scikit-learn's digits blown up to MNIST's 28x28 (3x3 blocks, 2-pixel
    border), float32 as the benchmark's X."""
    X, y = digits
    images = np.kron(X.reshape(-1, 8, 8), np.ones((3, 3)))
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return images.reshape(len(X), 784).astype(np.float32), y


def small_recipe(bench, seed=0, batch_norm=False):
    """The benchmark's recipes with a small MLP, so that the tests run fast."""
    return bench.Recipe(target=2.0, batch_size=32, max_epochs=2, hidden=64, seed=seed,
                        batch_norm=batch_norm)


def recipe_for(bench, name, seed=0, batch_norm=False):
    if name == "mlp":
        return small_recipe(bench, seed, batch_norm)
    return dataclasses.replace(bench.RECIPES["cnn"], batch_norm=batch_norm)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batch-norm"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_copied_torch_network_gives_our_logits(bench, digits28, name, batch_norm):
    X, _ = digits28
    recipe = recipe_for(bench, name, seed=3, batch_norm=batch_norm)
    network, _ = bench.our_initial_network(recipe, name, 784)
    model = bench.torch_network(recipe, name)
    bench.copy_our_parameters(network, model)
    ours, theirs = network.predict_logits(X[:64]), bench.torch_logits(model, X[:64])
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5 * np.abs(ours).max())
    bench.check_same_logits(network, model, X[:64])  # and the benchmark's check agrees


def test_logit_check_catches_channels_last_flattening(bench, digits28):
    """Copying the first dense layer after the convolutions without permuting
    its inputs from (h, w, c) to (c, h, w) order is caught."""
    X, _ = digits28
    recipe = bench.RECIPES["cnn"]
    network, _ = bench.our_initial_network(recipe, "cnn", 784)
    model = bench.torch_network(recipe, "cnn")
    bench.copy_our_parameters(network, model)
    dense = next(layer for layer in network.layers if layer.params.get("W", np.empty(0)).ndim == 2)
    first_linear = next(layer for layer in model if isinstance(layer, torch.nn.Linear))
    with torch.no_grad():
        first_linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(dense.params["W"].T)))
    with pytest.raises(RuntimeError, match="logits on 64 test digits differ"):
        bench.check_same_logits(network, model, X[:64])


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("seed", [0, 5])
def test_reproduced_start_is_the_one_our_fit_takes(bench, digits28, name, seed):
    X, y = digits28
    recipe = recipe_for(bench, name, seed)
    initial, batches = bench.record_our_fit(recipe, name, X[:200], y[:200], epochs=2)
    network, random_state = bench.our_initial_network(recipe, name, 784)
    np.testing.assert_array_equal(initial, network.params)
    first, second = (order.copy() for order, _ in zip(bench.our_epoch_orders(random_state, 200),
                                                      range(2)))
    starts = range(0, 200, recipe.batch_size)
    expected = [first[s:s + recipe.batch_size] for s in starts] + \
               [second[s:s + recipe.batch_size] for s in starts]
    assert len(batches) == len(expected)
    for seen, reproduced in zip(batches, expected):
        np.testing.assert_array_equal(seen, reproduced)
    bench.check_our_start(recipe, name, X, y)  # the benchmark's own check passes


def test_order_check_catches_a_fresh_permutation_per_epoch(bench, digits28, monkeypatch):
    """An order that draws the same permutations but does not compose them
    (skdigits does ``order = order[permutation]``) fails from the second epoch."""
    def fresh_orders(random_state, n_rows):
        while True:
            permutation = np.arange(n_rows)
            random_state.shuffle(permutation)
            yield permutation

    monkeypatch.setattr(bench, "our_epoch_orders", fresh_orders)
    X, y = digits28
    recipe = small_recipe(bench)
    with pytest.raises(RuntimeError, match=r"batch \d+ of skdigits' fit holds rows"):
        bench.check_our_start(recipe, "mlp", X, y)


def test_start_check_catches_a_missing_dropout_seed(bench, digits28, monkeypatch):
    """The CNN draws a dropout seed before its weights: a reproduction that
    skips that draw starts from other weights, and the check says so."""
    monkeypatch.setattr(bench, "Dropout", type("NotALayer", (), {}))
    X, y = digits28
    with pytest.raises(RuntimeError, match="initial weights differ"):
        bench.check_our_start(bench.RECIPES["cnn"], "cnn", X, y)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batch-norm"])
def test_same_start_follows_our_trajectory(bench, digits28, batch_norm):
    """With the MLP (no dropout), with or without batch norm, both libraries
    take the same path: after each of two epochs the test accuracies agree
    to a digit or two, while PyTorch's own start gives a visibly different
    curve."""
    X, y = digits28
    X_train, y_train, X_test, y_test = X[:600], y[:600], X[600:1200], y[600:1200]
    recipe = small_recipe(bench, batch_norm=batch_norm)
    args = (recipe, "mlp", X_train, y_train, X_test, y_test, 2, None)
    ours = [accuracy for _, accuracy in bench.time_ours(*args)]
    shared = [accuracy for _, accuracy in bench.time_torch(*args, same_start=True)]
    own = [accuracy for _, accuracy in bench.time_torch(*args)]
    assert len(ours) == len(shared) == 2
    assert np.max(np.abs(np.subtract(shared, ours))) <= 2 / len(X_test)
    assert np.max(np.abs(np.subtract(own, ours))) > 2 / len(X_test)


def test_same_start_refuses_training_rows_without_every_digit(bench, digits28):
    X, y = digits28
    keep = y < 9
    recipe = small_recipe(bench)
    model = bench.torch_network(recipe, "mlp")
    with pytest.raises(ValueError, match="every digit 0-9"):
        bench.start_from_ours(model, recipe, "mlp", X[keep], y[keep], X[:64])
