"""Convolutional layers: 2-D convolution, max pooling and flattening.

Images are channels-last: a batch ``X`` has shape ``(n, h, w, c)``.  A row of
pixels as the estimators receive it, ``(n, h * w * c)``, reshapes to that
layout without a copy.

:class:`Conv2D` lowers the convolution to one matrix product ("im2col"): every
output position gets a row holding the ``kh * kw * c_in`` input values under
the kernel, and ``cols @ W.reshape(kh * kw * c_in, filters)`` convolves the
whole batch at once.  The backward pass is two more products and a
scatter-add of the column gradients back onto the image ("col2im"), done with
one vectorised slice per kernel offset.  Buffers hold one batch at a time.

A 3x3 convolution of stride 1 can instead use Winograd's F(2x2, 3x3)
algorithm (:mod:`~skdigits.nn.winograd`): 16 products with inner dimension
``c_in`` in place of one with ``9 * c_in``, 2.25x fewer multiplications, and
a backward pass without col2im.  ``Conv2D(algorithm=...)`` chooses; the
direct im2col path stays the reference it is tested against.
:class:`ConvReLUPool2D` is a 3x3 convolution with its ReLU and a 2x2
max-pool in one layer, computing the outputs pooling window by pooling
window (Winograd's 2x2 output tiles are the windows; the direct path orders
its im2col rows by window); ``Conv2D`` then ``MaxPool2D`` stay the reference
path.

As in :mod:`~skdigits.nn.layers`, training mode reuses buffers between
batches of one size, and inference mode allocates its arrays per call and
keeps no state.  Every operation treats samples independently (the matrix
products just stack them as rows), so a sample's output does not depend on
the other samples in its batch.
"""

import copy

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view

from . import winograd
from .activations import ACTIVATIONS, DERIVATIVES
from .layers import Layer

#: Below this many bytes per pixel, im2col copies one slice per kernel offset;
#: above it, one strided copy of all windows.  With few channels the single
#: copy moves tiny inner runs and is several times slower; with many channels
#: it is the per-offset loop that is slower.
_SLICED_IM2COL_MAX_BYTES = 16

#: algorithm='auto' takes Winograd for 3x3 kernels of stride 1 with at least
#: this many input channels.  Its 16 products have inner dimension c_in, and
#: its transforms cost a fixed number of passes per channel: with few input
#: channels the products are too thin to repay them.  Forward and backward on
#: 32 images of 14x14 (28x28) here: 1.2-1.4x the direct time with 2-4 input
#: channels, 0.9-1.05x with 8, 0.85x with 16, 0.6-0.7x with 32.
_WINOGRAD_MIN_CHANNELS = 16

#: Values of the transformed input and the products (V and M) per chunk of
#: the Winograd stages: 2**20 (4 MiB in float32) makes chunks of 8 images for
#: MNIST's second layer (14x14x32 -> 64), whose 16 products then ran 1.7x
#: faster than on 32 images at once (their operands stay in the 1 MiB L2
#: cache), while small images get large chunks (few NumPy calls).
_WINOGRAD_CHUNK_VALUES = 2**20


def _winograd_chunk_images(tiles, c_in, filters):
    """Images per Winograd chunk: the largest power of two whose V and M fit
    in _WINOGRAD_CHUNK_VALUES, at least 1.  A power of two divides the
    256-row prediction chunks, so every image is computed in a chunk of the
    same size, wherever it sits in a batch."""
    per_image = 16 * tiles * (c_in + filters)
    return 1 << max(0, (_WINOGRAD_CHUNK_VALUES // per_image).bit_length() - 1)


ALGORITHMS = ("auto", "direct", "winograd")


def _pair(value, name):
    """``k`` -> ``(k, k)``; a pair of positive ints is checked and returned."""
    pair = (value, value) if np.ndim(value) == 0 else tuple(value)
    if len(pair) != 2 or any(int(v) != v or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}.")
    return int(pair[0]), int(pair[1])


def _same_padding(size, kernel, stride):
    """Output size and (before, after) padding of one axis for padding='same'.

    Follows TensorFlow/Keras: ``ceil(size / stride)`` outputs, and an odd
    total padding puts the extra row or column after the image.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, (total // 2, total - total // 2)


def _overlap(n_out, n_in, stride, offset):
    """Slices pairing outputs with the input each one reads at a kernel offset.

    Output ``o`` reads input ``o * stride + offset`` (``offset`` already
    shifted by the padding, so it may be negative).  Returns
    ``(out_slice, in_slice)`` over the outputs whose input is inside
    ``[0, n_in)``; both are empty when there are none.
    """
    lo = max(0, -(offset // stride))  # ceil(-offset / stride)
    hi = min(n_out, (n_in - 1 - offset) // stride + 1)
    if hi <= lo:
        return slice(0, 0), slice(0, 0)
    start = lo * stride + offset
    return slice(lo, hi), slice(start, start + (hi - lo - 1) * stride + 1, stride)


def _matrix(array, shape):
    """A view of ``array`` with ``shape``; raises instead of silently copying.

    Gradients are written through such views, so a copy would lose them.
    """
    view = array.reshape(shape)
    if not np.shares_memory(view, array):
        raise ValueError("Parameter arrays must be contiguous views.")
    return view


class Conv2D(Layer):
    """2-D convolution with a fused activation: ``A = f(conv(X, W) + b)``.

    Parameters
    ----------
    filters : int
        Number of output channels.
    kernel_size : int or (int, int), default=3
        Kernel height and width ``(kh, kw)``.
    stride : int or (int, int), default=1
        Step between kernel positions along height and width.
    padding : {'valid', 'same'}, default='valid'
        'valid' uses only positions where the kernel fits in the image and
        drops the rows/columns a stride cannot reach; 'same' zero-pads so
        that the output has ``ceil(h / stride)`` rows and ``ceil(w / stride)``
        columns (extra padding after the image, as in TensorFlow/Keras).
    activation : {'identity', 'logistic', 'tanh', 'relu'}, default='relu'
        ``f``, applied in place like :class:`~skdigits.nn.layers.Dense` does.
    algorithm : {'auto', 'direct', 'winograd'}, default='auto'
        How the convolution is computed.  'direct': one im2col matrix
        product.  'winograd': Winograd's F(2x2, 3x3) (3x3 kernels of stride
        1 only), 2.25x fewer multiplications; its sums are formed in another
        order, so results differ from 'direct' by rounding, by as much as the
        direct path's own rounding error (a few 1e-7 of the largest output
        in float32).  'auto': 'winograd' for 3x3 kernels of stride 1 with at
        least 16 input channels, where it is faster, 'direct' otherwise.  The
        choice is fixed by the layer's shape when it is built, never by the
        batch, so results are reproducible either way; it is the fitted
        attribute ``algorithm_``.

    Notes
    -----
    Shapes: X (n, h, w, c_in), W (kh, kw, c_in, filters), b (filters,),
    A (n, h_out, w_out, filters).  ``W.reshape(kh * kw * c_in, filters)`` is
    the matrix of the im2col product, so initialisers see
    ``fan_in = kh * kw * c_in`` and ``fan_out = filters``.

    Memory is per batch: training keeps the im2col matrix
    (n * h_out * w_out, kh * kw * c_in) and its gradient, reused between
    batches of one size; with Winograd, for ``th * tw`` tiles of 2x2 outputs,
    the transformed input (16, chunk * th * tw, c_in) and the products
    (16, chunk * th * tw, filters) of one chunk of images at a time.

    Examples
    --------
    >>> import numpy as np
    >>> from skdigits.nn import Conv2D
    >>> layer = Conv2D(16, padding="same")
    >>> layer.build((14, 14, 32), "float32")
    (14, 14, 16)
    >>> layer.algorithm_
    'winograd'
    >>> Conv2D(16, stride=2).build((14, 14, 32), "float32")
    (6, 6, 16)
    """

    #: Layers saved before the keyword existed load with this value, so they
    #: compute exactly as they did.
    algorithm = "direct"

    #: Its products (im2col, Winograd) are its own: a conv net is trained in
    #: row shards (which meet at batch norm's statistics, if it has any).
    products_via_matmul = False

    def __init__(self, filters, kernel_size=3, stride=1, padding="valid", activation="relu",
                 algorithm="auto"):
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}.")
        if activation not in ACTIVATIONS:
            raise ValueError(f"Unknown activation {activation!r}; "
                             f"expected one of {sorted(ACTIVATIONS)}.")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}.")
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = padding
        self.activation = activation
        if algorithm == "winograd" and not self._winograd_applies():
            raise ValueError(f"algorithm='winograd' needs a 3x3 kernel of stride 1, got "
                             f"kernel_size={self.kernel_size}, stride={self.stride}.")
        self.algorithm = algorithm

    def _winograd_applies(self):
        return self.kernel_size == (3, 3) and self.stride == (1, 1)

    def build(self, input_shape, dtype):
        super().build(input_shape, dtype)
        if len(self.input_shape) != 3:
            raise ValueError(f"Conv2D expects per-sample input (h, w, c), got {self.input_shape}.")
        h, w, self.c_in = self.input_shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        if self.padding == "same":
            self.h_out, self._pad_h = _same_padding(h, kh, sh)
            self.w_out, self._pad_w = _same_padding(w, kw, sw)
        else:
            self.h_out, self._pad_h = (h - kh) // sh + 1, (0, 0)
            self.w_out, self._pad_w = (w - kw) // sw + 1, (0, 0)
        if self.h_out < 1 or self.w_out < 1:
            raise ValueError(f"Kernel {self.kernel_size} does not fit a {h}x{w} input "
                             "with padding='valid'.")
        self.fan_in = kh * kw * self.c_in
        self.algorithm_ = self._choose_algorithm()
        # Winograd covers the output with 2x2 tiles (a last half tile when a
        # side is odd, computed and dropped).
        self._tiles = (winograd.tiles(self.h_out), winograd.tiles(self.w_out))
        return (self.h_out, self.w_out, self.filters)

    def _choose_algorithm(self):
        """'direct' or 'winograd', from the layer's configuration and input shape."""
        if self.algorithm == "auto":
            fast = self._winograd_applies() and self.c_in >= _WINOGRAD_MIN_CHANNELS
            return "winograd" if fast else "direct"
        return self.algorithm

    def param_specs(self):
        kh, kw = self.kernel_size
        return [("W", (kh, kw, self.c_in, self.filters), True), ("b", (self.filters,), False)]

    def multiply_adds(self):
        return self.h_out * self.w_out * self.fan_in * self.filters

    def initial_params(self, random_state, initializer, activation):
        W_shape = self.kernel_size + (self.c_in, self.filters)
        W, b = initializer(random_state, self.fan_in, self.filters, W_shape, activation)
        return {"W": W, "b": b}

    # ------------------------------------------------------------------ im2col
    def _im2col(self, X, training):
        """Rows of kernel windows and a 1: (n, h, w, c_in) -> (n h_out w_out, kh kw c_in + 1).

        Column ``(i * kw + j) * c_in + c`` of the row for output ``(y, x)``
        is ``X_padded[y * sh + i, x * sw + j, c]``: the order of
        ``W.reshape(fan_in, filters)``.  The last column is 1, so that the
        product with ``[W; b]`` adds the bias (no pass over the output) and
        the weight-gradient product yields the bias gradient too.  A 1x1
        convolution of stride 1 returns X itself as (n * h * w, c_in), no 1s.
        """
        n = X.shape[0]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        ho, wo, c = self.h_out, self.w_out, self.c_in
        if (kh, kw, sh, sw) == (1, 1, 1, 1) and X.dtype == self.dtype and X.flags.c_contiguous:
            return X.reshape(n * ho * wo, c)  # a 1x1 convolution is a plain product

        shape = (n * ho * wo, self.fan_in + 1)
        if c == 1:
            # Offset-major storage: each kernel offset's column is then a
            # contiguous image to copy rows into (3x faster for MNIST's first
            # layer), and the weight-gradient product reads it untransposed.
            new = self._array(training)
            cols = new("cols_T", shape[::-1]).T
        else:
            cols = self._buffer("cols", shape) if training else np.empty(shape, dtype=self.dtype)
        cols[:, -1] = 1
        cols6 = cols[:, :-1].reshape(n, ho, wo, kh, kw, c)
        if c * self.dtype.itemsize <= _SLICED_IM2COL_MAX_BYTES:
            # Per-offset slices; clipping the slices to the image does the
            # zero padding without building a padded copy of X.
            (top, _), (left, _) = self._pad_h, self._pad_w
            h, w = self.input_shape[:2]
            for i in range(kh):
                out_y, in_y = _overlap(ho, h, sh, i - top)
                for j in range(kw):
                    out_x, in_x = _overlap(wo, w, sw, j - left)
                    dest = cols6[:, :, :, i, j, :]
                    if (out_y.stop - out_y.start, out_x.stop - out_x.start) != (ho, wo):
                        dest[...] = 0  # some outputs read the padding here
                    dest[:, out_y, out_x, :] = X[:, in_y, in_x, :]
        else:
            Xp = self._pad(X, self._array(training))
            windows = sliding_window_view(Xp, (kh, kw), axis=(1, 2))[:, ::sh, ::sw][:, :ho, :wo]
            # (n, ho, wo, c, kh, kw) -> (n, ho, wo, kh, kw, c): one strided copy.
            np.copyto(cols6, windows.transpose(0, 1, 2, 4, 5, 3))
        return cols

    def _pad(self, X, new):
        """X zero-padded for 'same': (n, h, w, c) -> (n, h + pad_h, w + pad_w, c),
        in ``new``'s array (see :meth:`_array`)."""
        (top, bottom), (left, right) = self._pad_h, self._pad_w
        if top == bottom == left == right == 0:
            return X
        n, h, w, c = X.shape
        # Only the interior is ever written: the zero frame a new buffer
        # starts with lasts as long as the buffer.
        Xp = new("X_padded", (n, top + h + bottom, left + w + right, c), fill=0)
        Xp[:, top:top + h, left:left + w] = X
        return Xp

    # ------------------------------------------------------------ computation
    def forward(self, X, training=False, batch=None):
        """X (n, h, w, c_in) -> A (n, h_out, w_out, filters)."""
        if self.algorithm_ == "winograd":
            return self._forward_winograd(X, training)
        return self._forward_direct(X, training)

    def backward(self, dA, need_input_grad=True):
        """dA: d loss / d A (n, h_out, w_out, filters), overwritten.

        Writes d loss / d W and d loss / d b into ``self.grads`` and returns
        d loss / d X (n, h, w, c_in), or None when ``need_input_grad`` is
        false (the first layer: its input is the data).
        """
        if self.algorithm_ == "winograd":
            return self._backward_winograd(dA, need_input_grad)
        return self._backward_direct(dA, need_input_grad)

    def _array(self, training):
        """The allocator for a pass: ``new(key, shape, fill=None)`` returns the
        layer's reused buffer in training; in inference, an array of this
        call only (inference keeps no state, so threads may share the layer),
        reused within the call, e.g. by Winograd's chunks.  Either way a new
        array starts as ``fill`` when one is given (see :meth:`Layer._buffer`)."""
        if training:
            return self._buffer
        arrays = {}

        def new(key, shape, fill=None):
            array = arrays.get(key)
            if array is None or array.shape != shape:
                array = arrays[key] = np.empty(shape, dtype=self.dtype)
                if fill is not None:
                    array.fill(fill)
            return array
        return new

    # ------------------------------------------------------- direct (im2col)
    def _forward_direct(self, X, training):
        n, f = X.shape[0], self.filters
        new = self._array(training)
        W = _matrix(self.params["W"], (self.fan_in, f))
        cols = self._im2col(X, training)
        if cols.shape[1] > self.fan_in:  # a column of ones: the bias joins W
            W_b = new("W_b", (self.fan_in + 1, f))
            W_b[:-1], W_b[-1] = W, self.params["b"]
            A = np.matmul(cols, W_b, out=new("A", (cols.shape[0], f)))
        else:
            A = np.matmul(cols, W, out=new("A", (cols.shape[0], f)))
            A += self.params["b"]
        ACTIVATIONS[self.activation](A)
        A = A.reshape(n, self.h_out, self.w_out, f)
        if training:
            self._cols, self._A = cols, A
        return A

    def _backward_direct(self, dA, need_input_grad):
        f = self.filters
        dZ = DERIVATIVES[self.activation](self._A, dA)
        dZ = dZ.reshape(-1, f)  # copies only if dA was a strided view
        dW = _matrix(self.grads["W"], (self.fan_in, f))
        if self._cols.shape[1] > self.fan_in:
            # [dW; db] in one product: the column of ones sums dZ's rows.
            dW_b = np.matmul(self._cols.T, dZ, out=self._buffer("dW_b", (self.fan_in + 1, f)))
            dW[...], self.grads["b"][...] = dW_b[:-1], dW_b[-1]
        else:
            np.matmul(self._cols.T, dZ, out=dW)
            # A matrix-vector product with ones sums the rows ~10x faster than
            # np.sum(axis=0), which walks a tall, narrow matrix row by row.
            np.matmul(self._ones(dZ.shape[0]), dZ, out=self.grads["b"])
        if not need_input_grad:
            return None

        n = dA.shape[0]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        h, w, c = self.input_shape
        # Column gradients laid out offset-major, (kh * kw, n * h_out * w_out,
        # c_in): one stacked product, and each offset's block is then
        # contiguous, which makes the scatter-add below twice as fast as
        # strided slices of a (rows, kh * kw * c_in) matrix.
        W_t = self.params["W"].reshape(kh * kw, c, self.filters).transpose(0, 2, 1)
        dcols = np.matmul(dZ, W_t, out=self._buffer("dcols", (kh * kw, dZ.shape[0], c)))
        dcols = dcols.reshape(kh, kw, n, self.h_out, self.w_out, c)
        dX = self._buffer("dX", (n, h, w, c))
        dX[...] = 0  # pixels under no kernel position (or padding-only) get 0
        # col2im: each kernel offset adds its block onto the pixels it read;
        # the loop is over the kh * kw offsets, never over pixels.
        (top, _), (left, _) = self._pad_h, self._pad_w
        for i in range(kh):
            out_y, in_y = _overlap(self.h_out, h, sh, i - top)
            for j in range(kw):
                out_x, in_x = _overlap(self.w_out, w, sw, j - left)
                dX[:, in_y, in_x, :] += dcols[i, j][:, out_y, out_x, :]
        return dX

    # ------------------------------------------------------------- Winograd
    def _chunks(self, n):
        """Slices of the batch for the Winograd stages, which run chunk by
        chunk so that each chunk's arrays stay in cache.  Scratch buffers are
        keyed by the chunk's size, which a last, smaller chunk would otherwise
        reallocate twice per batch."""
        th, tw = self._tiles
        size = _winograd_chunk_images(th * tw, self.c_in, self.filters)
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

    def _forward_winograd(self, X, training):
        """Winograd F(2x2, 3x3); the stages are named as in :mod:`~skdigits.nn.winograd`."""
        n = X.shape[0]
        (th, tw), f = self._tiles, self.filters
        new = self._array(training)
        U = self._kernel_matrices(new)
        A = new("A", (n, 2 * th, 2 * tw, f))
        for rows in self._chunks(n):
            Y = self._output_tiles(X[rows], U, new)
            ACTIVATIONS[self.activation](Y)
            winograd.merge_tiles(Y, A[rows])
        if training:
            self._X, self._U, self._A = X, U, A
        return A[:, :self.h_out, :self.w_out]  # the whole buffer unless a side is odd

    def _kernel_matrices(self, new):
        """U = G g G^T of the kernel as the 16 matrices (16, c_in, filters) of the products."""
        U = winograd.kernel_transform(self.params["W"], new("U", (4, 4, self.c_in, self.filters)))
        return U.reshape(16, self.c_in, self.filters)

    def _output_tiles(self, X, U, new):
        """The pre-activations of the images X (one chunk) as 2x2 output tiles,
        Y = A^T [(U) * (B^T d B)] A + b, shape (2, 2, tw, nc, th, filters)."""
        nc, (th, tw), c, f = X.shape[0], self._tiles, self.c_in, self.filters
        V = self._transformed_input(X, new)
        M = np.matmul(V.reshape(16, -1, c), U, out=new(("M", nc), (16, tw * nc * th, f)))
        M = M.reshape(4, 4, tw, nc, th, f)
        # A^T e1 e1^T A is the 2x2 block of ones: the bias added at tile
        # position (1, 1) reaches all four outputs, in a quarter of a pass.
        M[1, 1] += self.params["b"]
        return winograd.output_transform(M, new(("cols", nc), (4, 2, tw, nc, th, f)),
                                         new(("Y", nc), (2, 2, tw, nc, th, f)))

    def _transformed_input(self, X, new):
        """V = B^T d B of every tile of the images X, into ``new``'s arrays."""
        nc, (th, tw), c = X.shape[0], self._tiles, self.c_in
        (top, _), (left, _) = self._pad_h, self._pad_w
        # Nothing but the split writes this buffer, and it writes only the
        # image: the zero frame it starts with lasts (16 small NumPy calls
        # fewer per chunk than zeroing it each time).
        P = new(("X_tiles", nc), (2, tw + 1, nc, 2, th + 1, c), fill=0)
        winograd.split_image(X, top, left, P, frame_is_zero=True)
        return winograd.input_transform(P, th, tw, new(("rows", nc), (4, 2, tw + 1, nc, th, c)),
                                        new(("V", nc), (4, 4, tw, nc, th, c)))

    def _backward_winograd(self, dA, need_input_grad):
        if dA.shape != self._A.shape:
            # An odd side: the outputs of the dropped half tile get gradient 0.
            dY = self._buffer("dY_tiles", self._A.shape)
            dY[:, self.h_out:] = 0
            dY[:, :, self.w_out:] = 0
            dY[:, :self.h_out, :self.w_out] = dA
            dA = dY

        def tile_gradient(rows, out):
            # d loss / d (pre-activation), then in the tiles' layout.
            dZ = DERIVATIVES[self.activation](self._A[rows], dA[rows])
            return winograd.split_tiles(dZ, out)
        return self._backward_from_tiles(dA.shape[0], tile_gradient, need_input_grad)

    def _backward_from_tiles(self, n, tile_gradient, need_input_grad):
        """The Winograd backward pass of a batch of ``n`` from the gradients of
        its pre-activations, which ``tile_gradient(rows, out)`` writes chunk by
        chunk into ``out`` (2, 2, tw, nc, th, filters), the tiles' layout, and
        returns.  Fills ``self.grads``; returns d loss / d X or None."""
        (th, tw), c, f = self._tiles, self.c_in, self.filters
        (top, _), (left, _) = self._pad_h, self._pad_w
        dU = self._buffer("dU", (16, c, f))
        dU_chunk = self._buffer("dU_chunk", (16, c, f))
        db_chunk = self._buffer("db_chunk", (f,))
        dX = self._buffer("dX", (n,) + self.input_shape) if need_input_grad else None
        chunks = self._chunks(n)
        # One vector of ones for the largest chunk; a smaller one takes a prefix.
        ones = self._ones((chunks[0].stop - chunks[0].start) * th * tw)
        for k, rows in enumerate(chunks):
            nc = rows.stop - rows.start
            dZ = tile_gradient(rows, self._buffer(("Y", nc), (2, 2, tw, nc, th, f)))
            dM = self._buffer(("M", nc), (16, tw * nc * th, f))
            winograd.output_transform_adjoint(dZ, self._buffer(("cols", nc), (4, 2, tw, nc, th, f)),
                                              dM.reshape(4, 4, tw, nc, th, f))
            # V again rather than kept from the forward pass: recomputing it
            # from the layer's input reads 4x less memory than keeping it.
            V = self._transformed_input(self._X[rows], self._buffer).reshape(16, -1, c)
            # dM[1, 1] of a tile is the sum of its 2x2 block of dZ (see forward).
            if k == 0:
                np.matmul(V.transpose(0, 2, 1), dM, out=dU)
                np.matmul(ones[:dM.shape[1]], dM[5], out=self.grads["b"])
            else:
                dU += np.matmul(V.transpose(0, 2, 1), dM, out=dU_chunk)
                self.grads["b"] += np.matmul(ones[:dM.shape[1]], dM[5], out=db_chunk)
            if need_input_grad:
                # V is not needed any more: its buffer takes dV.
                dV = np.matmul(dM, self._U.transpose(0, 2, 1), out=V)
                dP = winograd.input_transform_adjoint(
                    dV.reshape(4, 4, tw, nc, th, c), th, tw,
                    self._buffer(("rows", nc), (4, 2, tw + 1, nc, th, c)),
                    self._buffer(("dX_tiles", nc), (2, tw + 1, nc, 2, th + 1, c)))
                winograd.merge_image(dP, top, left, dX[rows])
        winograd.kernel_transform_adjoint(dU.reshape(4, 4, c, f), out=self.grads["W"])
        return dX


def _first_maximum_masks(pieces, Y, masks, taken):
    """The max-pool's routes: ``masks[k]`` is true where ``pieces[k]`` holds
    the first maximum ``Y`` of its window, in the order of ``pieces``.

    ``pieces`` are the window offsets' values, each shaped like ``Y`` (their
    elementwise maximum); ``masks`` (len(pieces), *Y.shape) and ``taken``
    (Y.shape) are boolean arrays to write.  Ties go to the earliest offset.
    """
    np.equal(pieces[0], Y, out=masks[0])
    done = masks[0]  # where an earlier offset already holds the maximum
    for k in range(1, len(pieces)):
        mask = masks[k]
        if k == len(pieces) - 1:
            # Every window holds its maximum: where no earlier offset
            # does, the last one does, without comparing.
            np.logical_not(done, out=mask)
            break
        np.equal(pieces[k], Y, out=mask)
        # For booleans, mask > done is "mask and not done": a tie with an
        # earlier offset loses.
        np.greater(mask, done, out=mask)
        done = np.logical_or(done, mask, out=taken)
    return masks


class MaxPool2D(Layer):
    """Max pooling over windows of each channel.

    Parameters
    ----------
    pool_size : int or (int, int), default=2
        Window height and width ``(ph, pw)``.
    stride : int or (int, int), optional
        Step between windows; defaults to ``pool_size`` (non-overlapping).

    Notes
    -----
    Shapes: X (n, h, w, c), output (n, (h - ph) // sh + 1, (w - pw) // sw + 1, c).
    Rows and columns that do not fill a last window are dropped, like
    'valid' pooling in PyTorch and Keras; they get zero gradient.  The
    gradient of each window goes to its maximum only, and on ties to the
    first one in row-major order.
    """

    def __init__(self, pool_size=2, stride=None):
        self.pool_size = _pair(pool_size, "pool_size")
        self.stride = self.pool_size if stride is None else _pair(stride, "stride")

    def build(self, input_shape, dtype):
        super().build(input_shape, dtype)
        if len(self.input_shape) != 3:
            raise ValueError(f"MaxPool2D expects per-sample input (h, w, c), "
                             f"got {self.input_shape}.")
        h, w, c = self.input_shape
        (ph, pw), (sh, sw) = self.pool_size, self.stride
        self.h_out, self.w_out = (h - ph) // sh + 1, (w - pw) // sw + 1
        if self.h_out < 1 or self.w_out < 1:
            raise ValueError(f"Pool {self.pool_size} does not fit a {h}x{w} input.")
        return (self.h_out, self.w_out, c)

    def _window_slices(self, X):
        """For each offset ``k = i * pw + j`` in a window, the (n, h_out, w_out, c)
        strided view of the elements at that offset in every window."""
        (ph, pw), (sh, sw) = self.pool_size, self.stride
        ho, wo = self.h_out, self.w_out
        return [X[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]
                for i in range(ph) for j in range(pw)]

    def forward(self, X, training=False, batch=None):
        """X (n, h, w, c) -> Y (n, h_out, w_out, c)."""
        shape = (X.shape[0], self.h_out, self.w_out, self.input_shape[2])
        Y = self._buffer("Y", shape) if training else np.empty(shape, dtype=self.dtype)
        # The argmax test compares X with Y, so both must have one dtype.
        X = X.astype(self.dtype, copy=False)
        # A loop over the few window offsets, each a vectorised maximum over
        # the whole batch: the windows themselves are never copied.
        slices = self._window_slices(X)
        np.copyto(Y, slices[0])
        for piece in slices[1:]:
            np.maximum(Y, piece, out=Y)
        if training:
            self._routes = self._route(slices, Y)
            self._x_shape = X.shape
        return Y

    def _route(self, slices, Y):
        """Boolean masks (ph * pw, n, h_out, w_out, c): ``masks[k]`` is true
        where offset ``k`` holds the first maximum of its window.

        Masks, not argmax indices, because the backward pass is then one
        product per offset; ``where=`` and fancy indexing are several times
        slower in NumPy.
        """
        masks = self._buffer("routes", (len(slices),) + Y.shape, bool)
        return _first_maximum_masks(slices, Y, masks, self._buffer("taken", Y.shape, bool))

    def backward(self, dY, need_input_grad=True):
        """dY (n, h_out, w_out, c) -> d loss / d X (n, h, w, c)."""
        if not need_input_grad:
            return None
        dX = self._buffer("dX", self._x_shape)
        (ph, pw), (sh, sw) = self.pool_size, self.stride
        pieces = self._window_slices(dX)
        if (sh, sw) == (ph, pw):
            # The windows tile dX: each piece is written once, and only the
            # dropped remainder rows/columns need zeros.
            dX[:, self.h_out * ph:] = 0
            dX[:, :, self.w_out * pw:] = 0
            for piece, mask in zip(pieces, self._routes):
                np.multiply(dY, mask, out=piece)
            return dX
        dX[...] = 0  # gaps between windows (stride > pool) get no gradient
        routed = self._buffer("routed", dY.shape)
        for piece, mask in zip(pieces, self._routes):
            np.multiply(dY, mask, out=routed)
            # Accumulate: windows overlap when stride < pool_size.
            piece += routed
        return dX


class ConvReLUPool2D(Conv2D):
    """``Conv2D(filters, 3, padding=padding, algorithm=algorithm)`` (ReLU),
    then ``MaxPool2D(2)``, in one layer.

    The convolution's outputs are computed grouped by pooling window, so the
    pool takes the maximum of four contiguous arrays, and the full-size
    activation is never laid out as an image, pooled, nor routed back into
    one for the backward pass.  ReLU is non-decreasing, so it commutes with
    the maximum (``max(relu(y)) == relu(max(y))``) and runs on the pooled
    quarter-size array.  The gradient goes, as in :class:`MaxPool2D`, to the
    first position in row-major order that holds the window's maximum, where
    that maximum is positive: the routes of the pre-activations pick the same
    position as those of the activations wherever the ReLU passes a
    gradient.

    Two ways to compute the convolution, chosen as :class:`Conv2D` chooses
    (``algorithm_``):

    - 'winograd' (16 input channels or more with 'auto'): Winograd's 2x2
      output tiles (:mod:`~skdigits.nn.winograd`) are exactly the pooling
      windows.  Output, input gradient and parameter gradients are
      bit-identical to ``Conv2D`` then ``MaxPool2D``.
    - 'direct' (fewer channels, e.g. an image's first layer): one im2col
      product whose rows are ordered by position in the window, then image,
      then window.  The output is bit-identical to the unfused layers; the
      gradients are the same sums taken over the rows in that order, equal
      to rounding.

    The tests compare both with the unfused layers and with loops.

    Parameters
    ----------
    filters : int
        Number of output channels.
    padding : {'same', 'valid'}, default='same'
        As for :class:`Conv2D`.  An odd convolution output side drops its
        last row or column, as :class:`MaxPool2D` does.
    algorithm : {'auto', 'direct', 'winograd'}, default='auto'
        As for :class:`Conv2D`.

    Notes
    -----
    Shapes: X (n, h, w, c_in), W (3, 3, c_in, filters), b (filters,), output
    (n, h_out // 2, w_out // 2, filters), with ``h_out, w_out`` the
    convolution's output sides (at least 2).  Parameters, their layout and
    their initialisation are those of the :class:`Conv2D` it replaces, so a
    network using it draws the same initial weights.  Training keeps the
    pooled output and one boolean route per window position (a sixteenth of
    the full-size activation's bytes in float32, instead of the activation
    and the pool's routes), and on the direct path the im2col matrix.

    Examples
    --------
    >>> import numpy as np
    >>> from skdigits.nn import Conv2D, ConvReLUPool2D, MaxPool2D
    >>> layer = ConvReLUPool2D(64)
    >>> layer.build((14, 14, 32), "float32"), layer.algorithm_
    ((7, 7, 64), 'winograd')
    >>> first = ConvReLUPool2D(32)
    >>> first.build((28, 28, 1), "float32"), first.algorithm_
    ((14, 14, 32), 'direct')
    >>> ConvReLUPool2D.fuses(Conv2D(64, padding="same"), MaxPool2D(2), (14, 14, 32))
    True
    >>> ConvReLUPool2D.fuses(Conv2D(64, 5, padding="same"), MaxPool2D(2), (14, 14, 32))
    False
    """

    #: Layers saved before the keyword existed were Winograd's only.
    algorithm = "winograd"

    def __init__(self, filters, padding="same", algorithm="auto"):
        super().__init__(filters, 3, 1, padding, "relu", algorithm)

    @classmethod
    def from_conv(cls, conv):
        """The fused layer with ``conv``'s filters, padding and algorithm."""
        return cls(conv.filters, conv.padding, conv.algorithm)

    @staticmethod
    def fuses(conv, pool, input_shape):
        """Whether ``ConvReLUPool2D.from_conv(conv)`` can replace ``conv``
        then ``pool`` on per-sample ``input_shape``: a ReLU 3x3
        :class:`Conv2D` of stride 1, and a 2x2 pool of stride 2 that fits
        its output."""
        if type(conv) is not Conv2D or type(pool) is not MaxPool2D:
            return False
        if conv.activation != "relu" or (conv.kernel_size, conv.stride) != ((3, 3), (1, 1)):
            return False
        if (pool.pool_size, pool.stride) != ((2, 2), (2, 2)):
            return False
        probe = copy.copy(conv)  # configuration only; build sets derived state
        try:
            h_out, w_out, _ = probe.build(input_shape, "float64")
        except ValueError:
            return False
        return h_out >= 2 and w_out >= 2

    def build(self, input_shape, dtype):
        # A layer loaded from a file never ran __init__: check what it computes.
        expected = {"kernel_size": (3, 3), "stride": (1, 1), "activation": "relu"}
        for name, value in expected.items():
            if getattr(self, name, None) != value:
                raise ValueError(f"ConvReLUPool2D needs {name}={value!r}, "
                                 f"got {getattr(self, name, None)!r}.")
        if self.padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {self.padding!r}.")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}.")
        h_out, w_out, filters = super().build(input_shape, dtype)
        if h_out < 2 or w_out < 2:
            raise ValueError(f"Pool (2, 2) does not fit the {h_out}x{w_out} output of the "
                             f"convolution of a {input_shape[0]}x{input_shape[1]} input.")
        return (h_out // 2, w_out // 2, filters)

    def forward(self, X, training=False, batch=None):
        """X (n, h, w, c_in) -> (n, h_out // 2, w_out // 2, filters)."""
        if self.algorithm_ == "winograd":
            return self._forward_winograd_pool(X, training)
        return self._forward_direct_pool(X, training)

    def backward(self, dY, need_input_grad=True):
        """dY: d loss / d output (n, h_out // 2, w_out // 2, filters), overwritten.

        Writes d loss / d W and d loss / d b into ``self.grads`` and returns
        d loss / d X (n, h, w, c_in), or None when ``need_input_grad`` is false.
        """
        if self.algorithm_ == "winograd":
            return self._backward_winograd_pool(dY, need_input_grad)
        return self._backward_direct_pool(dY, need_input_grad)

    def _pool_and_route(self, corners, peak, routes, training):
        """The window maxima of the four ``corners`` into ``peak``, their
        routes into ``routes`` (training), then the ReLU on ``peak``."""
        np.maximum(corners[0], corners[1], out=peak)
        np.maximum(peak, corners[2], out=peak)
        np.maximum(peak, corners[3], out=peak)
        if training:
            taken = self._buffer(("taken", peak.shape), peak.shape, bool)
            _first_maximum_masks(corners, peak, routes, taken)
        ACTIVATIONS["relu"](peak)
        return peak

    # ------------------------------------------------------- Winograd tiles
    def _forward_winograd_pool(self, X, training):
        n, f = X.shape[0], self.filters
        ph, pw = self.h_out // 2, self.w_out // 2
        new = self._array(training)
        U = self._kernel_matrices(new)
        pooled = new("pooled", (n, ph, pw, f))
        # Routes (4, pw, n, ph, f): the tiles' layout, images on axis 2.
        routes = self._buffer("routes", (4, pw, n, ph, f), bool) if training else None
        for rows in self._chunks(n):
            nc = rows.stop - rows.start
            Y = self._output_tiles(X[rows], U, new)
            # The windows' four positions, in MaxPool2D's row-major order;
            # the tiles of a dropped odd row or column are left out.
            corners = [Y[a, b, :pw, :, :ph] for a in (0, 1) for b in (0, 1)]
            peak = self._pool_and_route(corners, new(("peak", nc), (pw, nc, ph, f)),
                                        None if routes is None else routes[:, :, rows], training)
            np.copyto(pooled[rows], peak.transpose(1, 2, 0, 3))
        if training:
            self._X, self._U, self._pooled, self._routes = X, U, pooled, routes
        return pooled

    def _backward_winograd_pool(self, dY, need_input_grad):
        (th, tw), ph, pw = self._tiles, self.h_out // 2, self.w_out // 2

        def tile_gradient(rows, out):
            # ReLU's derivative on the pooled values, then each window's
            # gradient to its route.  Both factors are 0 or 1: the product
            # has the bits of the unfused pool's then ReLU's, signed zeros too.
            dZ = DERIVATIVES["relu"](self._pooled[rows], dY[rows]).transpose(2, 0, 1, 3)
            # The four window positions (a, b) at once, as the view (4, ...)
            # of the tiles: one NumPy call rather than one per position.
            corners = out.reshape((4,) + out.shape[2:])[:, :pw, :, :ph]
            np.multiply(dZ, self._routes[:, :, rows], out=corners)
            if (ph, pw) != (th, tw):  # tiles of a dropped row or column
                out[:, :, pw:] = 0
                out[:, :, :, :, ph:] = 0
            return out
        return self._backward_from_tiles(dY.shape[0], tile_gradient, need_input_grad)

    # ------------------------------------------------ direct, by window
    def _window_offsets(self):
        """For col2im: for each window position (a, b) and kernel offset
        (i, j), the pooled outputs whose input pixel is inside the image, and
        those pixels, as ``(a, b, i, j, (out_y, out_x), (in_y, in_x))``.

        Pooled output (y, x) at window position (a, b) is the convolution's
        output (2 y + a, 2 x + b), which reads input pixel
        (2 y + a + i - top, 2 x + b + j - left) at kernel offset (i, j).
        """
        (top, _), (left, _) = self._pad_h, self._pad_w
        h, w = self.input_shape[:2]
        ph, pw = self.h_out // 2, self.w_out // 2
        for a in (0, 1):
            for b in (0, 1):
                for i in range(3):
                    out_y, in_y = _overlap(ph, h, 2, a + i - top)
                    for j in range(3):
                        out_x, in_x = _overlap(pw, w, 2, b + j - left)
                        yield a, b, i, j, (out_y, out_x), (in_y, in_x)

    def _window_cols(self, X, new):
        """The im2col matrix (4 n ph pw, 9 c_in + 1), rows ordered (window
        position, image, window row, window column), columns as
        :meth:`Conv2D._im2col`'s, the last one 1s for the bias.

        One strided copy fills it: each NumPy call costs a GIL hand-off when
        two threads compute shards, and one per window position and kernel
        offset made 36 (see :func:`_pool_windows`).
        """
        n, c = X.shape[0], self.c_in
        ph, pw = self.h_out // 2, self.w_out // 2
        shape = (4 * n * ph * pw, self.fan_in + 1)
        # One input channel: offset-major storage, as Conv2D._im2col keeps it.
        # A new buffer starts as 1s; the copy below overwrites all but the
        # last column, the bias's, which so stays 1.
        cols = new("cols_T", shape[::-1], fill=1).T if c == 1 else new("cols", shape, fill=1)
        cols8 = cols[:, :-1].reshape(2, 2, n, ph, pw, 3, 3, c)
        np.copyto(cols8, _pool_windows(self._pad(X, new)))
        return cols

    def _forward_direct_pool(self, X, training):
        n, f = X.shape[0], self.filters
        ph, pw = self.h_out // 2, self.w_out // 2
        new = self._array(training)
        cols = self._window_cols(X, new)
        W_b = new("W_b", (self.fan_in + 1, f))
        W_b[:-1], W_b[-1] = _matrix(self.params["W"], (self.fan_in, f)), self.params["b"]
        Z = np.matmul(cols, W_b, out=new("Z", (cols.shape[0], f))).reshape(4, n, ph, pw, f)
        routes = self._buffer("routes", Z.shape, bool) if training else None
        pooled = self._pool_and_route(list(Z), new("pooled", (n, ph, pw, f)), routes, training)
        if training:
            self._X, self._cols, self._pooled, self._routes = X, cols, pooled, routes
        return pooled

    def _backward_direct_pool(self, dY, need_input_grad):
        f = self.filters
        dZ = DERIVATIVES["relu"](self._pooled, dY)
        # Each window's gradient to its route; Z's buffer is free for it.
        dZ4 = self._buffer("Z", (self._cols.shape[0], f)).reshape((4,) + dZ.shape)
        np.multiply(dZ, self._routes, out=dZ4)
        dZ_rows = dZ4.reshape(-1, f)
        # [dW; db] in one product: the column of ones sums dZ's rows.
        dW_b = np.matmul(self._cols.T, dZ_rows, out=self._buffer("dW_b", (self.fan_in + 1, f)))
        _matrix(self.grads["W"], (self.fan_in, f))[...] = dW_b[:-1]
        self.grads["b"][...] = dW_b[-1]
        if not need_input_grad:
            return None
        c = self.c_in
        n, ph, pw = dZ.shape[:3]
        # Column gradients offset-major, (9, rows, c_in), as Conv2D's col2im.
        W_t = self.params["W"].reshape(9, c, f).transpose(0, 2, 1)
        dcols = np.matmul(dZ_rows, W_t, out=self._buffer("dcols", (9, dZ_rows.shape[0], c)))
        dcols = dcols.reshape(3, 3, 2, 2, n, ph, pw, c)
        dX = self._buffer("dX", (n,) + self.input_shape)
        dX[...] = 0  # pixels no kept output reads get 0
        for a, b, i, j, (out_y, out_x), (in_y, in_x) in self._window_offsets():
            dX[:, in_y, in_x, :] += dcols[i, j, a, b][:, out_y, out_x, :]
        return dX


def _pool_windows(framed):
    """A read-only view of every pixel that each kernel offset (i, j) reads
    for each pooled output (y, x) at each window position (a, b):
    ``windows[a, b, s, y, x, i, j, c] = framed[s, 2 y + a + i, 2 x + b + j, c]``,
    shape (2, 2, n, ph, pw, 3, 3, c), from ``framed`` (n, rows, columns, c),
    the padded input (see :meth:`Conv2D._pad`), with ``ph = (rows - 2) // 2``
    (an odd side's last pooled row is dropped).  No copy: the strides step
    through ``framed``'s own."""
    n, rows, columns, c = framed.shape
    s_n, s_y, s_x, s_c = framed.strides
    shape = (2, 2, n, (rows - 2) // 2, (columns - 2) // 2, 3, 3, c)
    strides = (s_y, s_x, s_n, 2 * s_y, 2 * s_x, s_y, s_x, s_c)
    return as_strided(framed, shape, strides, writeable=False)


def fuse_conv_relu_pool(block, input_shape):
    """``block`` (a list of layers, the first fed by per-sample ``input_shape``)
    with a leading :class:`Conv2D` -> :class:`MaxPool2D` pair replaced by the
    :class:`ConvReLUPool2D` that computes its bits, where
    :meth:`ConvReLUPool2D.fuses` says it does; otherwise the block as it is."""
    if len(block) >= 2 and ConvReLUPool2D.fuses(block[0], block[1], input_shape):
        return [ConvReLUPool2D.from_conv(block[0])] + list(block[2:])
    return list(block)


class Flatten(Layer):
    """Flatten each sample: (n, h, w, c) -> (n, h * w * c), in C order.

    Channels-last makes this the same order as a row of pixels, so a Dense
    layer after it sees the layout a plain MLP would see.
    """

    def build(self, input_shape, dtype):
        super().build(input_shape, dtype)
        return (int(np.prod(self.input_shape)),)

    def forward(self, X, training=False, batch=None):
        """X (n, *input_shape) -> (n, prod(input_shape)); a view when X is contiguous."""
        return X.reshape(X.shape[0], -1)

    def backward(self, dY, need_input_grad=True):
        """dY (n, prod(input_shape)) -> (n, *input_shape)."""
        if not need_input_grad:
            return None
        return dY.reshape((dY.shape[0],) + self.input_shape)
