"""Tests of :class:`skdigits.concurrency.DataParallel` and concurrent prediction.

Sharding a batch in two (with batch norm too, whose shards add up their
statistics), or splitting its products in two halves, must give the loss
and gradient of the whole batch up to rounding, and running the second
shard or half on a helper thread must not change a single bit.
``SHARD_MIN_MULTIPLY_ADDS`` and ``PRODUCT_SPLIT_MIN_MULTIPLY_ADDS`` are
patched down so that tiny networks and batches split and the file stays fast.
"""

import copy
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import ThreadpoolController, threadpool_limits

import skdigits.concurrency
from skdigits import NumpyCNNClassifier, NumpyMLPClassifier
from skdigits.concurrency import (DataParallel, ShardFailed, ShardSums, SplitProducts,
                                  parallel_strategy, predict_in_chunks)
from skdigits.nn import SGD, Activation, Adam, BatchNorm, Dense, Dropout, Network
from skdigits.nn.conv import Conv2D, Flatten, MaxPool2D
from skdigits.nn.losses import LOSSES

TOLERANCE = {"float64": 1e-12, "float32": 1e-5}
BLAS = ThreadpoolController()


# ------------------------------------------------------------------ helpers
@pytest.fixture
def always_shard(monkeypatch):
    """Every batch of at least two rows is computed as two shards."""
    monkeypatch.setattr(skdigits.concurrency, "SHARD_MIN_MULTIPLY_ADDS", 1)


def mlp(dtype="float64", output="softmax", n_in=10, n_out=3, dropout=0.0, seed=0):
    layers = [Dense(16, "relu")]
    if dropout:
        layers.append(Dropout(dropout))
    layers.append(Dense(12, "tanh"))
    if dropout:
        layers.append(Dropout(dropout))
    layers.append(Dense(n_out))
    return Network(layers, output, dtype).build((n_in,), np.random.RandomState(seed), seed=seed)


def convnet(dtype="float64", output="softmax", n_out=3, dropout=0.0, seed=0):
    layers = [Conv2D(4, 3, padding="same"), MaxPool2D(2), Flatten()]
    if dropout:
        layers.append(Dropout(dropout))
    layers += [Dense(8, "relu"), Dense(n_out)]
    return Network(layers, output, dtype).build((6, 6, 2), np.random.RandomState(seed), seed=seed)


def batch(network, n, seed=0, weights=False):
    """(X, Y, w) for ``network``: Y one-hot for softmax, 0/1 labels for logistic."""
    rng = np.random.RandomState(seed)
    X = rng.standard_normal((n,) + network.input_shape).astype(network.dtype)
    k = network.output_shape[0]
    if network.output == "softmax":
        Y = np.eye(k, dtype=network.dtype)[rng.randint(k, size=n)]
    else:
        Y = rng.randint(2, size=(n, k)).astype(network.dtype)
    w = rng.uniform(0.2, 3.0, size=n) if weights else None
    return X, Y, w


def assert_close(actual, expected, rtol):
    """Elementwise close, with an absolute floor scaled to the array's size."""
    expected = np.asarray(expected, dtype=np.float64)
    atol = rtol * max(float(np.max(np.abs(expected))), 1e-300)
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol, atol=atol)


def sgd_step(network, lr=0.05):
    """Move the parameters so the next batch sees different weights."""
    network.params -= network.dtype.type(lr) * network.grads


NETWORKS = {
    "mlp-softmax": lambda dtype, **kw: mlp(dtype, "softmax", **kw),
    "mlp-logistic": lambda dtype, **kw: mlp(dtype, "logistic", **kw),
    "conv-softmax": lambda dtype, **kw: convnet(dtype, "softmax", **kw),
    "conv-logistic": lambda dtype, **kw: convnet(dtype, "logistic", **kw),
}


# ------------------------------------------- 1. sharded == whole-batch maths
@pytest.mark.parametrize("concurrent", [False, True])
@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.3])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_sharded_loss_and_gradient_match_whole_batch(always_shard, kind, dtype, alpha, weights,
                                                     concurrent):
    """Loss and gradient are sums over rows: two shards must add up to the
    whole batch's, penalty included once, for MLPs and conv nets, with odd
    batch sizes (unequal shards) and sample weights."""
    network = NETWORKS[kind](dtype)
    reference = copy.deepcopy(network)
    rtol = TOLERANCE[dtype]
    with DataParallel(network, concurrent) as parallel:
        for n, seed in [(7, 1), (2, 2), (13, 3)]:
            assert parallel.splits(n)
            X, Y, w = batch(network, n, seed, weights)
            loss = parallel.loss_and_gradient(X, Y, w, alpha)
            expected = reference.loss_and_gradient(X, Y, w, alpha)
            assert np.isfinite(loss)
            assert_close(loss, expected, rtol)
            assert_close(network.grads, reference.grads, rtol)
        assert parallel._twin is not None  # the sharded path really ran


@pytest.mark.parametrize("concurrent", [False, True])
def test_sharded_with_explicit_weight_sum(always_shard, concurrent):
    """L-BFGS passes the weight sum of the whole data set with each chunk:
    both shards must divide by it, not by their own weight sums."""
    network = mlp()
    reference = copy.deepcopy(network)
    X, Y, w = batch(network, 9, seed=4, weights=True)
    with DataParallel(network, concurrent) as parallel:
        loss = parallel.loss_and_gradient(X, Y, w, 0.0, weight_sum=123.0)
    expected = reference.loss_and_gradient(X, Y, w, 0.0, weight_sum=123.0)
    assert_close(loss, expected, 1e-12)
    assert_close(network.grads, reference.grads, 1e-12)


# ---------------------------------- 2. concurrent and sequential, bit for bit
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["mlp-softmax", "conv-logistic"])
def test_concurrent_equals_sequential_bit_for_bit(always_shard, kind, dtype):
    """The thread only changes when the second shard runs, never what it
    computes: over consecutive batches of changing sizes (buffers re-made)
    and parameter updates, with dropout at a new step each batch, losses and
    gradients are identical."""
    first = NETWORKS[kind](dtype, dropout=0.5, seed=3)
    second = copy.deepcopy(first)
    sizes = [7, 8, 7, 5, 16, 3, 7, 11]
    with DataParallel(first, concurrent=True) as threaded, \
            DataParallel(second, concurrent=False) as sequential:
        for i, n in enumerate(sizes):
            X, Y, w = batch(first, n, seed=10 + i, weights=i % 2 == 1)
            loss_t = threaded.loss_and_gradient(X, Y, w, alpha=0.01, step=i)
            loss_s = sequential.loss_and_gradient(X, Y, w, alpha=0.01, step=i)
            assert loss_t == loss_s
            assert np.array_equal(first.grads, second.grads)
            sgd_step(first)
            sgd_step(second)
        assert np.array_equal(first.params, second.params)


def test_split_and_unsplit_batches_draw_the_masks_of_their_step(monkeypatch):
    """Batches below the threshold run on the network alone, larger ones as
    two shards; either way a batch draws the masks of the step it is given
    (compared with an unsharded copy)."""
    network = mlp(dropout=0.5, seed=5)
    reference = copy.deepcopy(network)
    # Batches of >= 6 rows shard, smaller ones do not.
    monkeypatch.setattr(skdigits.concurrency, "SHARD_MIN_MULTIPLY_ADDS",
                        6 * network.multiply_adds_per_sample)
    sizes = [7, 4, 3, 9, 5, 6, 2, 8]
    with DataParallel(network, concurrent=True) as parallel:
        assert [parallel.splits(n) for n in sizes] == [n >= 6 for n in sizes]
        for i, n in enumerate(sizes):
            X, Y, w = batch(network, n, seed=30 + i)
            loss = parallel.loss_and_gradient(X, Y, w, step=i)
            expected = reference.loss_and_gradient(X, Y, w, step=i)
            assert_close(loss, expected, 1e-12)
            assert_close(network.grads, reference.grads, 1e-12)
            sgd_step(network)
            reference.params[...] = network.params


# ------------------------------------------------ 3. dropout: sharded == whole
@pytest.mark.parametrize("concurrent", [False, True])
@pytest.mark.parametrize("kind", ["mlp-softmax", "conv-softmax"])
def test_dropout_sharded_gradient_matches_whole_batch(always_shard, kind, concurrent):
    """Dropout masks are keyed by each sample's content and the step, not its
    row in the batch: a sample masked by the replica gets the mask it would
    have got in the whole batch, so the gradients agree up to rounding."""
    network = NETWORKS[kind]("float64", dropout=0.5, seed=7)
    reference = copy.deepcopy(network)
    with DataParallel(network, concurrent) as parallel:
        for i in range(4):
            X, Y, w = batch(network, 7, seed=50 + i, weights=i == 2)
            loss = parallel.loss_and_gradient(X, Y, w, alpha=0.1, step=i)
            expected = reference.loss_and_gradient(X, Y, w, alpha=0.1, step=i)
            assert_close(loss, expected, 1e-12)
            assert_close(network.grads, reference.grads, 1e-12)


def test_dropout_comparison_detects_a_step_mismatch(always_shard):
    """Control for the test above: with the reference one step ahead, its
    masks differ and so does the gradient, so agreement there is not vacuous."""
    network = mlp(dropout=0.5, seed=7)
    reference = copy.deepcopy(network)
    X, Y, w = batch(network, 7, seed=50)
    with DataParallel(network, concurrent=False) as parallel:
        parallel.loss_and_gradient(X, Y, w, step=3)
    reference.loss_and_gradient(X, Y, w, step=4)
    assert not np.allclose(network.grads, reference.grads, rtol=1e-6)


# --------------------------------------------------- 4. below the threshold
@pytest.mark.parametrize("concurrent", [False, True])
def test_below_threshold_is_the_plain_network_call(concurrent):
    """With the default threshold a tiny network never shards: DataParallel
    must return exactly network.loss_and_gradient's bits and never build the
    replica (no memory for a second set of buffers)."""
    network = mlp(dropout=0.5, seed=2)
    reference = copy.deepcopy(network)
    with DataParallel(network, concurrent) as parallel:
        for i, n in enumerate([7, 64, 1]):
            assert not parallel.splits(n)
            X, Y, w = batch(network, n, seed=70 + i, weights=i == 1)
            loss = parallel.loss_and_gradient(X, Y, w, alpha=0.2)
            expected = reference.loss_and_gradient(X, Y, w, alpha=0.2)
            assert loss == expected
            assert np.array_equal(network.grads, reference.grads)
        assert parallel._twin is None


def test_splits_threshold_boundary(monkeypatch):
    """A batch shards from exactly SHARD_MIN_MULTIPLY_ADDS multiply-adds on,
    and a single row never does."""
    network = convnet()
    per_sample = network.multiply_adds_per_sample
    assert per_sample == sum(layer.multiply_adds() for layer in network.layers) > 0
    monkeypatch.setattr(skdigits.concurrency, "SHARD_MIN_MULTIPLY_ADDS", 4 * per_sample)
    parallel = DataParallel(network, concurrent=False)
    assert [parallel.splits(n) for n in (1, 2, 3, 4, 5, 100)] == [False] * 3 + [True] * 3
    monkeypatch.setattr(skdigits.concurrency, "SHARD_MIN_MULTIPLY_ADDS", 1)
    assert not parallel.splits(1) and parallel.splits(2)


def test_single_row_batch_with_forced_sharding(always_shard):
    """One row cannot be split; it goes through the network alone."""
    network = mlp()
    reference = copy.deepcopy(network)
    X, Y, _ = batch(network, 1, seed=9)
    with DataParallel(network, concurrent=True) as parallel:
        loss = parallel.loss_and_gradient(X, Y, alpha=0.1)
        assert parallel._twin is None
    assert loss == reference.loss_and_gradient(X, Y, alpha=0.1)
    assert np.array_equal(network.grads, reference.grads)


# -------------------------------------------------------------- 5. replica
@pytest.mark.parametrize("make", [mlp, convnet], ids=["mlp", "conv"])
def test_replica_shares_parameters_not_gradients(make):
    """The replica must see every parameter update (it shares the buffer)
    but write its gradient into a buffer of its own."""
    network = make(dropout=0.5)
    twin = network.replica()
    assert np.shares_memory(twin.params, network.params)
    assert not np.shares_memory(twin.grads, network.grads)
    for ours, theirs in zip(network.layers, twin.layers):
        assert ours is not theirs
        for name in getattr(ours, "params", {}):
            assert np.shares_memory(theirs.params[name], network.params)
            assert np.shares_memory(theirs.grads[name], twin.grads)
            assert not np.shares_memory(theirs.grads[name], network.grads)

    X, Y, _ = batch(network, 5, seed=11)
    before = twin.forward(X).copy()
    assert np.array_equal(before, network.forward(X))
    network.params *= 1.5
    network.params[-1] += 0.25  # a bias of the output layer
    after = twin.forward(X)
    assert not np.array_equal(after, before)
    assert np.array_equal(after, network.forward(X))

    network.grads[...] = 0
    twin.loss_and_gradient(X, Y, alpha=0.1)
    assert np.any(twin.grads != 0)
    assert not np.any(network.grads)


def test_replica_has_its_own_per_batch_state():
    """Interleaving a training forward pass of the replica between the
    network's forward and backward passes must not disturb the network's
    cached activations: the concurrent shards do exactly that."""
    network = convnet(dropout=0.5)
    reference = copy.deepcopy(network)
    twin = network.replica()
    XA, YA, _ = batch(network, 6, seed=12)
    XB, YB, _ = batch(network, 6, seed=13)  # same size: same buffer shapes

    logits = network.forward(XA, training=True)
    twin.data_loss_and_gradient(XB, YB, None, 6)
    loss, d_logits = LOSSES[network.output](logits, YA, None, None, 6)
    network.backward(d_logits)

    expected = reference.data_loss_and_gradient(XA, YA, None, 6)
    assert loss == expected
    assert np.array_equal(network.grads, reference.grads)


# ------------------------------------------------------------ 6. threads
def shard_threads(monkeypatch, network):
    """Record (which network, thread name) for every data_loss_and_gradient call."""
    calls = []
    original = Network.data_loss_and_gradient

    def recording(self, *args, **kwargs):
        calls.append((self is network, threading.current_thread().name))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Network, "data_loss_and_gradient", recording)
    return calls


def live_threads(prefix):
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def test_concurrent_second_shard_runs_on_helper_thread(always_shard, monkeypatch):
    """concurrent=True: the network's shard on the caller's thread, the
    replica's on a 'skdigits-shard' thread, and that thread gone on exit."""
    network = mlp()
    calls = shard_threads(monkeypatch, network)
    main = threading.current_thread().name
    with DataParallel(network, concurrent=True) as parallel:
        for seed in range(3):
            parallel.loss_and_gradient(*batch(network, 7, seed=seed)[:2])
        assert live_threads("skdigits-shard")
    assert len(calls) == 6
    assert [name for ours, name in calls if ours] == [main] * 3
    helpers = [name for ours, name in calls if not ours]
    assert len(helpers) == 3
    assert all(name.startswith("skdigits-shard") for name in helpers)
    assert not live_threads("skdigits-shard")


def test_concurrent_shards_overlap_in_time(always_shard, monkeypatch):
    """The two shards really run at the same time: each waits at a barrier
    for the other, which would time out if they ran one after the other."""
    network = mlp()
    barrier = threading.Barrier(2, timeout=10)
    original = Network.data_loss_and_gradient

    def meeting(self, *args, **kwargs):
        barrier.wait()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Network, "data_loss_and_gradient", meeting)
    reference = copy.deepcopy(network)
    X, Y, _ = batch(network, 7, seed=1)
    with DataParallel(network, concurrent=True) as parallel:
        loss = parallel.loss_and_gradient(X, Y)
    monkeypatch.setattr(Network, "data_loss_and_gradient", original)
    assert_close(loss, reference.loss_and_gradient(X, Y), 1e-12)


def test_sequential_shards_stay_on_calling_thread(always_shard, monkeypatch):
    """concurrent=False: both shards on the caller's thread, no helper thread."""
    network = mlp()
    calls = shard_threads(monkeypatch, network)
    main = threading.current_thread().name
    with DataParallel(network, concurrent=False) as parallel:
        for seed in range(3):
            parallel.loss_and_gradient(*batch(network, 7, seed=seed)[:2])
        assert parallel._executor is None
        assert not live_threads("skdigits-shard")
    assert [ours for ours, _ in calls] == [True, False] * 3
    assert {name for _, name in calls} == {main}


def test_helper_thread_is_joined_after_an_error(always_shard):
    """An exception inside the block (e.g. a diverged fit) must still shut
    the helper thread down."""
    network = mlp()
    with pytest.raises(RuntimeError, match="boom"):
        with DataParallel(network, concurrent=True) as parallel:
            parallel.loss_and_gradient(*batch(network, 7)[:2])
            raise RuntimeError("boom")
    assert not live_threads("skdigits-shard")


# -------------------------------------------------------- 7. predict_logits
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("make", [mlp, convnet], ids=["mlp", "conv"])
def test_predict_logits_concurrent_bit_identical(make, dtype, sparse, monkeypatch):
    """Concurrent prediction splits the padded chunks between two threads;
    every chunk is computed the same way, so the logits are the same bits
    (1000 rows: 4 chunks, the last one partial)."""
    network = make(dtype, dropout=0.5)
    n_features = int(np.prod(network.input_shape))
    rng = np.random.RandomState(21)
    X = rng.standard_normal((1000, n_features))
    X[rng.uniform(size=X.shape) < 0.6] = 0.0
    to_dense = None
    if sparse:
        X = sp.csr_matrix(X)
        to_dense = lambda part: part.toarray()  # noqa: E731

    predicted_by = []
    original = Network.predict_chunks

    def recording(self, X, logits, starts, to_dense):
        predicted_by.append((threading.current_thread().name, list(starts)))
        return original(self, X, logits, starts, to_dense)

    monkeypatch.setattr(Network, "predict_chunks", recording)
    sequential = predict_in_chunks(network, X, to_dense=to_dense, concurrent=False)
    concurrent = predict_in_chunks(network, X, to_dense=to_dense, concurrent=True)

    assert sequential.dtype == concurrent.dtype == network.dtype
    assert sequential.shape == (1000, 3)
    assert np.all(np.isfinite(sequential))
    assert np.array_equal(sequential, concurrent)
    # The helper thread really predicted the second half of the chunks.
    main = threading.current_thread().name
    assert predicted_by[0] == (main, [0, 256, 512, 768])
    assert len(predicted_by) == 3
    by_thread = dict(predicted_by[1:])
    assert by_thread.pop(main) == [0, 256]
    [(helper, starts)] = by_thread.items()
    assert helper.startswith("skdigits-predict") and starts == [512, 768]
    assert not live_threads("skdigits-predict")
    # And a row's logits are those of the plain forward pass.
    rows = X[[0, 500, 999]]
    rows = rows.toarray() if sparse else rows
    expected = network.forward(rows.astype(network.dtype).reshape((3,) + network.input_shape))
    assert_close(concurrent[[0, 500, 999]], expected, TOLERANCE[dtype])


# ---------------------------------------------------------- 8. estimators
def blas_threads():
    return max(lib.num_threads for lib in BLAS.select(user_api="blas").lib_controllers)


def fit_under(threads, make, X, y, monkeypatch):
    """Fit and predict under a BLAS limit of ``threads``; records the thread
    name and the BLAS thread count of every shard computed."""
    calls = []
    original = Network.data_loss_and_gradient

    def recording(self, *args, **kwargs):
        calls.append((threading.current_thread().name, blas_threads()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Network, "data_loss_and_gradient", recording)
    with threadpool_limits(threads, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = make().fit(X, y)
        proba = model.predict_proba(X)
    monkeypatch.setattr(Network, "data_loss_and_gradient", original)
    return model, proba, calls


ESTIMATORS = {
    "mlp-adam": (lambda: NumpyMLPClassifier(hidden_layer_sizes=(32,), max_iter=3,
                                            random_state=0, dtype="float32"), 196, 600),
    "mlp-lbfgs": (lambda: NumpyMLPClassifier(hidden_layer_sizes=(32,), max_iter=3,
                                             solver="lbfgs", random_state=0,
                                             dtype="float32"), 196, 600),
    "cnn": (lambda: NumpyCNNClassifier(conv_filters=(4,), hidden_layer_sizes=(8,), max_iter=2,
                                       random_state=0), 64, 300),
}


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimator_fit_independent_of_blas_threads(always_shard, monkeypatch, name):
    """A fit is bit-identical whether the BLAS setting lets the shards run at
    once (2 threads) or not (1): coefficients and probabilities alike."""
    make, n_features, n_samples = ESTIMATORS[name]
    rng = np.random.RandomState(0)
    X = rng.uniform(size=(n_samples, n_features)).astype(np.float32)
    y = rng.randint(10, size=n_samples)

    one, proba_one, calls_one = fit_under(1, make, X, y, monkeypatch)
    two, proba_two, calls_two = fit_under(2, make, X, y, monkeypatch)

    # The batches really were sharded, on one thread with one BLAS thread
    # and on the helper thread with two; each shard's products on a single
    # BLAS thread (whose bits do not depend on the setting) either way.
    assert calls_one and len(calls_one) == len(calls_two)
    assert not any(name.startswith("skdigits-shard") for name, _ in calls_one)
    assert sum(name.startswith("skdigits-shard") for name, _ in calls_two) == len(calls_two) // 2
    assert {blas for _, blas in calls_one + calls_two} == {1}

    assert one.n_iter_ == two.n_iter_
    coefs_one = getattr(one, "coefs_", None)
    if coefs_one is not None:
        for a, b in zip(coefs_one + one.intercepts_, two.coefs_ + two.intercepts_):
            assert np.array_equal(a, b)
    assert np.array_equal(one._network.params, two._network.params)
    assert np.array_equal(proba_one, proba_two)
    assert one.loss_curve_ == two.loss_curve_


# ------------------------------------------- 8. split elementwise passes
OPTIMIZERS = {"adam": lambda p: Adam(p, 1e-2), "sgd": lambda p: SGD(p, 0.05)}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_split_optimizer_step_and_penalty_are_bit_identical(always_shard, optimizer, monkeypatch):
    """The optimizer step, the L2 gradient and the sum of the shards'
    gradients are elementwise: done as two halves on two threads they give
    the bits of one pass on one thread, in training steps and in
    loss_and_gradient's complete gradient (L-BFGS's)."""
    make = OPTIMIZERS[optimizer]
    runs, gradients = [], []
    for split in (False, True):
        monkeypatch.setattr(skdigits.concurrency, "SPLIT_STEP_MIN_PARAMS", 1 if split else 10**12)
        network = mlp("float32", dropout=0.5, seed=11)
        opt = make(network.params)
        with DataParallel(network, concurrent=split) as parallel:
            for i in range(5):
                X, Y, w = batch(network, 9, seed=90 + i, weights=i == 3)
                parallel.loss_and_gradient(X, Y, w, alpha=0.3, step=i)
                gradients.append(network.grads.copy())
                parallel.train_step(X, Y, w, 0.3, i, opt, accept=lambda loss: True)
        runs.append(network.params.copy())
    assert np.array_equal(runs[0], runs[1])
    for unsplit, halves in zip(gradients[:5], gradients[5:]):
        assert np.array_equal(unsplit, halves)


# ------------------------------------- 9. the training loop's one-pass step
@pytest.mark.parametrize("concurrent", [False, True])
@pytest.mark.parametrize("split", [False, True], ids=["whole-vector", "halves"])
@pytest.mark.parametrize("shard", [False, True], ids=["one-shard", "two-shards"])
@pytest.mark.parametrize("alpha", [0.0, 0.3])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_train_step_equals_loss_and_gradient_then_step(optimizer, alpha, shard, split,
                                                       concurrent, monkeypatch):
    """train_step does per parameter what loss_and_gradient then the
    optimizer's own step do (sum of the shards, L2 term, update) in one pass
    per half: the same losses, and parameters bit for bit, over batches of
    changing sizes, odd ones, with sample weights."""
    monkeypatch.setattr(skdigits.concurrency, "SHARD_MIN_MULTIPLY_ADDS", 1 if shard else 10**12)
    monkeypatch.setattr(skdigits.concurrency, "SPLIT_STEP_MIN_PARAMS", 1 if split else 10**12)
    fused = mlp("float32", dropout=0.5, seed=12)
    staged = copy.deepcopy(fused)
    fused_opt, staged_opt = OPTIMIZERS[optimizer](fused.params), OPTIMIZERS[optimizer](staged.params)
    seen = []
    with DataParallel(fused, concurrent) as one_pass, DataParallel(staged, concurrent) as stages:
        for i, n in enumerate([9, 8, 13, 5, 9]):
            X, Y, w = batch(fused, n, seed=120 + i, weights=i % 2 == 1)
            loss, stepped = one_pass.train_step(X, Y, w, alpha, i, fused_opt,
                                                accept=lambda loss: seen.append(loss) or True)
            expected = stages.loss_and_gradient(X, Y, w, alpha, step=i)
            staged_opt.step(staged.grads)  # the whole vector at once
            assert stepped and loss == expected == seen[-1]
            assert np.array_equal(fused.params, staged.params)
            assert np.array_equal(fused.grads, staged.grads)  # complete once stepped
        assert (one_pass._twin is not None) == shard


@pytest.mark.parametrize("concurrent", [False, True])
def test_train_step_refused_changes_nothing(always_shard, monkeypatch, concurrent):
    """When ``accept`` refuses the loss (the divergence guard), neither the
    parameters nor the optimizer's state move; the loss it saw includes the
    penalty."""
    monkeypatch.setattr(skdigits.concurrency, "SPLIT_STEP_MIN_PARAMS", 1)
    network = mlp("float64", seed=13)
    reference = copy.deepcopy(network)
    opt = Adam(network.params, 1e-2)
    before = (network.params.copy(), opt.m.copy(), opt.v.copy(), opt.t)
    X, Y, w = batch(network, 11, seed=140)
    seen = []
    with DataParallel(network, concurrent) as parallel:
        loss, stepped = parallel.train_step(X, Y, w, 0.3, 0, opt,
                                            accept=lambda loss: seen.append(loss) or False)
    assert not stepped
    with DataParallel(reference, concurrent=False) as parallel:
        expected = parallel.loss_and_gradient(X, Y, w, 0.3)
    assert seen == [loss] and loss == expected
    assert loss > reference.loss_and_gradient(X, Y, w, 0.0)  # the penalty is in it
    for now, then in zip((network.params, opt.m, opt.v, opt.t), before):
        assert np.array_equal(now, then)


# ------------------------------------------- 10. batch norm: shards that meet
def mlp_batch_norm(dtype="float64", dropout=0.0, seed=0, n_in=10, n_out=3):
    """Dense -> BatchNorm -> activation, twice."""
    layers = [Dense(16), BatchNorm(), Activation("relu")]
    if dropout:
        layers.append(Dropout(dropout))
    layers += [Dense(12), BatchNorm(), Activation("tanh"), Dense(n_out)]
    return Network(layers, "softmax", dtype).build((n_in,), np.random.RandomState(seed), seed=seed)


def convnet_batch_norm(dtype="float64", dropout=0.0, seed=0, n_out=3):
    """Conv2D -> BatchNorm -> ReLU -> pool, then a dense layer with batch norm."""
    layers = [Conv2D(4, 3, padding="same", activation="identity"), BatchNorm(),
              Activation("relu"), MaxPool2D(2), Flatten()]
    if dropout:
        layers.append(Dropout(dropout))
    layers += [Dense(8), BatchNorm(), Activation("relu"), Dense(n_out)]
    return Network(layers, "softmax", dtype).build((6, 6, 2), np.random.RandomState(seed),
                                                   seed=seed)


#: Auto-strategy gives the MLP split products (section 11); these tests
#: force row shards on it so that its shards meet too.
BATCH_NORM_NETWORKS = {"mlp-batch-norm": mlp_batch_norm, "conv-batch-norm": convnet_batch_norm}


def running_statistics(network):
    return [array for layer in network.layers for array in layer.state_arrays()]


@pytest.mark.parametrize("concurrent", [False, True])
@pytest.mark.parametrize("weights", [None, "positive", "zero-shard"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", sorted(BATCH_NORM_NETWORKS))
def test_batch_norm_shards_match_whole_batch(always_shard, kind, dtype, weights, concurrent):
    """With batch norm the shards add up their statistics: loss, gradient
    and running statistics are the whole batch's to rounding, with odd
    batch sizes (unequal shards, a one-row shard), sample weights, and a
    shard whose weights are all 0; the running statistics move once."""
    network = BATCH_NORM_NETWORKS[kind](dtype, dropout=0.5, seed=6)
    reference = copy.deepcopy(network)
    rtol = TOLERANCE[dtype]
    with DataParallel(network, concurrent, strategy="rows") as parallel:
        for i, (n, seed) in enumerate([(7, 1), (3, 2), (13, 3)]):
            assert parallel.splits(n)
            X, Y, w = batch(network, n, seed, weights=weights is not None)
            if weights == "zero-shard":
                w[: n // 2] = 0.0
            loss = parallel.loss_and_gradient(X, Y, w, alpha=0.1, step=i)
            expected = reference.loss_and_gradient(X, Y, w, alpha=0.1, step=i)
            assert np.isfinite(loss)
            assert_close(loss, expected, rtol)
            assert_close(network.grads, reference.grads, rtol)
            for ours, theirs in zip(running_statistics(network), running_statistics(reference)):
                assert_close(ours, theirs, rtol)
        assert parallel._twin is not None  # the sharded path really ran


@pytest.mark.parametrize("concurrent", [False, True])
@pytest.mark.parametrize("kind", sorted(BATCH_NORM_NETWORKS))
def test_batch_norm_shards_with_explicit_weight_sum(always_shard, kind, concurrent):
    """L-BFGS divides the loss by the whole data set's weight sum; batch
    norm's statistics must still be the batch's own."""
    network = BATCH_NORM_NETWORKS[kind]("float64", seed=12)
    reference = copy.deepcopy(network)
    X, Y, w = batch(network, 9, seed=4, weights=True)
    with DataParallel(network, concurrent, strategy="rows") as parallel:
        loss = parallel.loss_and_gradient(X, Y, w, 0.0, weight_sum=123.0)
    expected = reference.loss_and_gradient(X, Y, w, 0.0, weight_sum=123.0)
    assert_close(loss, expected, 1e-12)
    assert_close(network.grads, reference.grads, 1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", sorted(BATCH_NORM_NETWORKS))
def test_batch_norm_shards_at_once_or_in_turns_bit_for_bit(always_shard, kind, dtype):
    """Shards computing at once (concurrent) and taking turns give the same
    bits: losses, parameters, optimizer state and running statistics over
    training steps on batches of changing sizes, with dropout."""
    network = BATCH_NORM_NETWORKS[kind](dtype, dropout=0.5, seed=8)
    assert_steps_concurrent_equal_sequential(network, "rows", seed=170)


def assert_steps_concurrent_equal_sequential(network, strategy, seed):
    """Adam steps on batches of changing sizes (sample weights on every other
    one) with ``strategy``, concurrent and not, from copies of ``network``:
    the same losses, and the same bits in parameters, optimizer state and
    running statistics."""
    twin = copy.deepcopy(network)
    network_opt, twin_opt = Adam(network.params, 1e-2), Adam(twin.params, 1e-2)
    with DataParallel(network, concurrent=True, strategy=strategy) as concurrent, \
            DataParallel(twin, concurrent=False, strategy=strategy) as sequential:
        for i, n in enumerate([7, 8, 7, 5, 16, 3, 7, 11]):
            X, Y, w = batch(network, n, seed=seed + i, weights=i % 2 == 1)
            loss_c, _ = concurrent.train_step(X, Y, w, 0.01, i, network_opt, lambda loss: True)
            loss_s, _ = sequential.train_step(X, Y, w, 0.01, i, twin_opt, lambda loss: True)
            assert loss_c == loss_s
    for ours, theirs in zip(network.state_arrays() + [network_opt.m, network_opt.v],
                            twin.state_arrays() + [twin_opt.m, twin_opt.v]):
        assert np.array_equal(ours, theirs)


def computing_threads(monkeypatch):
    """Record, for each Dense forward pass in training, its thread and how
    many such passes were running at that moment (a pause widens the window)."""
    seen, running, lock = [], [0], threading.Lock()
    original = Dense.forward

    def recording(self, X, training=False, batch=None):
        if not training:
            return original(self, X, training, batch)
        with lock:
            running[0] += 1
            seen.append((threading.current_thread().name, running[0]))
        try:
            threading.Event().wait(0.002)
            return original(self, X, training, batch)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(Dense, "forward", recording)
    return seen


@pytest.mark.parametrize("concurrent", [False, True])
def test_batch_norm_shards_take_turns_unless_concurrent(always_shard, monkeypatch, concurrent):
    """The second shard runs on the helper thread either way; with
    concurrent=False (one BLAS thread allowed) the two never compute at
    the same time, with concurrent=True they do; the thread is joined on exit."""
    network = mlp_batch_norm(seed=9)
    seen = computing_threads(monkeypatch)
    with DataParallel(network, concurrent, strategy="rows") as parallel:
        for seed in range(4):
            parallel.loss_and_gradient(*batch(network, 9, seed=seed)[:2])
    main = threading.current_thread().name
    names = {name for name, _ in seen}
    assert main in names and any(name.startswith("skdigits-shard") for name in names)
    assert max(count for _, count in seen) == (2 if concurrent else 1)
    assert not live_threads("skdigits-shard")


@pytest.mark.parametrize("concurrent", [False, True])
@pytest.mark.parametrize("bad_shard", [0, 1])
def test_a_failing_batch_norm_shard_releases_the_other(always_shard, concurrent, bad_shard):
    """A shard that raises before a meeting (a negative sample weight in its
    half) must not leave the other waiting: the caller gets the failing
    shard's own error, and the helper thread is joined."""
    network = mlp_batch_norm(seed=10)
    X, Y, w = batch(network, 8, seed=11, weights=True)
    w[2 if bad_shard == 0 else 6] = -1.0
    outcome = []

    def fit_one_batch():
        try:
            with DataParallel(network, concurrent, strategy="rows") as parallel:
                parallel.loss_and_gradient(X, Y, w)
        except Exception as error:  # noqa: BLE001 - the test inspects it
            outcome.append(error)

    caller = threading.Thread(target=fit_one_batch)
    caller.start()
    caller.join(timeout=30)
    assert not caller.is_alive(), "a shard was left waiting at a meeting"
    [error] = outcome
    assert isinstance(error, ValueError) and "finite and >= 0" in str(error)
    assert not live_threads("skdigits-shard")


def test_shard_sums_meet_in_order_and_release_on_failure():
    """ShardSums: at each meeting both shards get first + second; a failure
    on one side releases the other with ShardFailed."""
    sums = ShardSums()
    got = {}

    def shard(index, values):
        totals = [sums.total(index, np.array(v, dtype=np.float32)) for v in values]
        got[index] = totals

    with ThreadPoolExecutor(1) as helper:
        pending = helper.submit(sums.run, 1, shard, 1, [[0.25, 1.0], [3.0, 5.0]])
        sums.run(0, shard, 0, [[0.5, 2.0], [4.0, 6.0]])
        pending.result()
    for index in (0, 1):
        assert [t.tolist() for t in got[index]] == [[0.75, 3.0], [7.0, 11.0]]

    failing = ShardSums(take_turns=True)
    with ThreadPoolExecutor(1) as helper:
        waiting = helper.submit(failing.run, 1, failing.total, 1, np.ones(2))
        with pytest.raises(KeyError):
            failing.run(0, lambda: {}["boom"])
        with pytest.raises(ShardFailed):
            waiting.result(timeout=30)


def batch_norm_cnn():
    return NumpyCNNClassifier(conv_filters=(4,), hidden_layer_sizes=(8,), batch_norm=True,
                              max_iter=2, random_state=0)


def test_batch_norm_cnn_fit_independent_of_blas_threads(always_shard, monkeypatch):
    """A batch-norm CNN's fit is bit-identical whether its shards compute at
    once (2 BLAS threads allowed) or take turns (1): weights, running
    statistics, loss curve and probabilities."""
    rng = np.random.RandomState(0)
    X = rng.uniform(size=(300, 64)).astype(np.float32)
    y = rng.randint(10, size=300)
    one, proba_one, calls_one = fit_under(1, batch_norm_cnn, X, y, monkeypatch)
    two, proba_two, calls_two = fit_under(2, batch_norm_cnn, X, y, monkeypatch)
    for calls in (calls_one, calls_two):  # sharded, the second shard on the helper
        assert sum(name.startswith("skdigits-shard") for name, _ in calls) == len(calls) // 2 > 0
    assert {blas for _, blas in calls_one + calls_two} == {1}
    assert_same_fit((one, proba_one), (two, proba_two))


def assert_same_fit(first, second):
    """Two (fitted model, predict_proba) pairs with the same bits: epochs,
    loss curve, parameters and running statistics, probabilities."""
    (one, proba_one), (two, proba_two) = first, second
    assert one.n_iter_ == two.n_iter_ and one.loss_curve_ == two.loss_curve_
    for a, b in zip(one._network.state_arrays(), two._network.state_arrays()):
        assert np.array_equal(a, b)
    assert np.array_equal(proba_one, proba_two)


# ------------------------------------------------------ 11. split products
@pytest.fixture
def always_split_products(monkeypatch):
    """Every product of at least two output rows is computed as two halves."""
    monkeypatch.setattr(skdigits.concurrency, "PRODUCT_SPLIT_MIN_MULTIPLY_ADDS", 1)


def split_product_threads(monkeypatch):
    """Record (thread name, rows) for every half of a split product."""
    calls = []
    original = skdigits.concurrency._matmul_rows

    def recording(a, b, out, rows):
        calls.append((threading.current_thread().name, (rows.start, rows.stop)))
        return original(a, b, out, rows)

    monkeypatch.setattr(skdigits.concurrency, "_matmul_rows", recording)
    return calls


def test_strategy_follows_the_network():
    """Row shards where rows are independent (plain MLPs, conv nets), split
    products where batch norm couples them and all products are Dense ones,
    shards that meet at batch norm's statistics for a conv net with batch
    norm; an unknown strategy is refused."""
    assert parallel_strategy(mlp()) == "rows"
    assert parallel_strategy(convnet()) == "rows"
    assert parallel_strategy(mlp_batch_norm()) == "products"
    assert parallel_strategy(convnet_batch_norm()) == "rows"
    assert DataParallel(convnet_batch_norm(), concurrent=False).splits(10**6)  # meeting shards
    assert not DataParallel(mlp_batch_norm(), concurrent=False).splits(10**6)
    with pytest.raises(ValueError, match="strategy must be .* got 'columns'"):
        DataParallel(mlp(), strategy="columns")


def test_dense_training_products_go_through_the_hook():
    """A Dense layer's training products (forward, weight gradient, input
    gradient) use its ``_matmul``; inference uses NumPy's own."""
    layer = Dense(4, "relu")
    layer.build((3,), "float64")
    params = {"W": np.arange(12.0).reshape(3, 4) / 10 - 0.5, "b": np.zeros(4)}
    layer.bind(params, {"W": np.empty((3, 4)), "b": np.empty(4)})
    calls = []

    def recording(a, b, out):
        calls.append((a.shape, b.shape))
        return np.matmul(a, b, out=out)

    layer._matmul = recording
    X = np.linspace(-1, 1, 15).reshape(5, 3)
    layer.forward(X)
    assert calls == []
    layer.forward(X, training=True)
    layer.backward(np.ones((5, 4)), need_input_grad=True)
    assert calls == [((5, 3), (3, 4)), ((3, 5), (5, 4)), ((5, 4), (4, 3))]
    layer.forward(X, training=True)
    layer.backward(np.ones((5, 4)), need_input_grad=False)
    assert len(calls) == 5


def test_split_products_below_threshold_are_numpys_product():
    """With the default threshold a small product is one np.matmul call,
    never handed to the helper thread."""
    class RefusingExecutor:
        def submit(self, *args, **kwargs):
            raise AssertionError("a small product was handed to the helper thread")

    rng = np.random.RandomState(1)
    a, b = rng.standard_normal((64, 50)), rng.standard_normal((50, 40))
    out = np.empty((64, 40))
    assert SplitProducts(RefusingExecutor())(a, b, out=out) is out
    assert np.array_equal(out, a @ b)


def test_split_products_threshold_boundary(monkeypatch):
    """A product splits from exactly PRODUCT_SPLIT_MIN_MULTIPLY_ADDS
    (rows x inner x columns) on, into rows [0, m // 2) and [m // 2, m); a
    single row never splits."""
    calls = split_product_threads(monkeypatch)
    monkeypatch.setattr(skdigits.concurrency, "PRODUCT_SPLIT_MIN_MULTIPLY_ADDS", 6 * 5 * 4)
    rng = np.random.RandomState(2)
    for rows in (5, 6, 7):
        SplitProducts()(rng.standard_normal((rows, 5)), rng.standard_normal((5, 4)),
                        out=np.empty((rows, 4)))
    assert [span for _, span in calls] == [(0, 3), (3, 6), (0, 3), (3, 7)]
    monkeypatch.setattr(skdigits.concurrency, "PRODUCT_SPLIT_MIN_MULTIPLY_ADDS", 1)
    SplitProducts()(np.ones((1, 5)), np.ones((5, 4)), out=np.empty((1, 4)))
    assert len(calls) == 4


@pytest.mark.parametrize("transposed", [False, True], ids=["a", "a.T"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_split_products_halves_make_the_product(always_split_products, monkeypatch, dtype,
                                                transposed):
    """The two halves make the whole product (to rounding), also for a
    transposed operand (the weight gradient's ``X.T``); the helper thread
    computes the second half, and threaded and sequential halves agree bit
    for bit."""
    rng = np.random.RandomState(3)
    a = rng.standard_normal((5, 7) if transposed else (7, 5)).astype(dtype)
    a = a.T if transposed else a
    b = rng.standard_normal((5, 4)).astype(dtype)
    calls = split_product_threads(monkeypatch)
    sequential = SplitProducts()(a, b, out=np.full((7, 4), np.nan, dtype=dtype))
    with ThreadPoolExecutor(1, thread_name_prefix="skdigits-shard") as executor:
        threaded = SplitProducts(executor)(a, b, out=np.full((7, 4), np.nan, dtype=dtype))
    assert_close(sequential, a.astype(np.float64) @ b, TOLERANCE[dtype])
    assert np.array_equal(sequential, threaded)
    main = threading.current_thread().name
    assert calls[:2] == [(main, (0, 3)), (main, (3, 7))]
    assert calls[3] == (main, (0, 3))
    helper, span = calls[2]
    assert helper.startswith("skdigits-shard") and span == (3, 7)


PRODUCT_NETWORKS = {
    "mlp-batch-norm": lambda dtype, **kw: mlp_batch_norm(dtype, **kw),
    "mlp-forced": lambda dtype, **kw: mlp(dtype, **kw),
}


@pytest.mark.parametrize("concurrent", [False, True])
@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("alpha", [0.0, 0.3])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", sorted(PRODUCT_NETWORKS))
def test_split_products_match_whole_batch(always_split_products, monkeypatch, kind, dtype, alpha,
                                          weights, concurrent):
    """With every product split, loss, gradient and batch norm's running
    statistics are those of the network alone, to rounding, with odd batch
    sizes and sample weights; the halves really ran."""
    network = PRODUCT_NETWORKS[kind](dtype, dropout=0.5, seed=4)
    reference = copy.deepcopy(network)
    calls = split_product_threads(monkeypatch)
    rtol = TOLERANCE[dtype]
    with DataParallel(network, concurrent, strategy="products") as parallel:
        for i, (n, seed) in enumerate([(7, 1), (2, 2), (13, 3)]):
            assert not parallel.splits(n)
            X, Y, w = batch(network, n, seed, weights)
            loss = parallel.loss_and_gradient(X, Y, w, alpha, step=i)
            expected = reference.loss_and_gradient(X, Y, w, alpha, step=i)
            assert np.isfinite(loss)
            assert_close(loss, expected, rtol)
            assert_close(network.grads, reference.grads, rtol)
        assert parallel._twin is None
    for ours, theirs in zip(network.state_arrays()[1:], reference.state_arrays()[1:]):
        assert_close(ours, theirs, rtol)
    helpers = [name for name, _ in calls if name.startswith("skdigits-shard")]
    assert calls and len(helpers) == (len(calls) // 2 if concurrent else 0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_split_products_concurrent_equals_sequential_bit_for_bit(always_split_products, dtype):
    """Training steps of a batch-norm MLP with dropout, over batches of
    changing sizes: parameters, optimizer state and running statistics are
    the same bits whether the halves run on two threads or one."""
    network = mlp_batch_norm(dtype, dropout=0.5, seed=5)
    assert parallel_strategy(network) == "products"
    assert_steps_concurrent_equal_sequential(network, "products", seed=160)


def test_split_products_only_while_entered(always_split_products):
    """The layers compute with SplitProducts inside the context only; a copy
    taken inside (the callbacks' snapshot of a fit) computes with NumPy's
    product, and so does the network after the context, error or not."""
    network = mlp_batch_norm()
    with pytest.raises(RuntimeError, match="boom"):
        with DataParallel(network, concurrent=True):
            assert all(isinstance(layer._matmul, SplitProducts) for layer in network.layers)
            copied = copy.deepcopy(network)
            raise RuntimeError("boom")
    for layer in network.layers + copied.layers:
        assert "_matmul" not in vars(layer) and layer._matmul is np.matmul
    assert not live_threads("skdigits-shard")


def test_batch_norm_mlp_fit_independent_of_blas_threads(always_split_products, monkeypatch):
    """A batch-norm MLP's fit is bit-identical whether the BLAS setting lets
    the halves of its products run at once (2 threads) or not (1), and each
    half runs on one BLAS thread."""
    rng = np.random.RandomState(0)
    X = rng.uniform(size=(300, 64)).astype(np.float32)
    y = rng.randint(10, size=300)
    calls = split_product_threads(monkeypatch)
    make = lambda: NumpyMLPClassifier(hidden_layer_sizes=(32,), batch_norm=True,  # noqa: E731
                                      dropout=0.2, max_iter=3, random_state=0, dtype="float32")
    results = []
    for threads in (1, 2):
        calls.clear()
        model, proba, _ = fit_under(threads, make, X, y, monkeypatch)
        helpers = sum(name.startswith("skdigits-shard") for name, _ in calls)
        assert calls and helpers == (0 if threads == 1 else len(calls) // 2)
        results.append((model, proba))
    assert results[0][0].n_iter_ == 3
    assert_same_fit(*results)
