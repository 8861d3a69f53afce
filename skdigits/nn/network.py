"""A feed-forward network over one flat parameter buffer.

All parameters live in ``Network.params`` (1-D), penalized weights first and
biases after, and all gradients in ``Network.grads`` with the same layout.
Layers hold views into both.  An optimizer therefore updates the whole
network in a handful of vectorised passes, L-BFGS sees the vector it wants,
and a snapshot of the model (early stopping, interrupted fits) is one copy.
"""

import copy
import math

import numpy as np

from .initializers import INITIALIZERS
from .layers import Batch, Dropout, _odd_salts, row_hashes
from .losses import LOG_OUTPUT_ACTIVATIONS, LOSSES, OUTPUT_ACTIVATIONS

#: Rows per forward pass at inference.  Every chunk is padded to exactly this
#: many rows so BLAS always runs the same kernel on the same shapes: a row's
#: prediction then does not depend on which rows share its call.
PREDICT_CHUNK = 256


class Network:
    """A stack of layers ending in logits, with an output function and loss.

    Parameters
    ----------
    layers : list of Layer
        Applied in order; the last one outputs logits (n, n_outputs).
    output : {'softmax', 'logistic'}
        Output function fused with its cross-entropy loss.
    dtype : {'float32', 'float64'}
        Dtype of parameters and of all computation.
    """

    def __init__(self, layers, output, dtype="float32"):
        self.layers = list(layers)
        self.output = output
        self.dtype = np.dtype(dtype)

    # ----------------------------------------------------------- construction
    def _build_layers(self, input_shape):
        """Build every layer for per-sample ``input_shape``; return the output shape."""
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = layer.build(shape, self.dtype)
        return shape

    def multiply_adds(self, input_shape):
        """Forward multiply-adds per sample for per-sample ``input_shape``."""
        self._build_layers(input_shape)
        return self.multiply_adds_per_sample

    @property
    def multiply_adds_per_sample(self):
        """Forward multiply-adds per sample of the built network."""
        return sum(layer.multiply_adds() for layer in self.layers)

    def build(self, input_shape, random_state, init="glorot", activation="relu", seed=None):
        """Allocate and initialise the parameters for per-sample ``input_shape``.

        ``random_state`` (a ``numpy.random.RandomState``) draws the initial
        weights layer by layer; ``seed`` seeds the Generator used by dropout.
        """
        self.output_shape = self._build_layers(input_shape)
        specs = [layer.param_specs() for layer in self.layers]

        # Penalized parameters first: the L2 term is then one slice.
        order = [(i, s) for penalized in (True, False)
                 for i, layer_specs in enumerate(specs)
                 for s in layer_specs if s[2] == penalized]
        sizes = [int(np.prod(spec[1])) for _, spec in order]
        self.n_params = sum(sizes)
        self.n_penalized = sum(size for (_, spec), size in zip(order, sizes) if spec[2])
        self.params = np.zeros(self.n_params, dtype=self.dtype)
        self.grads = np.zeros(self.n_params, dtype=self.dtype)

        self._layout, offset = [], 0
        for (i, (name, pshape, _)), size in zip(order, sizes):
            self._layout.append((i, name, pshape, offset, size))
            offset += size
        self.input_shape = tuple(input_shape)
        self._bind()

        initializer = INITIALIZERS[init]
        rng = np.random.default_rng(seed)
        for layer in self.layers:
            for name, value in layer.initial_params(random_state, initializer, activation).items():
                layer.params[name][...] = value
            if isinstance(layer, Dropout):
                layer.seed = int(rng.integers(2**62))
                layer.build(layer.input_shape, self.dtype)  # salts depend on the seed
        self.row_key_seed = int(rng.integers(2**62))
        self._prepare_row_keys()
        return self

    def _prepare_row_keys(self):
        """Dropout layers and the per-word salts of the input-row hash (derived state)."""
        self._dropouts = [layer for layer in self.layers if isinstance(layer, Dropout)]
        n_words = int(np.prod(self.input_shape))
        self._row_key_salts = _odd_salts(n_words, self.row_key_seed) if self._dropouts else None

    def _bind(self):
        """Give every layer its views into the flat parameter and gradient buffers."""
        views = [({}, {}) for _ in self.layers]
        for i, name, pshape, offset, size in self._layout:
            views[i][0][name] = self.params[offset:offset + size].reshape(pshape)
            views[i][1][name] = self.grads[offset:offset + size].reshape(pshape)
        for layer, (params, grads) in zip(self.layers, views):
            layer.bind(params, grads)

    def __getstate__(self):
        # Gradients are scratch space and the row-key cache is derived: not saved.
        return {k: v for k, v in self.__dict__.items()
                if k not in ("grads", "_dropouts", "_row_key_salts")}

    def __setstate__(self, state):
        # Views do not survive pickling (each would come back as its own
        # copy), so layers are re-built and re-bound to the restored buffers.
        self.__dict__.update(state)
        if "_layout" in state:
            # Sizes come from a file: check them against the parameter buffer
            # before dropout allocates a salt per unit they claim.
            _check_restored_sizes(self)
        if "params" in state:
            self.grads = np.zeros_like(self.params)
        if "_layout" in state:
            self.output_shape = self._build_layers(self.input_shape)
            self._bind()
            self._prepare_row_keys()

    def state_arrays(self):
        """The parameters, then every layer's other trained state (running
        statistics): what a snapshot of the model must copy."""
        return [self.params] + [a for layer in self.layers for a in layer.state_arrays()]

    def parameter_arrays(self, name):
        """Views of parameter ``name`` ('W' or 'b') for every layer that has one."""
        return [layer.params[name] for layer in self.layers if name in getattr(layer, "params", {})]

    # ------------------------------------------------------------ computation
    @property
    def rows_independent(self):
        """Whether a training pass treats each sample on its own."""
        return all(layer.rows_independent for layer in self.layers)

    @property
    def shardable(self):
        """Whether a training batch may be computed as two row shards whose
        losses and gradients add up to the batch's: every layer treats rows
        independently or adds up its statistics across the shards."""
        return all(layer.rows_independent or layer.sums_across_shards for layer in self.layers)

    @property
    def products_via_matmul(self):
        """Whether a training pass makes every matrix-matrix product with the
        layers' ``_matmul`` (true of Dense networks, not of conv nets)."""
        return all(layer.products_via_matmul for layer in self.layers)

    def use_products(self, matmul=None):
        """Make every layer's training passes compute their matrix products
        with ``matmul(a, b, out=)`` (NumPy's again when None)."""
        for layer in self.layers:
            if matmul is None:
                layer.__dict__.pop("_matmul", None)
            else:
                layer._matmul = matmul

    def forward(self, X, training=False, step=0, weights=None, shard=None):
        """Logits (n, n_outputs) for a dense batch X (n, *input_shape).

        In training, ``step`` (steps taken so far), the batch's sample
        ``weights`` and, for a row shard of a larger batch, its
        :class:`~skdigits.nn.layers.Shard` reach every layer in one
        :class:`~skdigits.nn.layers.Batch`.
        """
        batch = None
        if training:
            # Dropout masks are keyed by each sample's input, not its position.
            keys = row_hashes(X, self._row_key_salts) if self._dropouts else None
            batch = Batch(step=int(step), row_keys=keys, weights=weights, shard=shard)
        out = X
        for layer in self.layers:
            out = layer.forward(out, training=training, batch=batch)
        return out

    def backward(self, d_logits):
        """Fill ``self.grads`` (without the L2 term) from d loss / d logits."""
        delta = d_logits
        for i in range(len(self.layers) - 1, -1, -1):
            delta = self.layers[i].backward(delta, need_input_grad=i > 0)

    def loss_and_gradient(self, X, Y, weights=None, alpha=0.0, weight_sum=None, step=0):
        """Mean (weighted) loss with L2 penalty on batch (X, Y); fills ``self.grads``.

        The penalty is ``0.5 * alpha * ||W||^2 / weight_sum``, as in
        scikit-learn's MLP, so ``alpha`` means the same for any batch size.
        ``step`` is the number of training steps taken before this one.
        """
        if weight_sum is None:
            weight_sum = X.shape[0] if weights is None else float(np.sum(weights))
        loss = self.data_loss_and_gradient(X, Y, weights, weight_sum, step)
        return loss + self.add_penalty(alpha, weight_sum)

    def data_loss_and_gradient(self, X, Y, weights, weight_sum, step=0, shard=None):
        """The loss of (X, Y) summed over its rows and divided by ``weight_sum``,
        without the penalty; fills ``self.grads`` with its gradient.

        When :attr:`shardable`, being a sum over rows, it can be computed for
        row shards of a batch (each with its ``shard``) and added up.
        """
        logits = self.forward(X, training=True, step=step, weights=weights, shard=shard)
        d_logits = self.layers[-1]._buffer("d_logits", logits.shape)
        loss, d_logits = LOSSES[self.output](logits, Y, weights, d_logits, weight_sum)
        self.backward(d_logits)
        return loss

    def add_penalty(self, alpha, weight_sum):
        """Add the L2 term's gradient to ``self.grads`` and return its loss."""
        if not alpha:
            return 0.0
        self.add_penalty_gradient(alpha, weight_sum, slice(0, self.n_penalized))
        return self.penalty_loss(alpha, weight_sum)

    def penalty_loss(self, alpha, weight_sum):
        """``0.5 * alpha * ||W||^2 / weight_sum``."""
        W = self.params[:self.n_penalized]
        return 0.5 * alpha * float(np.dot(W, W)) / weight_sum

    def add_penalty_gradient(self, alpha, weight_sum, part):
        """``grads[part] += alpha / weight_sum * params[part]``, for ``part``
        within the penalized weights; elementwise, so any split gives the same bits."""
        scale = self.dtype.type(alpha / weight_sum)
        self.grads[part] += np.multiply(self.params[part], scale)

    def replica(self):
        """A network sharing this one's parameters, with its own gradient buffer
        and its own per-batch layer state, for computing a second row shard
        at the same time as this one."""
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        # copy.copy goes through Layer.__getstate__: configuration only, no
        # buffers or views, which build and _bind then make anew.
        twin.layers = [copy.copy(layer) for layer in self.layers]
        twin._build_layers(self.input_shape)
        twin.grads = np.zeros_like(self.params)
        twin._bind()
        twin._prepare_row_keys()
        return twin

    #: Rows per forward pass at inference (see :data:`PREDICT_CHUNK`).
    predict_chunk_rows = PREDICT_CHUNK

    def predict_logits(self, X, to_dense=None):
        """Logits for the rows of 2-D X (n, prod(input_shape)), chunk by chunk."""
        logits = np.empty((X.shape[0],) + self.output_shape, dtype=self.dtype)
        self.predict_chunks(X, logits, range(0, X.shape[0], PREDICT_CHUNK), to_dense)
        return logits

    def predict_chunks(self, X, logits, starts, to_dense=None):
        """Fill ``logits[start:start + PREDICT_CHUNK]`` for each of ``starts``.

        Each chunk of rows is cast to the compute dtype (after ``to_dense``,
        e.g. for a sparse matrix), padded with zero rows to PREDICT_CHUNK and
        reshaped to the network's input shape, so memory grows by one chunk,
        never by a copy of X, and every chunk runs the same products.
        """
        n = X.shape[0]
        chunk = np.zeros((PREDICT_CHUNK, X.shape[1]), dtype=self.dtype)
        images = chunk.reshape((PREDICT_CHUNK,) + self.input_shape)
        for start in starts:
            stop = min(start + PREDICT_CHUNK, n)
            part = X[start:stop] if to_dense is None else to_dense(X[start:stop])
            with np.errstate(over="ignore", invalid="ignore"):
                chunk[: stop - start] = part
            # NaN and inf in X, and values that overflow the cast to a narrower
            # dtype, are caught here while the chunk is in cache: a separate
            # check of X would be one more pass over all of it.
            if not np.isfinite(chunk[: stop - start]).all():
                raise _non_finite_input_error(part, start, self.dtype)
            if stop - start < PREDICT_CHUNK:
                chunk[stop - start:] = 0
            logits[start:stop] = self.forward(images)[: stop - start]

    def probabilities(self, logits):
        """Output probabilities (float64) from logits."""
        logits = np.asarray(logits, dtype=np.float64)
        return OUTPUT_ACTIVATIONS[self.output](logits, out=np.empty_like(logits))

    def log_probabilities(self, logits):
        """Log of :meth:`probabilities`, from the logits directly (never log(0))."""
        return LOG_OUTPUT_ACTIVATIONS[self.output](np.asarray(logits, dtype=np.float64))


#: Per-sample values a restored network may salt for dropout (its input and
#: each dropout layer's), per parameter, plus a floor for tiny networks.  The
#: parameter buffer pins every layer size but what pooling and strides
#: discard, which no array records; 64 allows three 2x2 poolings.
_RESTORED_SALTS_PER_PARAM = 64
_RESTORED_SALTS_FLOOR = 2**20


def _check_restored_sizes(network):
    """Raise ValueError unless a restored network's layout, input shape and
    layer sizes agree with its parameter buffer; allocates nothing."""
    params, dtype = network.params, network.dtype
    if not (isinstance(params, np.ndarray) and params.ndim == 1 and params.dtype == dtype
            and dtype in (np.float32, np.float64)):
        raise ValueError("saved network: params is not a 1-D float32/float64 array of its dtype")
    expected, offset = {}, 0
    for i, name, pshape, start, size in network._layout:
        if not (_positive_ints(pshape) and start == offset and size == math.prod(pshape)):
            raise ValueError(f"saved network: layout entry {(i, name, pshape, start, size)} "
                             "does not tile the parameter buffer")
        expected[i, name] = tuple(pshape)
        offset += size
    if offset != params.size or not 0 <= network.n_penalized <= params.size:
        raise ValueError(f"saved network: its layout covers {offset} parameters, its "
                         f"parameter buffer holds {params.size}")
    if not _positive_ints(network.input_shape):
        raise ValueError(f"saved network: bad input_shape {network.input_shape!r}")
    salted = math.prod(network.input_shape)
    shape = tuple(network.input_shape)
    for i, layer in enumerate(network.layers):
        if isinstance(layer, Dropout):  # its build allocates salts: sized below
            salted += math.prod(shape)
        else:
            shape = layer.build(shape, dtype)
        for name, pshape, _ in layer.param_specs():
            if expected.pop((i, name), None) != tuple(pshape):
                raise ValueError(f"saved network: layer {i} ({type(layer).__name__}) needs "
                                 f"{name} of shape {tuple(pshape)} for input_shape "
                                 f"{tuple(network.input_shape)}, its layout says otherwise")
    if expected or not network.layers or not network.layers[-1].param_specs():
        raise ValueError("saved network: its layers do not match its layout")
    if salted > _RESTORED_SALTS_FLOOR + _RESTORED_SALTS_PER_PARAM * params.size:
        raise ValueError(f"saved network: input_shape {tuple(network.input_shape)} and its "
                         f"layers claim {salted:,} values per sample for {params.size:,} "
                         "parameters")


def _positive_ints(shape):
    return isinstance(shape, tuple) and all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in shape)


def _non_finite_input_error(part, start, dtype):
    """ValueError naming the first row of ``part`` (rows ``start``.. of X)
    that holds NaN or inf, or a value beyond the range of ``dtype``."""
    part = np.asarray(part)
    limit = np.finfo(dtype).max
    problems = (("Input X contains NaN", np.isnan),
                ("Input X contains infinity", np.isinf),
                (f"X has values beyond the {dtype} range (|x| > {limit:.3g})",
                 lambda values: np.abs(values) > limit))
    for message, is_bad in problems:
        rows = np.flatnonzero(is_bad(part).any(axis=1))
        if len(rows):
            break
    advice = "; scale the data or compute in float64" if message.startswith("X has") else ""
    return ValueError(f"{message}, first in row {start + rows[0]}{advice}.")
