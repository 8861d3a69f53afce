"""``skdigits serve`` without a browser: decoding, the predictor, the HTTP app, the command.

The browser test (drawing with pointer events in headless Chromium) is
tests/test_serve_browser.py.
"""

import builtins
import http.client
import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the serve extra (starlette) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")

from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Perceptron
from sklearn.pipeline import Pipeline

from serve_support import (bomb_png, digit_model, digit_pictures, header_only_png, png_bytes,
                           running_server, scan_png, truncated_png)
from skdigits import ImageTransformer, NumpyCNNClassifier, NumpyMLPClassifier, save_model
from skdigits.cli import main
from skdigits.serve import allowed_hosts_for, is_loopback
from skdigits.serve.predictor import (DigitPredictor, ImageRejected, decode_image,
                                      describe_layers)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return digit_model()


@pytest.fixture(scope="module")
def predictor(model):
    return DigitPredictor(model, source="digits.skops")


@pytest.fixture(scope="module")
def server(predictor):
    with running_server(predictor, max_bytes=2**20, max_pixels=4096 * 4096) as url:
        yield url


def request(url, method="GET", path="/", body=None, headers=None):
    """(status, headers, body bytes) of one request to the test server."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def post_image(url, data, **headers):
    status, _, body = request(url, "POST", "/api/predict", data, headers)
    return status, json.loads(body)


# ------------------------------------------------------------ decoding uploads
def test_decode_image_reads_a_png():
    image = decode_image(png_bytes(Image.new("RGB", (30, 20), "white")))
    assert image.size == (30, 20)


@pytest.mark.parametrize("data, status, words", [
    (b"", 422, "empty"),
    (b"%PDF-1.7 not a picture", 422, "not an image"),
    (b"GIF89a", 422, "not an image"),
    ("truncated", 422, "damaged"),
    ("bomb", 413, "decompression bomb"),
    ("huge header", 413, "decompression bomb"),
])
def test_decode_image_refuses_bad_uploads_with_a_message(data, status, words):
    data = {"truncated": truncated_png, "bomb": bomb_png,
            "huge header": lambda: header_only_png(60_000)}.get(data, lambda: data)()
    with pytest.raises(ImageRejected, match=words) as caught:
        decode_image(data)
    assert caught.value.status == status


def test_decode_image_checks_pixels_before_decoding(monkeypatch):
    # The header's size is checked first: the pixels of a bomb are never decoded.
    def no_load(self):
        raise AssertionError("pixels were decoded")

    data = png_bytes(Image.new("L", (200, 200)))
    monkeypatch.setattr(Image.Image, "load", no_load)
    with pytest.raises(ImageRejected, match="200 x 200 = 40,000 pixels"):
        decode_image(data, max_pixels=39_999)


def test_decode_image_caps_bytes_before_decoding():
    data = png_bytes(Image.new("L", (10, 10)))
    with pytest.raises(ImageRejected, match="larger than the limit") as caught:
        decode_image(data, max_bytes=len(data) - 1)
    assert caught.value.status == 413
    assert decode_image(data, max_bytes=len(data)).size == (10, 10)


# ------------------------------------------------------------------ predictor
def test_prediction_is_the_models_own_on_the_preprocessed_picture(model, predictor):
    pictures, y = digit_pictures()
    data = scan_png(pictures[3])
    answer = predictor.predict_bytes(data)
    row = ImageTransformer().transform([Image.open(io.BytesIO(data))])
    expected = model[1:].predict_proba(row)[0]
    np.testing.assert_allclose(answer["probabilities"], expected, rtol=0, atol=1e-12)
    assert answer["label"] == str(y[3]) == predictor.classes[int(np.argmax(expected))]
    assert not answer["blank"]
    # The picture shown is the model's input, as 0-255 grey levels.
    shown = np.asarray(answer["input"])
    assert shown.shape == (28, 28)
    np.testing.assert_array_equal(shown, np.rint(row.reshape(28, 28) * 255))
    assert set(answer["timing_ms"]) == {"decode", "preprocess", "predict"}


def test_a_blank_picture_has_no_answer(predictor):
    answer = predictor.predict_bytes(png_bytes(Image.new("L", (280, 280), 255)))
    assert answer["blank"] and answer["label"] is None and answer["probabilities"] is None
    assert not np.asarray(answer["input"]).any()


def test_a_model_without_image_step_gets_mnist_centring_at_its_own_size(digits):
    X, y = digits
    bare = NumpyMLPClassifier((16,), max_iter=50, random_state=0)
    with pytest.warns(ConvergenceWarning):  # 50 epochs on purpose
        bare.fit(X, y)
    predictor = DigitPredictor(bare, source="bare.skops")
    assert predictor.input_shape == (8, 8) and not predictor.uses_model_preprocessing
    assert "MNIST way" in predictor.preprocessing_text()
    pictures, _ = digit_pictures()
    answer = predictor.predict_bytes(scan_png(pictures[0]))
    assert np.asarray(answer["input"]).shape == (8, 8)
    row = ImageTransformer(size=(8, 8)).transform(
        [Image.open(io.BytesIO(scan_png(pictures[0])))])
    np.testing.assert_allclose(answer["probabilities"], bare.predict_proba(row)[0], atol=1e-12)


def test_models_the_page_cannot_use_are_refused_at_start(digits):
    X, y = digits
    with pytest.raises(ValueError, match="Perceptron, which gives no probabilities"):
        DigitPredictor(Perceptron().fit(X, y), source="p.skops")
    with pytest.raises(ValueError, match="not fitted"):
        DigitPredictor(NumpyMLPClassifier())
    strip = NumpyMLPClassifier((4,), max_iter=5, random_state=0)
    with pytest.warns(ConvergenceWarning):
        strip.fit(X[:, :60], y)
    with pytest.raises(ValueError, match="60 features per digit, which is not a square"):
        DigitPredictor(strip, source="strip.skops")


def test_description_names_the_layers_and_the_stored_training_record(predictor):
    info = predictor.describe()
    assert info["steps"] == ["ImageTransformer", "NumpyMLPClassifier"]
    assert info["layers"] == ["784 inputs", "dense 64, relu", "dense 10, softmax"]
    assert info["parameters"] == 784 * 64 + 64 + 64 * 10 + 10
    training = info["training"]
    assert training["epochs"] == predictor.model[-1].n_iter_
    assert training["held_out_accuracy"] == pytest.approx(
        predictor.model[-1].validation_scores_[-1])
    assert info["classes"] == [str(c) for c in range(10)]
    assert json.loads(json.dumps(info)) == info  # plain values only


def test_cnn_model_files_work_and_are_described(tmp_path, no_convergence_warnings):
    pictures, y = digit_pictures()
    cnn = Pipeline([("images", ImageTransformer()),
                    ("cnn", NumpyCNNClassifier(conv_filters=(4,), hidden_layer_sizes=(16,),
                                               max_iter=2, random_state=0))])
    cnn.fit(pictures[:300], y[:300])
    path = save_model(cnn, tmp_path / "cnn.skops")
    from skdigits import load_model

    predictor = DigitPredictor(load_model(path), source="cnn.skops")
    assert predictor.describe()["layers"] == [
        "28 x 28 x 1 image", "conv 3x3, 4 filters, relu, max-pool 2", "dense 16, relu",
        "dense 10, softmax"]
    answer = predictor.predict_bytes(scan_png(pictures[5]))
    assert len(answer["probabilities"]) == 10
    assert sum(answer["probabilities"]) == pytest.approx(1)


def test_describe_layers_of_models_without_weights():
    assert describe_layers(Perceptron(), (28, 28)) == []


# ----------------------------------------------------------------- HTTP app
def test_page_and_assets_are_served_locally_with_a_strict_policy(server):
    status, headers, page = request(server, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    references = re.findall(rb'(?:src|href)="([^"]+)"', page)
    assert references, "the page should load its script and style"
    for ref in references:
        # Relative paths or an inline data: icon; nothing from another origin.
        assert ref.startswith((b"static/", b"data:")), ref
        if ref.startswith(b"static/"):
            status, headers, body = request(server, "GET", "/" + ref.decode())
            assert status == 200 and body and headers["x-content-type-options"] == "nosniff"
    for asset in (b"app.js", b"style.css"):
        _, _, body = request(server, "GET", "/static/" + asset.decode())
        assert not re.search(rb"https?://|//[a-z]", body.replace(b"http://127.0.0.1", b"")), asset


def test_api_model_describes_the_model_and_limits(server):
    status, _, body = request(server, "GET", "/api/model")
    info = json.loads(body)
    assert status == 200 and info["source"] == "digits.skops"
    assert info["limits"] == {"max_bytes": 2**20, "max_pixels": 4096 * 4096}


def test_api_predict_answers_a_png(server, predictor):
    pictures, y = digit_pictures()
    data = scan_png(pictures[11])
    status, answer = post_image(server, data, **{"Content-Type": "image/png"})
    assert status == 200
    assert answer["label"] == str(y[11])
    expected = predictor.predict_bytes(data)["probabilities"]
    np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-12)


@pytest.mark.parametrize("make, status, words", [
    (lambda: b"plain text, not a picture", 422, "not an image"),
    (truncated_png, 422, "damaged"),
    (lambda: header_only_png(5000), 413, "decompression bomb"),
    (lambda: b"\x89PNG" + b"\x00" * (2**20), 413, "larger than the limit of 1.0 MB"),
])
def test_api_predict_refuses_bad_uploads_with_one_line(server, make, status, words):
    got, answer = post_image(server, make())
    assert got == status
    assert words in answer["error"] and "Traceback" not in answer["error"]
    assert set(answer) == {"error"}


def test_api_predict_caps_a_body_streamed_without_length(server):
    # Chunked transfer: no Content-Length to refuse up front; the cap applies as it streams.
    parts = urlsplit(server)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    chunks = (b"\x00" * 65536 for _ in range(40))  # 2.5 MB in 64 kB pieces
    connection.request("POST", "/api/predict", body=chunks, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413
    assert "larger than the limit" in json.loads(response.read())["error"]
    connection.close()


def test_only_the_four_routes_exist(server):
    assert request(server, "GET", "/api/predict")[0] == 405
    assert request(server, "POST", "/api/model")[0] == 405
    assert request(server, "GET", "/static/../predictor.py")[0] == 404
    assert request(server, "GET", "/static/index.html")[0] == 404


def test_other_host_names_are_refused_on_loopback(server):
    # A page elsewhere reaching 127.0.0.1 by DNS rebinding sends its own host name.
    assert request(server, "GET", "/api/model", headers={"Host": "attacker.example"})[0] == 400
    assert request(server, "GET", "/api/model", headers={"Host": "localhost:1"})[0] == 200


def test_nothing_a_visitor_sends_is_written_to_disk(server, monkeypatch):
    # Every way Python opens a file for writing is watched while uploads are
    # answered, including a 900 kB body (a multipart form would spool it to
    # a temporary file).
    opened = []
    real_open, real_os_open = builtins.open, os.open

    def watch_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            opened.append(file)
        return real_open(file, mode, *args, **kwargs)

    def watch_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            opened.append(path)
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", watch_open)
    monkeypatch.setattr(os, "open", watch_os_open)
    monkeypatch.setattr(tempfile, "mkstemp", lambda *a, **k: opened.append("mkstemp"))
    pictures, _ = digit_pictures()
    noise = np.random.default_rng(1).integers(0, 256, size=(540, 540, 3), dtype=np.uint8)
    big = png_bytes(Image.fromarray(noise))
    assert 800_000 < len(big) < 2**20
    for data in (scan_png(pictures[0]), big, b"not an image"):
        post_image(server, data)
    assert opened == []


# ------------------------------------------------------------------ command
def test_loopback_and_allowed_hosts():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert allowed_hosts_for("127.0.0.1") == ["127.0.0.1", "localhost"]
    assert allowed_hosts_for("0.0.0.0") is None


def test_connections_send_without_waiting_for_acks():
    # asyncio sets TCP_NODELAY only on sockets whose proto says TCP; without
    # it the JSON body waited for the browser's delayed ACK (+40 ms per answer).
    import asyncio
    import socket

    from skdigits.serve import bind

    listener = bind("127.0.0.1", 0)

    async def accepted_nodelay():
        got = asyncio.get_running_loop().create_future()

        async def handler(reader, writer):
            got.set_result(writer.get_extra_info("socket").getsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handler, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname())
        try:
            return await asyncio.wait_for(got, 30)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(accepted_nodelay()) != 0


def test_serve_is_listed_and_its_help_works(capsys):
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--port" in out and "127.0.0.1" in out and "skdigits[serve]" in out


def test_parsing_serve_does_not_import_the_web_libraries():
    code = ("import sys, skdigits.cli as c; c.build_parser().parse_args(['serve', '-m', 'x']); "
            "print(sorted(m for m in ('starlette', 'uvicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert out.strip() == "[]"


def test_missing_extra_gives_the_install_command(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now fails
    assert main(["serve", "-m", str(tmp_path / "model.skops")]) == 1
    err = capsys.readouterr().err
    assert 'pip install "skdigits[serve]"' in err and "uvicorn" in err


def test_bad_model_files_are_refused_before_serving(tmp_path, capsys):
    assert main(["serve", "-m", str(tmp_path / "absent.skops")]) == 1
    assert "no such model file" in capsys.readouterr().err
    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(pickle.dumps({"not": "a model"}))
    assert main(["serve", "-m", str(pickled)]) == 1
    assert "pickle" in capsys.readouterr().err


def test_bad_port_is_a_usage_error(capsys, tmp_path):
    assert main(["serve", "-m", "m.skops", "--port", "70000"]) == 2
    assert "[0, 65535]" in capsys.readouterr().err


def test_port_in_use_is_a_usage_error(model, tmp_path, capsys):
    path = save_model(model, tmp_path / "model.skops")
    from skdigits.serve import bind

    taken = bind("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        assert main(["serve", "-m", str(path), "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1 port {port}" in capsys.readouterr().err
    finally:
        taken.close()


def _default_ctrl_c():
    """In the child: SIGINT's default action, so that Python raises
    KeyboardInterrupt on it even when this test run ignores SIGINT (as a
    shell does for the commands it starts in the background)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_the_command_serves_until_ctrl_c(model, tmp_path):
    path = save_model(model, tmp_path / "model.skops")
    with subprocess.Popen(
            [sys.executable, "-m", "skdigits", "serve", "-m", str(path), "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            preexec_fn=_default_ctrl_c if os.name == "posix" else None) as process:
        try:
            lines = [process.stdout.readline() for _ in range(2)]
            assert lines[0].startswith(f"Model: {path} (ImageTransformer -> NumpyMLPClassifier)")
            url = re.match(r"Serving on (http://127\.0\.0\.1:\d+/)", lines[1]).group(1)
            status, _, body = request(url, "GET", "/api/model")
            assert status == 200 and json.loads(body)["source"] == str(path)
            status, answer = post_image(url, scan_png(digit_pictures()[0][0]))
            assert status == 200 and answer["label"] == "0"
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=30) == 130  # the command's code for Ctrl-C
            err = process.stderr.read()
            assert "Stopped (Ctrl-C)." in err and "Traceback" not in err
        finally:
            if process.poll() is None:
                process.kill()
