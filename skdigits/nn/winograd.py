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

Layouts.  Winograd-domain arrays are ``(4, 4, tw, n, th, c)``: tile position
(row, column), then the grid of ``th x tw`` tiles of ``n`` images (tile
column outermost), then channels; reshaped to ``(16, tw * n * th, c)`` they
are the stacked matrices of the 16 products.  Each 2-D transform is two 1-D
passes, over rows then columns, of a few vectorised additions, and the
layouts make these passes read and write long contiguous runs (on their
own, passes over every other pixel of channels-last images, runs of ``c``
values, went at a third of the speed of contiguous ones).  So the padded
input enters
*parity-split*, ``P[p, i, :, q, j] = padded[:, 2 j + q, 2 i + p]`` (shape
``(2, w // 2, n, 2, h // 2, c)``; :func:`split_image`, and
:func:`merge_image` for its gradient): the rows of tile position ``k`` are
``P[:, :, :, k % 2, k // 2:]`` and, one pass later, its columns a block
``[:, k % 2, k // 2:]``.  The output leaves as ``(2, 2, tw, n, th, f)``,
output pixel ``(2 ty + a, 2 tx + b)`` of image ``s`` at ``[a, b, tx, s, ty]``
(:func:`merge_tiles`, and :func:`split_tiles` for its gradient).  The
functions here allocate nothing: the caller passes every output.

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


# ------------------------------------------------------- image layouts
def _parity_runs(parity, offset, size):
    """Along one padded axis: (first image index, first split index, count)
    of the padded positions of ``parity`` that hold image positions
    ``0..size-1``, shifted by ``offset``."""
    first = offset + (parity - offset) % 2  # first padded position >= offset of that parity
    count = max(0, -(-(offset + size - first) // 2))
    return first - offset, first // 2, count


def _image_blocks(h, w, top, left):
    """For each of the 4 (column parity p, row parity q): the image's pixels
    of that parity, ``image[:, y0::2, x0::2]``, and where they sit in the
    parity-split array, ``P[p, i0:i0 + nx, :, q, j0:j0 + ny]``."""
    for p in (0, 1):
        x0, i0, nx = _parity_runs(p, left, w)
        for q in (0, 1):
            y0, j0, ny = _parity_runs(q, top, h)
            yield (slice(y0, None, 2), slice(x0, None, 2)), (p, slice(i0, i0 + nx), q,
                                                              slice(j0, j0 + ny))


def split_image(X, top, left, out, frame_is_zero=False):
    """Copy X (n, h, w, c) into the zero frame ``out`` (2, W // 2, n, 2, H // 2, c),
    parity-split, with X's pixel (y, x) at padded position (top + y, left + x).

    ``frame_is_zero``: ``out`` holds a previous split of the same shape,
    whose padding is still zero, so only the image region is written.
    """
    h, w = X.shape[1:3]
    for (rows, cols), (p, i, q, j) in _image_blocks(h, w, top, left):
        block = out[p, :, :, q]                  # (W // 2, n, H // 2, c)
        if not frame_is_zero:
            block[:i.start] = 0
            block[i.stop:] = 0
            block[i, :, :j.start] = 0
            block[i, :, j.stop:] = 0
        np.copyto(block[i, :, j], X[:, rows, cols].transpose(2, 0, 1, 3))
    return out


def merge_image(P, top, left, out):
    """The inverse crop of :func:`split_image`: out (n, h, w, c) = the image
    region of the parity-split P."""
    h, w = out.shape[1:3]
    for (rows, cols), (p, i, q, j) in _image_blocks(h, w, top, left):
        np.copyto(out[:, rows, cols], P[p, i, :, q, j].transpose(1, 2, 0, 3))
    return out


# ------------------------------------------------- positions of the tiles
def _split_rows(array, count):
    """The 4 row positions of ``count`` tiles of a parity-split array
    ``(..., 2, rows // 2, c)``: rows 2k + j are ``array[..., j % 2, j // 2 + k, :]``."""
    return [array[..., j % 2, j // 2:j // 2 + count, :] for j in range(4)]


def _split_cols(array, count):
    """The 4 column positions of ``count`` tiles of ``array`` (4, 2, cols // 2, ...):
    columns 2k + j are ``array[:, j % 2, j // 2 + k]``."""
    return [array[:, j % 2, j // 2:j // 2 + count] for j in range(4)]


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
def input_transform(P, th, tw, rows, out):
    """V = B^T d B for every 4x4 input tile.

    P (2, tw + 1, n, 2, th + 1, c): the zero-padded input, parity-split (see
    :func:`split_image`), whose tile (ty, tx) covers padded rows and columns
    2 ty..2 ty + 3, 2 tx..2 tx + 3; ``rows`` (4, 2, tw + 1, n, th, c) is
    scratch space; out (4, 4, tw, n, th, c).
    """
    _input_1d(_split_rows(P, th), rows)                    # B^T d
    _input_1d(_split_cols(rows, tw), _positions(out))      # (B^T d) B
    return out


def input_transform_adjoint(dV, th, tw, cols, out):
    """dd = B dV B^T for every tile, overlap-added onto the padded input.

    dV (4, 4, tw, n, th, c); ``cols`` (4, 2, tw + 1, n, th, c) is scratch
    space; out (2, tw + 1, n, 2, th + 1, c), parity-split, is overwritten.
    """
    _input_1d_adjoint(_positions(dV), _split_cols(cols, tw), axis=1)   # dV B^T
    _input_1d_adjoint(cols, _split_rows(out, th), axis=-2)             # B (dV B^T)
    return out


def output_transform(M, cols, out):
    """Y = A^T M A for every tile.

    M (4, 4, tw, n, th, f); ``cols`` (4, 2, tw, n, th, f) is scratch space;
    out (2, 2, tw, n, th, f): output (2 ty + a, 2 tx + b) of image s is
    ``out[a, b, tx, s, ty]`` (see :func:`merge_tiles`).
    """
    _output_1d(_positions(M), [cols[:, 0], cols[:, 1]])   # M A
    _output_1d(cols, out)                                 # A^T (M A)
    return out


def output_transform_adjoint(dY, rows, out):
    """dM = A dY A^T for every tile of dY (2, 2, tw, n, th, f), laid out as
    :func:`output_transform`'s result.

    ``rows`` (4, 2, tw, n, th, f) is scratch space; out (4, 4, tw, n, th, f).
    """
    _output_1d_adjoint(dY, rows)                                   # A dY
    _output_1d_adjoint([rows[:, 0], rows[:, 1]], _positions(out))  # (A dY) A^T
    return out


def merge_tiles(Y, out):
    """out (n, 2 th, 2 tw, f)[s, 2 ty + a, 2 tx + b] = Y[a, b, tx, s, ty]."""
    for a in (0, 1):
        for b in (0, 1):
            np.copyto(out[:, a::2, b::2], Y[a, b].transpose(1, 2, 0, 3))
    return out


def split_tiles(image, out):
    """The inverse of :func:`merge_tiles`: out[a, b, tx, s, ty] = image[s, 2 ty + a, 2 tx + b]."""
    for a in (0, 1):
        for b in (0, 1):
            np.copyto(out[a, b], image[:, a::2, b::2].transpose(2, 0, 1, 3))
    return out
