"""Prediction round trip of ``skdigits serve``: how fast the answer follows the pen.

Servers are started with the real command (``python -m skdigits serve -m
MODEL --port 0``), each in its own process, with the models a user would
serve: ImageTransformer followed by

* ours: ``NumpyMLPClassifier((128,))`` (what ``skdigits train`` fits),
* the peer: scikit-learn's ``MLPClassifier((128,))``, same shape,
* for information: ``NumpyCNNClassifier()`` with its default layers.

Each is fitted briefly on up to 5,000 MNIST digits (``../shared/data/mnist.npz``,
or scikit-learn's digits upscaled when it is absent): speed does not depend
on how well a model is trained.  The request is what the page sends while
you draw: the 280 x 280 pad as a PNG (an MNIST test digit, dark ink on
white).  The servers take turns, one request each per round in an order that
rotates every round, over one keep-alive connection each; the round trip is from sending the request to
having parsed the JSON answer.  The server's own share (decode, preprocess,
model) is what it reports in each answer.

With ``--browser`` (needs Debian's chromium and chromium-driver, and
selenium), headless Chromium also draws strokes on the page served for the
MLP and records the round trip the page itself measures for every answer:
the pad's PNG encoding, fetch, the server, and parsing the JSON.

Run from the repository root::

    python benchmarks/bench_serve.py [--requests 300] [--browser]
"""

import argparse
import datetime
import http.client
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from _common import DEFAULT_MNIST, REPO, load_average, machine

sys.path.insert(0, str(REPO))

from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402

from skdigits import (ImageTransformer, NumpyCNNClassifier, NumpyMLPClassifier,  # noqa: E402
                      save_model)


def training_digits(n_rows):
    """(uint8 pictures (n, 28, 28) ink bright, labels, test pictures, description)."""
    if DEFAULT_MNIST.is_file():
        with np.load(DEFAULT_MNIST) as mnist:
            return (mnist["X_train"][:n_rows], mnist["y_train"][:n_rows],
                    mnist["X_test"][:50], f"MNIST, first {n_rows} training digits")
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    pictures = np.stack([np.asarray(Image.fromarray((x.reshape(8, 8) * 16).astype(np.uint8))
                                    .resize((28, 28), Image.Resampling.BILINEAR)) for x in X])
    return pictures, y, pictures[-50:], "scikit-learn's digits upscaled (no MNIST file)"


def fitted_models(pictures, y):
    models = {
        "skdigits MLP(128)": NumpyMLPClassifier((128,), max_iter=5, random_state=0),
        "sklearn MLP(128)": MLPClassifier((128,), max_iter=5, random_state=0),
        "skdigits CNN (defaults)": NumpyCNNClassifier(max_iter=1, random_state=0),
    }
    fitted = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, classifier in models.items():
            rows = 1000 if "CNN" in name else len(y)  # the CNN's epoch is slow; 1,000 suffice
            fitted[name] = Pipeline([("images", ImageTransformer()), ("clf", classifier)]).fit(
                pictures[:rows], y[:rows])
            if isinstance(classifier, MLPClassifier):
                # Its Adam state (kept for partial_fit) is no type load_model trusts;
                # prediction does not use it.
                classifier._optimizer = None
    return fitted


def pad_pngs(pictures):
    """What the page sends: a 280 x 280 pad, dark ink on white, as PNG bytes."""
    out = []
    for picture in pictures:
        pad = Image.fromarray(255 - picture).resize((280, 280), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        pad.save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


class Server:
    """`skdigits serve` in a subprocess, and a keep-alive connection to it."""

    def __init__(self, model_path):
        # Its messages go to a file, never to a pipe nobody reads (which could fill up).
        self.log = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "skdigits", "serve", "-m", str(model_path), "--port", "0"],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        for _ in range(2):
            line = self.process.stdout.readline()
            match = re.search(r"Serving on (http://127\.0\.0\.1:(\d+)/)", line)
            if match:
                break
        else:
            self.process.wait(timeout=30)
            self.log.seek(0)
            raise RuntimeError(f"the server did not start: {self.log.read()}")
        self.url, self.port = match.group(1), int(match.group(2))
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def predict(self, data):
        """(round trip in ms, the answer)."""
        started = time.perf_counter()
        self.connection.request("POST", "/api/predict", body=data,
                                headers={"Content-Type": "image/png"})
        response = self.connection.getresponse()
        answer = json.loads(response.read())
        elapsed = 1e3 * (time.perf_counter() - started)
        if response.status != 200:
            raise RuntimeError(f"{self.url}: {response.status} {answer}")
        return elapsed, answer

    def stop(self):
        self.connection.close()
        self.process.terminate()
        self.process.wait(timeout=30)
        self.process.stdout.close()
        self.log.close()


def summary(times):
    times = np.asarray(times)
    return (f"{np.median(times):7.2f} {np.percentile(times, 90):7.2f} "
            f"{np.percentile(times, 99):7.2f} {times.max():7.2f}")


def measure_http(servers, payloads, n_requests, warmup=20):
    rounds = {name: [] for name in servers}
    parts = {name: {"decode": [], "preprocess": [], "predict": []} for name in servers}
    for i in range(warmup):
        for server in servers.values():
            server.predict(payloads[i % len(payloads)])
    names = list(servers)
    for i in range(n_requests):
        # Taking turns, one request each, in an order that rotates every round:
        # whoever follows the slow CNN would otherwise always pay for its wake.
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed, answer = servers[name].predict(payloads[i % len(payloads)])
            rounds[name].append(elapsed)
            for part, ms in answer["timing_ms"].items():
                parts[name][part].append(ms)
    return rounds, parts


def measure_browser(url, strokes=6):
    """Round trips the page measures while headless Chromium draws `strokes` zeros."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1100,900"):
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="bench-serve-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(url)
        WebDriverWait(driver, 60).until(
            lambda d: d.execute_script("return document.body.dataset.state === 'ready'"))
        # Record every answer's round trip as the page shows it.
        driver.execute_script("""
            window.benchTimes = [];
            new MutationObserver(() => window.benchTimes.push(
                Number(document.getElementById('answer').dataset.ms)))
              .observe(document.getElementById('answer'),
                       {attributes: true, attributeFilter: ['data-round-trips']});""")
        pad = driver.find_element("id", "pad")
        for stroke in range(strokes):
            driver.find_element("id", "clear").click()
            pointer = PointerInput(interaction.POINTER_MOUSE, "mouse")
            actions = ActionBuilder(driver, mouse=pointer, duration=10)
            points = [(round(55 * math.sin(2 * math.pi * t / 40)),
                       round(-90 * math.cos(2 * math.pi * t / 40))) for t in range(41)]
            actions.pointer_action.move_to(pad, *points[0]).pointer_down()
            for x, y in points[1:]:
                actions.pointer_action.move_to(pad, x, y)
            actions.pointer_action.pointer_up()
            actions.perform()
            WebDriverWait(driver, 60).until(
                lambda d: d.execute_script("return document.body.dataset.pending === '0'"))
        # The observer runs after the answer's synchronous update, so data-ms is its own.
        times = driver.execute_script("return window.benchTimes;")
        return [t for t in times if t == t]  # drop NaN (no answer yet)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="timed requests per server")
    parser.add_argument("--browser", action="store_true",
                        help="also measure in headless Chromium drawing on the page")
    args = parser.parse_args()

    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {machine()}")
    print(f"# {load_average()} at the start")
    pictures, y, test_pictures, description = training_digits(5000)
    print(f"# models fitted on {description}; requests: 280 x 280 PNG pads "
          f"({len(test_pictures)} test digits)")
    payloads = pad_pngs(test_pictures)
    folder = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    servers = {}
    try:
        for name, model in fitted_models(pictures, y).items():
            path = save_model(model, folder / f"{len(servers)}.skops")
            servers[name] = Server(path)
        rounds, parts = measure_http(servers, payloads, args.requests)
        print(f"\n{args.requests} requests per server, taking turns; milliseconds")
        print(f"{'server':<26}{'median':>7} {'p90':>7} {'p99':>7} {'max':>7}   "
              f"server: decode  preprocess  model (medians)")
        for name in servers:
            p = {part: np.median(v) for part, v in parts[name].items()}
            print(f"{name:<26}{summary(rounds[name])}   {p['decode']:14.2f}"
                  f"{p['preprocess']:12.2f}{p['predict']:7.2f}")
        ours, peer = (np.median(rounds[n]) for n in ("skdigits MLP(128)", "sklearn MLP(128)"))
        print(f"round trip, median: skdigits MLP / sklearn MLP = {ours / peer:.2f}x")
        if args.browser:
            times = measure_browser(servers["skdigits MLP(128)"].url)
            print(f"\nin headless Chromium drawing on the MLP's page: {len(times)} answers, "
                  f"ms median / p90 / p99 / max: {summary(times)}")
        print(f"# {load_average()} at the end")
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
