"""Cost of augmenting a 60,000-digit MNIST epoch, side by side with the peers.

For each batch size (64 and 200) and preset (``"affine"``, ``"elastic"``),
one full epoch of ``FrozenAugmentation.transform_batch`` over the MNIST
training digits (float32, 28 x 28) is timed, taking turns with:

* the per-image SciPy loop users write first (``ndimage.affine_transform``;
  for elastic, ``gaussian_filter`` of the two fields and ``map_coordinates``),
  timed on the first 2,000 digits and scaled to the epoch;
* one ``scipy.ndimage.map_coordinates(order=1)`` call on the stacked 3-D batch
  with the same sampling grid as ours (the alternative to our own gather);
* PyTorch, when installed: ``affine_grid`` + ``grid_sample`` on the same affine
  maps (for elastic: ``torch.rand`` fields smoothed by a separable
  ``conv2d`` Gaussian, added to the grid) -- what a PyTorch user batches;
* as the yardstick, one training epoch of ``NumpyMLPClassifier((128,))`` at
  the same batch size (what the augmentation would run beside).

The peers are timed on the first ``--peer-rows`` digits (default 6,000;
2,000 for the per-image loop) and their times scaled to the 60,000-digit
epoch; ours and the MLP run the full epoch.  Finally one MLP epoch is timed
while a second thread augments one epoch's batches, as a prefetch thread
would: how much longer the pair takes than training alone.

Everything runs with one BLAS thread (and one PyTorch thread): augmentation
is meant for the prefetch thread, next to the training on the other core
(the MLP's row shards then run one after the other, on one core).
The first batch also checks that the PyTorch output matches ours on the same
affine maps (printed as the largest difference).

Run from the repository root::

    python benchmarks/bench_augment.py [--data PATH] [--repeats 3] [--batch-sizes 64 200]
                                       [--peer-rows 6000] [--no-torch]
"""

import argparse
import datetime
import sys
import time
import warnings

import numpy as np
from threadpoolctl import threadpool_limits

from _common import REPO, load_average, load_mnist, machine

sys.path.insert(0, str(REPO))

from skdigits import NumpyMLPClassifier  # noqa: E402
from skdigits import augmentation as aug  # noqa: E402

SCIPY_SUBSET = 2000


# ----------------------------------------------------------------- contenders
def ours_epoch(settings, images, batch):
    rng = np.random.default_rng(0)
    out = np.empty((batch, *images.shape[1:]), dtype=images.dtype)
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        settings.transform_batch(chunk, rng, out=out[:len(chunk)])


def scipy_loop_epoch(settings, images, batch):
    """Per-image SciPy: affine_transform, or gaussian_filter + map_coordinates."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    h, w = images.shape[1:3]
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        d = settings.draw(len(chunk), (h, w), rng)
        maps = aug._inverse_maps(d["angle"], d["shear"], d["scale"], d["shift"], h, w)
        for i, image in enumerate(chunk):
            matrix, offset = maps[i, :, :2], maps[i, :, 2]
            if settings.elastic_alpha == 0:
                ndimage.affine_transform(image, matrix, offset, order=1,
                                         mode="grid-constant", cval=0.0)
                continue
            fields = [settings.elastic_alpha * ndimage.gaussian_filter(
                rng.uniform(-1, 1, (h, w)), settings.elastic_sigma) for _ in range(2)]
            rows, cols = np.mgrid[0:h, 0:w].astype(float)
            coords = np.stack([matrix[0, 0] * rows + matrix[0, 1] * cols + offset[0] + fields[0],
                               matrix[1, 0] * rows + matrix[1, 1] * cols + offset[1] + fields[1]])
            ndimage.map_coordinates(image, coords, order=1, mode="grid-constant", cval=0.0)


def map_coordinates_epoch(settings, images, batch):
    """Our draws and grid, then one 3-D map_coordinates call per batch."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    h, w = images.shape[1:3]
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        n = len(chunk)
        d = settings.draw(n, (h, w), rng)
        grid = aug.sampling_grid(n, (h, w), d["angle"], d["shear"], d["scale"], d["shift"],
                                 d["displacement"], np.float32)
        coords = np.empty((3, n, h, w), dtype=np.float32)
        coords[0] = np.arange(n, dtype=np.float32)[:, None, None]
        coords[1:] = grid
        ndimage.map_coordinates(chunk, coords, order=1, mode="grid-constant", cval=0.0,
                                output=np.float32)


def torch_theta(d, h, w):
    """Our inverse affine maps as PyTorch's normalised (x, y) theta, align_corners=True."""
    maps = aug._inverse_maps(d["angle"], d["shear"], d["scale"], d["shift"], h, w)
    # Pixel maps: row_in = m_rr row + m_rc col + o_r, col_in = m_cr row + m_cc col + o_c.
    (m_rr, m_rc, o_r), (m_cr, m_cc, o_c) = maps[:, 0].T, maps[:, 1].T
    sy, sx = (h - 1) / 2, (w - 1) / 2  # pixel = s * (normalised + 1)
    theta = np.empty((len(maps), 2, 3))
    theta[:, 0] = np.stack([m_cc, m_cr * sy / sx, (m_cc * sx + m_cr * sy + o_c) / sx - 1], 1)
    theta[:, 1] = np.stack([m_rc * sx / sy, m_rr, (m_rc * sx + m_rr * sy + o_r) / sy - 1], 1)
    return theta.astype(np.float32)


def torch_epoch(settings, images, batch, check=None):
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    n_all, h, w = images.shape
    kernel = None
    if settings.elastic_alpha > 0:
        radius = int(4 * settings.elastic_sigma + 0.5)
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        g = torch.exp(-0.5 * (x / settings.elastic_sigma) ** 2)
        kernel = g / g.sum()
        scale = torch.tensor([2 / (w - 1), 2 / (h - 1)]) * settings.elastic_alpha
    source = torch.from_numpy(images)
    for start in range(0, n_all, batch):
        chunk = source[start:start + batch].unsqueeze(1)
        n = len(chunk)
        d = settings.draw(n, (h, w), rng)
        theta = torch.from_numpy(torch_theta(d, h, w))
        grid = F.affine_grid(theta, (n, 1, h, w), align_corners=True)
        if kernel is not None:
            field = torch.rand((2 * n, 1, h, w), generator=gen) * 2 - 1
            field = F.pad(field, (radius,) * 4, mode="reflect")
            field = F.conv2d(field, kernel.view(1, 1, -1, 1))
            field = F.conv2d(field, kernel.view(1, 1, 1, -1))
            grid = grid + field.view(2, n, h, w).permute(1, 2, 3, 0) * scale
        out = F.grid_sample(chunk, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=True)
        if check is not None and start == 0:
            theirs = out[:, 0].numpy()
            ours = aug.warp_images(images[:n], **{**d, "displacement": None}, fill=0.0)
            check.append(float(np.abs(theirs - ours).max()))


def mlp_epoch(X, y, batch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        NumpyMLPClassifier((128,), max_iter=1, batch_size=batch, random_state=0).fit(X, y)


def mlp_epoch_beside_augmentation(settings, X, y, images, batch):
    """(MLP epoch seconds, augmentation epoch seconds) when one epoch of each
    runs at the same time, the augmentation on a second thread as a
    prefetch thread would (which then waits for the training)."""
    import threading

    seconds = {}

    def augment():
        seconds["augment"] = timed(lambda: ours_epoch(settings, images, batch))

    worker = threading.Thread(target=augment)
    start = time.perf_counter()
    worker.start()
    seconds["mlp"] = timed(lambda: mlp_epoch(X, y, batch))
    worker.join()
    seconds["both"] = time.perf_counter() - start
    return seconds["mlp"], seconds["augment"], seconds["both"]


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------- main
def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="npz with X_train (n, 28, 28 or 784), y_train")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 200])
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed turns per contender, taken in rotation (default 3)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--peer-rows", type=int, default=6000,
                        help="digits the peers are timed on, scaled to the epoch")
    args = parser.parse_args(argv)

    X, y, _, _, description = load_mnist(args.data)
    images = aug.square_images(X).astype(np.float32)
    use_torch = torch_available() and not args.no_torch
    peer_rows = min(args.peer_rows, len(images))
    loop_rows = min(SCIPY_SUBSET, peer_rows)
    scaled = {"map_coordinates 3-D": len(images) / peer_rows, "pytorch": len(images) / peer_rows,
              "scipy per image": len(images) / loop_rows}
    print(f"# bench_augment  {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# machine: {machine()}")
    print(f"# {load_average()} at the start")
    print(f"# data: {description}; {images.shape} float32; {args.repeats} turns per "
          f"contender, medians; peers on {peer_rows} digits (per-image loop on "
          f"{loop_rows}), scaled to the epoch; one BLAS thread"
          + ("; PyTorch with one thread" if use_torch else "; PyTorch not installed"))
    if use_torch:
        import torch

        torch.set_num_threads(1)

    rows = []
    overlap = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for batch in args.batch_sizes:
            mlp_turns = []
            beside = {name: [] for name in aug.PRESETS}
            overlap[batch] = beside
            for name in aug.PRESETS:
                settings = aug.make_augmentation(name, image_shape=images.shape[1:]).frozen()
                contenders = {
                    "skdigits": lambda: ours_epoch(settings, images, batch),
                    "map_coordinates 3-D": lambda: map_coordinates_epoch(
                        settings, images[:peer_rows], batch),
                    "scipy per image": lambda: scipy_loop_epoch(
                        settings, images[:loop_rows], batch),
                }
                if use_torch:
                    contenders["pytorch"] = lambda: torch_epoch(settings, images[:peer_rows],
                                                                batch)
                turns = {k: [] for k in contenders}
                ours_epoch(settings, images[:batch * 4], batch)  # warm-up
                for _ in range(args.repeats):
                    for key, fn in contenders.items():
                        turns[key].append(timed(fn) * scaled.get(key, 1.0))
                    if name == "affine":
                        mlp_turns.append(timed(lambda: mlp_epoch(X, y, batch)))
                    beside[name].append(mlp_epoch_beside_augmentation(settings, X, y, images,
                                                                      batch))
                rows.append((batch, name, {k: np.median(v) for k, v in turns.items()},
                             {k: (min(v), max(v)) for k, v in turns.items()}))
            rows.append((batch, "mlp", np.median(mlp_turns), (min(mlp_turns), max(mlp_turns))))
            if use_torch:
                check = []
                torch_epoch(aug.make_augmentation("affine").frozen(), images[:batch], batch, check)
                print(f"# batch {batch}: PyTorch vs ours on the same affine maps, "
                      f"largest difference {check[0]:.2e}")

    print(f"# {load_average()} at the end")
    print()
    print("| batch | preset | contender | s/epoch (median) | min-max | ms/batch "
          "| x skdigits | x MLP epoch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for batch in args.batch_sizes:
        mlp = next(r for r in rows if r[0] == batch and r[1] == "mlp")
        print(f"| {batch} | - | NumpyMLPClassifier((128,)) epoch | {mlp[2]:.3f} | "
              f"{mlp[3][0]:.3f}-{mlp[3][1]:.3f} | {mlp[2] / (len(images) / batch) * 1e3:.2f} "
              f"| - | 1.00 |")
        for b, name, medians, spans in rows:
            if b != batch or name == "mlp":
                continue
            ours = medians["skdigits"]
            for key, seconds in medians.items():
                low, high = spans[key]
                print(f"| {batch} | {name} | {key} | {seconds:.3f} | {low:.3f}-{high:.3f} | "
                      f"{seconds / (len(images) / batch) * 1e3:.3f} | {seconds / ours:.2f} | "
                      f"{seconds / mlp[2]:.2f} |")


    print()
    print("Beside training: one MLP epoch and one augmentation epoch at the same time, "
          "the augmentation on a second thread (medians of the turns)")
    print()
    print("| batch | preset | MLP s/epoch alone | MLP s/epoch beside | augmentation s/epoch "
          "beside | both done after s | x MLP alone |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for batch, beside in overlap.items():
        alone = next(r for r in rows if r[0] == batch and r[1] == "mlp")[2]
        for name, results in beside.items():
            mlp, augment, both = (np.median([r[k] for r in results]) for k in range(3))
            print(f"| {batch} | {name} | {alone:.3f} | {mlp:.3f} | {augment:.3f} | {both:.3f} "
                  f"| {both / alone:.2f} |")


if __name__ == "__main__":
    main()
