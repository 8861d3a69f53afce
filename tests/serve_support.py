"""Models, pictures and a running server for the ``skdigits serve`` tests."""

import io
import struct
import threading
import time
import warnings
import zlib
from contextlib import contextmanager

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from skdigits import ImageTransformer, NumpyMLPClassifier


def digit_pictures():
    """scikit-learn's 1,797 handwritten 8 x 8 digits as uint8 pictures, ink bright, and labels."""
    X, y = load_digits(return_X_y=True)
    return (X.reshape(-1, 8, 8) * 16).clip(0, 255).astype(np.uint8), y


def digit_model():
    """ImageTransformer -> MLP fitted on the load_digits pictures (a few seconds).

    ``early_stopping`` holds out a tenth, so the model stores a held-out
    accuracy for the page to show.
    """
    pictures, y = digit_pictures()
    model = Pipeline([("images", ImageTransformer()),
                      ("mlp", NumpyMLPClassifier((64,), max_iter=200, early_stopping=True,
                                                 random_state=0))])
    with threadpool_limits(1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(pictures, y)


def scan_png(picture, side=64):
    """A picture as a scanner would give it: dark ink on white, `side` px, PNG bytes."""
    page = Image.fromarray(255 - picture).resize((side, side), Image.Resampling.BILINEAR)
    return png_bytes(page)


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def bomb_png(side=6000):
    """A valid grey PNG of side x side black pixels: tens of kB on disk, `side`**2 pixels."""
    raw = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    body = b"".join(raw.compress(row) for _ in range(side)) + raw.flush()
    return _png(side, side, body)


def header_only_png(side):
    """A PNG whose header claims side x side pixels, with no pixel data at all."""
    return _png(side, side, b"")


def _png(width, height, idat):
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def truncated_png():
    """A real PNG cut off halfway through its pixel data."""
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64), dtype=np.uint8)
    good = png_bytes(Image.fromarray(noise))
    return good[: len(good) // 2]


@contextmanager
def running_server(predictor, **app_options):
    """Serve `predictor` on a free loopback port in a thread; yield its base URL."""
    from skdigits.serve import bind, make_server

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = make_server(predictor, sock, **app_options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
