"""Layers of a feed-forward network: each ``forward`` beside its ``backward``.

A layer sees one mini-batch at a time.  Shapes are written per batch: ``n``
is the number of samples.  Parameters are not owned by the layer: the
:class:`~skdigits.nn.network.Network` allocates one flat buffer for all of
them (so the optimizer updates everything in a few vectorised passes) and
hands each layer views into it with :meth:`Layer.bind`.

In training mode a layer keeps what its backward pass needs and reuses its
output buffers between batches of the same size.  In inference mode it
allocates fresh arrays and keeps nothing, so one fitted network can predict
from several threads at once.
"""

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from .activations import ACTIVATIONS, DERIVATIVES


@dataclass(frozen=True)
class Batch:
    """What a training forward pass is told about its mini-batch besides X.

    The training loop makes one per mini-batch and the network hands the
    same one to every layer (and to both row shards of a split batch), so
    no layer keeps a counter of its own.

    Attributes
    ----------
    step : int
        Training steps taken before this one; Dropout draws a fresh mask per step.
    row_keys : ndarray of uint64, shape (n,), or None
        A hash of each sample's network input (see :func:`row_hashes`), so
        that a sample's random mask does not depend on its batch position.
    weights : ndarray of shape (n,) or None
        Per-sample weights of the batch, for layers whose statistics span
        the batch.
    shard : Shard or None
        Set when these rows are one of two row shards of a larger batch.
    """

    step: int = 0
    row_keys: np.ndarray | None = None
    weights: np.ndarray | None = None
    shard: "Shard | None" = None


@dataclass(frozen=True)
class Shard:
    """A training pass's rows as one of two row shards of a mini-batch, for
    layers whose statistics span the whole mini-batch (BatchNorm).

    Attributes
    ----------
    total : callable
        ``total(partial) -> whole``: a per-channel sum over this shard's rows
        in, the same sum over the whole batch out (this shard's plus the
        other's, added in a fixed order, so both shards get the same bits).
        Both shards call it the same number of times, in the same order.
    samples : int
        Samples in the whole batch.
    weight_sum : float
        Sum of the whole batch's sample weights (``samples`` without weights).
    keeps_state : bool
        Whether this shard updates state shared by both (running statistics):
        true of exactly one of the two.
    """

    total: object
    samples: int
    weight_sum: float
    keeps_state: bool


class Layer(ABC):
    """Base class: a differentiable map from (n, *input_shape) to (n, *output_shape).

    Subclasses implement :meth:`build`, :meth:`forward` and :meth:`backward`,
    and list their parameters in :meth:`param_specs`.
    """

    #: Whether each sample's output depends on that sample alone in training
    #: too.  Layers whose training statistics span the batch set it False:
    #: the network then computes a batch as separate row shards only if
    #: they add up their statistics across the shards.
    rows_independent = True

    #: For a layer whose statistics span the batch: whether it can still
    #: train on row shards of a batch, adding up its statistics across the
    #: shards through :attr:`Batch.shard` (see :class:`Shard`).
    sums_across_shards = False

    #: Whether this layer's training passes make every matrix-matrix product
    #: with :attr:`_matmul` (true of a layer that makes none: activations,
    #: dropout, batch norm's per-channel sums).  A network of such layers
    #: can have its large products split in pieces (see
    #: :meth:`~skdigits.nn.Network.use_products`) instead of being trained
    #: in row shards.
    products_via_matmul = True

    #: ``matmul(a, b, out=)``, the matrix product of training passes: NumPy's,
    #: unless the network hands its layers another that computes the same
    #: product in fixed pieces.  Inference always uses NumPy's.
    _matmul = staticmethod(np.matmul)

    def __getstate__(self):
        # Parameter views and batch caches are re-created by Network on load.
        return {k: v for k, v in self.__dict__.items()
                if k not in ("params", "grads") and not k.startswith("_")}

    def build(self, input_shape, dtype):
        """Fix the per-sample input shape and return the per-sample output shape."""
        self.input_shape = tuple(input_shape)
        self.dtype = np.dtype(dtype)
        self._buffers = {}
        return self.input_shape

    def param_specs(self):
        """List of ``(name, shape, penalized)``; penalized ones get the L2 term."""
        return []

    def multiply_adds(self):
        """Multiply-adds of the forward pass for one sample (after build)."""
        return 0

    def state_arrays(self):
        """Arrays besides the parameters that training updates in place and
        prediction reads (e.g. BatchNorm's running statistics); restoring a
        model's weights restores these too."""
        return []

    def bind(self, params, grads):
        """Receive dicts name -> view into the network's flat buffers."""
        self.params = params
        self.grads = grads

    def initial_params(self, random_state, initializer, activation):
        """Return a dict name -> initial value (empty for parameter-free layers)."""
        return {}

    @abstractmethod
    def forward(self, X, training=False, batch=None):
        """Output for batch X; in training mode keep what backward needs.

        ``batch`` (a :class:`Batch`) comes with training passes run by a
        network; a layer used on its own may get None.
        """

    @abstractmethod
    def backward(self, dY, need_input_grad=True):
        """Write parameter gradients from d loss / d output; return d loss / d X."""

    def _ones(self, n):
        return self._buffer("ones", (n,), fill=1)

    def _buffer(self, key, shape, dtype=None, fill=None):
        # Reused between batches of one size; only used in training mode.
        # ``dtype`` defaults to the layer's compute dtype.  ``fill``: the
        # value a new buffer starts with, for what no pass overwrites (a
        # zero frame, a column of 1s), written once per buffer.
        buf = self._buffers.get(key)
        if buf is None or buf.shape != shape:
            buf = self._buffers[key] = np.empty(shape, dtype=dtype or self.dtype)
            if fill is not None:
                buf.fill(fill)
        return buf


class Dense(Layer):
    """Fully connected layer with a fused activation: ``A = f(X @ W + b)``.

    Parameters
    ----------
    units : int
        Number of outputs.
    activation : {'identity', 'logistic', 'tanh', 'relu'}
        ``f``; the output layer uses 'identity' and lets the loss apply
        softmax or the logistic function.

    Shapes: X (n, n_in), W (n_in, units), b (units,), A (n, units).
    """

    def __init__(self, units, activation="identity"):
        self.units = int(units)
        self.activation = activation

    def build(self, input_shape, dtype):
        super().build(input_shape, dtype)
        (self.n_in,) = self.input_shape
        return (self.units,)

    def param_specs(self):
        return [("W", (self.n_in, self.units), True), ("b", (self.units,), False)]

    def multiply_adds(self):
        return self.n_in * self.units

    def initial_params(self, random_state, initializer, activation):
        W, b = initializer(random_state, self.n_in, self.units, (self.n_in, self.units), activation)
        return {"W": W, "b": b}

    def forward(self, X, training=False, batch=None):
        W, b = self.params["W"], self.params["b"]
        if training:
            A = self._matmul(X, W, out=self._buffer("A", (X.shape[0], self.units)))
        else:
            A = X @ W
        A += b
        ACTIVATIONS[self.activation](A)
        if training:
            self._X, self._A = X, A
        return A

    def backward(self, dA, need_input_grad=True):
        """dA: d loss / d A (n, units), overwritten.  Returns d loss / d X."""
        dZ = DERIVATIVES[self.activation](self._A, dA)
        self._matmul(self._X.T, dZ, out=self.grads["W"])
        # The column sums as a product with ones: ~15x faster than sum(axis=0).
        np.matmul(self._ones(dZ.shape[0]), dZ, out=self.grads["b"])
        if not need_input_grad:
            return None
        return self._matmul(dZ, self.params["W"].T, out=self._buffer("dX", self._X.shape))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(h):
    """SplitMix64's finaliser on a uint64 array: a well-spread 64-bit hash."""
    h = h + _GOLDEN
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def survival_threshold(rate):
    """The least 64-bit hash ``h`` whose uniform number ``(h >> 11) / 2**53``
    reaches ``rate``: ``ceil(rate * 2**53) << 11`` (exact in float64)."""
    return np.uint64(math.ceil(rate * 2**53)) << np.uint64(11)


def _mix64_in_place(h, work):
    """:func:`mix64` of a uint64 array, written over it (``work``: scratch of
    its shape), for callers that keep both buffers: Dropout's mask.

    Two forms of one function, on purpose: wrapping mix64 around this one
    (a copy and a fresh scratch array per call) made its calls on scalars
    and on fresh (n, 784) key arrays 10-60% slower.  The dropout tests
    compare this form's masks with mix64's."""
    h += _GOLDEN
    for shift, factor in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        np.right_shift(h, np.uint64(shift), out=work)
        h ^= work
        h *= np.uint64(factor)
    np.right_shift(h, np.uint64(31), out=work)
    h ^= work
    return h


def row_hashes(X, salts):
    """One uint64 per row of X, a function of the row's bytes only.

    Shapes: X (n, ...) contiguous, salts (row_bytes // itemsize,) odd uint64.
    A wrapping integer sum is exactly associative, so a row hashes the same
    whatever other rows share its batch.
    """
    flat = np.ascontiguousarray(X).reshape(X.shape[0], -1)
    words = flat.view(np.uint32 if flat.dtype.itemsize == 4 else np.uint64)
    with np.errstate(over="ignore"):
        return mix64((words.astype(np.uint64) * salts).sum(axis=1, dtype=np.uint64))


class Dropout(Layer):
    """Inverted dropout: in training, zero each input with probability ``rate``
    and scale the survivors by ``1 / (1 - rate)``; the identity at inference.

    A sample's mask is a hash of (the sample's network input, the unit, the
    training step, ``seed``), not a draw in batch order: identical samples
    get identical masks wherever they sit in a batch.  So a fit with integer
    sample weights still equals a fit on repeated rows, as without dropout.
    The step and the row keys come with each training pass's :class:`Batch`;
    without one (a layer used on its own) the layer hashes its own input at
    step 0.

    Shapes: X and output (n, *shape).
    """

    def __init__(self, rate, seed=0):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Dropout rate must be in [0, 1), got {rate!r}.")
        self.rate = float(rate)
        self.seed = int(seed)

    def build(self, input_shape, dtype):
        shape = super().build(input_shape, dtype)
        units = int(np.prod(shape))
        with np.errstate(over="ignore"):
            self._unit_salts = mix64(np.arange(units, dtype=np.uint64)
                                     + np.uint64(self.seed % 2**64))
        return shape

    def keep_mask(self, row_keys, step):
        """Boolean (n, units): True where a unit survives at training ``step``.

        A unit survives where the top 53 bits of its hash, as a uniform
        number ``u = (h >> 11) / 2**53`` in [0, 1), reach ``rate``.  That is
        ``h >= ceil(rate * 2**53) << 11`` (``rate * 2**53`` and the division
        are exact in float64), one integer comparison on the hash.
        """
        n, units = len(row_keys), self._unit_salts.size
        with np.errstate(over="ignore"):
            step_salt = mix64(np.uint64(self.seed % 2**64) ^ (np.uint64(step) * _GOLDEN))
            # The hashes in place, in two reused buffers: at (32, 3136) the
            # temporaries of mix64 cost more than its arithmetic.
            h = self._buffer("hash", (n, units), np.uint64)
            np.bitwise_xor(row_keys[:, None], step_salt, out=h)
            h += self._unit_salts[None, :]
            _mix64_in_place(h, self._buffer("hash_work", (n, units), np.uint64))
        return np.greater_equal(h, survival_threshold(self.rate),
                                out=self._buffer("keep", (n, units), bool))

    def forward(self, X, training=False, batch=None):
        if not training or self.rate == 0.0:
            return X
        batch = batch or Batch()
        keys = batch.row_keys
        if keys is None or len(keys) != X.shape[0]:
            keys = row_hashes(X, _odd_salts(X[0].size, self.seed))
        mask = self._buffer("mask", X.shape)
        keep = self.keep_mask(keys, batch.step).reshape(X.shape)
        np.multiply(keep, self.dtype.type(1.0 / (1.0 - self.rate)), out=mask)
        return np.multiply(X, mask, out=self._buffer("Y", X.shape))

    def backward(self, dY, need_input_grad=True):
        if self.rate == 0.0:
            return dY
        dY *= self._buffers["mask"]
        return dY


def odd_salts(n_words, seed):
    """``n_words`` odd uint64 salts for :func:`row_hashes`, from ``seed``."""
    return _odd_salts(n_words, seed)


def keyed_uniforms(row_keys, draw_key, shape):
    """Uniform numbers in [0, 1) of ``shape`` (axis 1 of length n), each a
    hash of (its sample's key, ``draw_key``, its place in the sample's draw).

    Shapes: row_keys (n,) uint64, shape (a, n, *rest).  A sample's numbers do
    not depend on the other samples of its batch nor on their order.
    """
    shape = tuple(int(v) for v in shape)
    n = len(row_keys)
    if len(shape) < 2 or shape[1] != n:
        raise ValueError(f"keyed draws need shape (a, {n}, ...), got {shape}.")
    per_sample = shape[:1] + shape[2:]
    with np.errstate(over="ignore"):
        places = mix64(np.arange(int(np.prod(per_sample)), dtype=np.uint64)
                       + mix64(np.uint64(draw_key % 2**64))).reshape(per_sample)
        places = np.expand_dims(places, 1)  # (a, 1, *rest)
        keys = row_keys.reshape((1, n) + (1,) * (len(shape) - 2))
        h = mix64(keys ^ places)
    return (h >> np.uint64(11)) * (1.0 / 2**53)


def _odd_salts(n_words, seed):
    with np.errstate(over="ignore"):
        return mix64(np.arange(n_words, dtype=np.uint64) ^ np.uint64((seed * 7919) % 2**64)) \
            | np.uint64(1)


class Activation(Layer):
    """An activation on its own: ``A = f(X)``, with no parameters.

    For a layer between the product and the activation, e.g.
    ``Dense(units, 'identity') -> BatchNorm() -> Activation('relu')`` in
    place of ``Dense(units, 'relu')``.

    Parameters
    ----------
    name : {'identity', 'logistic', 'tanh', 'relu'}
        ``f``, one of :data:`~skdigits.nn.activations.ACTIVATIONS`.

    Notes
    -----
    Shapes: X and A (n, *shape).  X belongs to the layer below (whose
    backward pass may still need it) or to the caller, so ``f`` is applied
    to a copy, in the layer's own buffer in training; the backward pass
    multiplies ``dA`` by ``f'`` in place.  'identity' passes X and dA
    through without a copy.
    """

    def __init__(self, name):
        if name not in ACTIVATIONS:
            raise ValueError(f"Unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}.")
        self.name = name

    def forward(self, X, training=False, batch=None):
        """X (n, *shape) -> A (n, *shape)."""
        if self.name == "identity":
            return X
        if training:
            A = self._buffer("A", X.shape)
            np.copyto(A, X)
        else:
            A = X.astype(self.dtype, copy=True)
        ACTIVATIONS[self.name](A)
        if training:
            self._A = A
        return A

    def backward(self, dA, need_input_grad=True):
        """dA: d loss / d A (n, *shape), overwritten.  Returns d loss / d X."""
        if not need_input_grad:
            return None
        if self.name == "identity":
            return dA
        return DERIVATIVES[self.name](self._A, dA)
