"""Winograd's minimal filtering F(2x2, 3x3) for 3x3 convolutions of stride 1.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2015).
A 2x2 block of outputs of a 3x3 cross-correlation reads a 4x4 tile ``d`` of
the input; with the kernel ``g`` (3x3) Winograd computes it as

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise, 4x4)

with the constant matrices :data:`B_T`, :data:`G` and :data:`A_T` below: 16
multiplications instead of 36 (2.25x fewer).  Summed over input channels, the
elementwise product at each of the 16 tile positions is one matrix product

    M[p] = V[p] @ U[p]     V[p]: (tiles, c_in),  U[p]: (c_in, filters)

so a convolution becomes 16 products with inner dimension ``c_in``, between
an input transform (``V = B^T d B`` per tile; neighbouring tiles overlap by
two rows and columns) and an output transform (``Y = A^T M A``).

Every stage is linear, so the backward pass runs each stage's transpose in
reverse order: ``dM = A dY A^T``, ``dU[p] = V[p]^T @ dM[p]``,
``dV[p] = dM[p] @ U[p]^T``, ``dg = G^T dU G`` and ``dd = B dV B^T`` added
back onto the (overlapping) input tiles.  These are the exact gradients of
what the forward computes.

Layouts.  Winograd-domain arrays are ``(4, 4, n, th, tw, c)``: tile position
(row, column), then the grid of ``th x tw`` tiles, then channels; reshaped to
``(16, n * th * tw, c)`` they are the stacked matrices of the 16 products.
Each 2-D transform is two 1-D passes, over rows then columns, of a few
vectorised additions.  The layouts are chosen so that these passes read and
write long contiguous runs: NumPy spends ~0.1 us per run, so passes over
every other pixel of channels-last images (runs of ``c`` values) were 2-3x
slower.  The input enters *column-split*, ``S[:, y, p, i] = image[:, y, 2 i + p]``
(shape ``(n, h, 2, w // 2, c)``; :func:`split_columns`, :func:`merge_columns`
for its gradient), so tile column ``k`` is the run ``S[:, :, k % 2, k // 2:]``;
the output leaves as ``(2, 2, n, th, tw, f)``, output pixel
``(2 ty + a, 2 tx + b)`` at ``[a, b, :, ty, tx]`` (:func:`merge_tiles`,
:func:`split_tiles` for its gradient).  The functions here allocate nothing:
the caller passes every output.

Rounding: the transformed values are sums and differences formed in another
order than a direct convolution's, so results differ from it by rounding: on
MNIST's second layer in float32, by at most a few 1e-7 of the largest output
or gradient, as the direct path differs from exact arithmetic.
"""

import numpy as np

#: Input transform: V = B_T @ d @ B_T.T for a 4x4 input tile d.
B_T = np.array([[1, 0, -1, 0],
                [0, 1, 1, 0],
                [0, -1, 1, 0],
                [0, 1, 0, -1]], dtype=float)

#: Kernel transform: U = G @ g @ G.T for a 3x3 kernel g.
G = np.array([[1, 0, 0],
              [0.5, 0.5, 0.5],
              [0.5, -0.5, 0.5],
              [0, 0, 1]])

#: Output transform: Y = A_T @ M @ A_T.T, a 2x2 block of outputs.
A_T = np.array([[1, 1, 1, 0],
                [0, 1, -1, -1]], dtype=float)


def tiles(n_out):
    """Number of 2-wide output tiles covering ``n_out`` outputs along one axis."""
    return -(-n_out // 2)


# ------------------------------------------------------------------ kernels
def kernel_transform(W, out):
    """U = G g G^T per channel pair: W (3, 3, c_in, f) -> out (4, 4, c_in, f)."""
    G_ = G.astype(W.dtype)
    Gg = np.matmul(G_, W.reshape(3, -1)).reshape(4, 3, -1)        # (G g)[a, j]
    np.matmul(G_, Gg, out=out.reshape(4, 4, -1))                  # (G g G^T)[a, b]
    return out


def kernel_transform_adjoint(dU, out):
    """dg = G^T dU G: dU (4, 4, c_in, f) -> out (3, 3, c_in, f)."""
    G_ = G.astype(dU.dtype)
    GdU = np.matmul(G_.T, dU.reshape(4, -1)).reshape(3, 4, -1)    # (G^T dU)[i, b]
    np.matmul(G_.T, GdU, out=out.reshape(3, 3, -1))               # (G^T dU G)[i, j]
    return out


# --------------------------------------------------- column-split images
def _column_runs(p, left, w):
    """For padded columns of parity ``p``: (first image column, first split
    index, count) of those holding image columns ``0..w-1`` shifted by ``left``."""
    first = left + (p - left) % 2       # first padded column >= left with parity p
    count = max(0, -(-(left + w - first) // 2))
    return first - left, first // 2, count


def split_columns(X, top, left, out):
    """Copy X (n, h, w, c) into the zero frame ``out`` (n, H, 2, W // 2, c),
    column-split, with X's pixel (y, x) at padded position (top + y, left + x)."""
    h, w = X.shape[1:3]
    out[:, :top] = 0
    out[:, top + h:] = 0
    for p in (0, 1):
        x0, i0, count = _column_runs(p, left, w)
        inside = out[:, top:top + h, p]
        inside[:, :, :i0] = 0
        inside[:, :, i0 + count:] = 0
        np.copyto(inside[:, :, i0:i0 + count], X[:, :, x0::2])
    return out


def merge_columns(S, top, left, out):
    """The inverse crop of :func:`split_columns`: out (n, h, w, c) = the image
    region of the column-split S."""
    h, w = out.shape[1:3]
    for p in (0, 1):
        x0, i0, count = _column_runs(p, left, w)
        np.copyto(out[:, :, x0::2], S[:, top:top + h, p, i0:i0 + count])
    return out


# ------------------------------------------------- positions of the tiles
def _rows(array, count):
    """The 4 row positions of ``count`` tiles along axis 1 (rows 2k + j, j = 0..3)."""
    return [array[:, j:j + 2 * count - 1:2] for j in range(4)]


def _split_cols(array, count):
    """The 4 column positions of ``count`` tiles of a column-split array
    (columns 2k + j are ``array[..., j % 2, j // 2 + k, :]``)."""
    return [array[..., j % 2, j // 2:j // 2 + count, :] for j in range(4)]


def _positions(array):
    """The 4 tile positions of a Winograd-domain array along its axis 1."""
    return [array[:, j] for j in range(4)]


# ---------------------------------------------------------- 1-D transforms
def _input_1d(x, out):
    """B^T along one axis: ``x`` the 4 input positions of each tile, ``out`` 4 arrays.

    out0 = x0 - x2,  out1 = x1 + x2,  out2 = x2 - x1,  out3 = x1 - x3.
    """
    np.subtract(x[0], x[2], out=out[0])
    np.add(x[1], x[2], out=out[1])
    np.subtract(x[2], x[1], out=out[2])
    np.subtract(x[1], x[3], out=out[3])


def _input_1d_adjoint(t, x, axis):
    """B along one axis, the transpose of :func:`_input_1d`, overlap-added.

    ``t`` holds the 4 tile positions; ``x`` the 4 (overlapping) views of the
    destination that :func:`_input_1d` reads, with tiles along ``axis``.
    Each tile adds (B t) = (t0, t1 - t2 + t3, t1 + t2 - t0, -t3) to its 4
    positions; positions 2 and 3 of a tile are positions 0 and 1 of the
    next, so the destination is overwritten, not accumulated into.
    """
    np.copyto(x[0], t[0])
    np.subtract(t[1], t[2], out=x[1])
    x[1] += t[3]
    # Positions 2 and 3 of the last tile belong to no later tile: start at 0.
    last = [slice(None)] * x[2].ndim
    last[axis] = slice(-1, None)
    x[2][tuple(last)] = 0
    x[3][tuple(last)] = 0
    x[2] += t[1]
    x[2] += t[2]
    x[2] -= t[0]
    x[3] -= t[3]


def _output_1d(m, y):
    """A^T along one axis: ``m`` the 4 tile positions, ``y`` the 2 outputs.

    y0 = m0 + m1 + m2,  y1 = m1 - m2 - m3.
    """
    np.add(m[0], m[1], out=y[0])
    y[0] += m[2]
    np.subtract(m[1], m[2], out=y[1])
    y[1] -= m[3]


def _output_1d_adjoint(y, out):
    """A along one axis, the transpose of :func:`_output_1d`:
    (out0, out1, out2, out3) = (y0, y0 + y1, y0 - y1, -y1)."""
    np.copyto(out[0], y[0])
    np.add(y[0], y[1], out=out[1])
    np.subtract(y[0], y[1], out=out[2])
    np.negative(y[1], out=out[3])


# ---------------------------------------------------------- 2-D transforms
def input_transform(S, th, tw, rows, out):
    """V = B^T d B for every 4x4 input tile.

    S (n, 2 th + 2, 2, tw + 1, c): the zero-padded input, column-split, whose
    tile (ty, tx) covers padded rows and columns 2 ty..2 ty + 3, 2 tx..2 tx + 3;
    ``rows`` (4, n, th, 2, tw + 1, c) is scratch space; out (4, 4, n, th, tw, c).
    """
    _input_1d(_rows(S, th), rows)                          # B^T d
    _input_1d(_split_cols(rows, tw), _positions(out))      # (B^T d) B
    return out


def input_transform_adjoint(dV, th, tw, cols, out):
    """dd = B dV B^T for every tile, overlap-added onto the padded input.

    dV (4, 4, n, th, tw, c); ``cols`` (4, n, th, 2, tw + 1, c) is scratch
    space; out (n, 2 th + 2, 2, tw + 1, c), column-split, is overwritten.
    """
    _input_1d_adjoint(_positions(dV), _split_cols(cols, tw), axis=-2)   # dV B^T
    _input_1d_adjoint(cols, _rows(out, th), axis=1)                     # B (dV B^T)
    return out


def output_transform(M, cols, out):
    """Y = A^T M A for every tile.

    M (4, 4, n, th, tw, f); ``cols`` (4, 2, n, th, tw, f) is scratch space;
    out (2, 2, n, th, tw, f): output (2 ty + a, 2 tx + b) is ``out[a, b, :, ty, tx]``
    (see :func:`merge_tiles`).
    """
    _output_1d(_positions(M), [cols[:, 0], cols[:, 1]])   # M A
    _output_1d(cols, out)                                 # A^T (M A)
    return out


def output_transform_adjoint(dY, rows, out):
    """dM = A dY A^T for every tile of dY (2, 2, n, th, tw, f), laid out as
    :func:`output_transform`'s result.

    ``rows`` (4, 2, n, th, tw, f) is scratch space; out (4, 4, n, th, tw, f).
    """
    _output_1d_adjoint(dY, rows)                                   # A dY
    _output_1d_adjoint([rows[:, 0], rows[:, 1]], _positions(out))  # (A dY) A^T
    return out


def merge_tiles(Y, out):
    """out (n, 2 th, 2 tw, f)[:, 2 ty + a, 2 tx + b] = Y[a, b, :, ty, tx]."""
    for a in (0, 1):
        for b in (0, 1):
            np.copyto(out[:, a::2, b::2], Y[a, b])
    return out


def split_tiles(image, out):
    """The inverse of :func:`merge_tiles`: out[a, b, :, ty, tx] = image[:, 2 ty + a, 2 tx + b]."""
    for a in (0, 1):
        for b in (0, 1):
            np.copyto(out[a, b], image[:, a::2, b::2])
    return out
