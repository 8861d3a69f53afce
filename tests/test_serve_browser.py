"""``skdigits serve`` in a real browser: headless Chromium driven by Selenium.

The server runs on a free loopback port; the browser draws digits with
pointer events (mouse, touch and pen), reads back the predicted class and the
probabilities, and uploads a real PNG digit, a damaged file, a decompression
bomb and a file over the byte limit.

Chromium and its driver come from Debian's ``chromium`` and
``chromium-driver`` packages (``.ci/run`` installs them).  Without them the
tests skip with the reason, except under CI (``CI=true``), where they fail:
CI must run them.  Selenium is given the driver's path, so it never starts
Selenium Manager or downloads a browser.

Set ``SKDIGITS_SCREENSHOT=docs/serve.png`` to (re)write the README's screenshot.
"""

import base64
import io
import json
import math
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from serve_support import (bomb_png, digit_model, digit_pictures, running_server, scan_png,
                           truncated_png)

pytest.importorskip("starlette", reason="the serve extra (starlette) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1100,940",
                  "--force-device-scale-factor=1")
MAX_BYTES = 256 * 1024   # small limits for the test server, so the test files stay small
MAX_PIXELS = 2000 * 2000


def _missing(reason):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the browser tests (.ci/run installs chromium "
                    "and chromium-driver)")
    pytest.skip(reason)


def _find(names):
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed (pip install -e '.[test]')")
    chromium = _find(["chromium", "chromium-browser"])
    driver_path = _find(["chromedriver"])
    if chromium is None or driver_path is None:
        _missing("headless Chromium is not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    # The driver's path is given, so Selenium Manager (which would look for
    # or download a browser) is never run.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def model():
    return digit_model()


@pytest.fixture(scope="module")
def predictor(model):
    from skdigits.serve.predictor import DigitPredictor

    return DigitPredictor(model, source="digits.skops")


@pytest.fixture(scope="module")
def server(predictor):
    with running_server(predictor, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS) as url:
        yield url


@pytest.fixture
def page(browser, server):
    """The page, freshly loaded and ready."""
    browser.get(server + "/")
    wait_for(browser, "document.body.dataset.state === 'ready'")
    return browser


def wait_for(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: d.execute_script(f"return Boolean({condition});"))


def wait_for_answer(driver, after_round_trips=0):
    wait_for(driver, "document.body.dataset.pending === '0' && "
                     f"Number(document.getElementById('answer').dataset.roundTrips) > "
                     f"{after_round_trips}")


def round_trips(driver):
    return int(driver.find_element("id", "answer").get_attribute("data-round-trips"))


def shown_probabilities(driver):
    """{class: probability} as the page holds them, and the large top label."""
    bars = driver.find_elements("css selector", "#bars li")
    probabilities = {li.get_attribute("data-label"): li.get_attribute("data-p") for li in bars}
    return probabilities, driver.find_element("id", "top-label").text


def ellipse(n=24, rx=55, ry=90, turns=1.0):
    """Points of a '0' around the pad's centre (offsets in CSS pixels)."""
    return [(round(rx * math.sin(2 * math.pi * turns * t / n)),
             round(-ry * math.cos(2 * math.pi * turns * t / n))) for t in range(n + 1)]


def draw(driver, points, kind="mouse"):
    """One stroke through `points` with a pointer of `kind` (mouse, touch or pen)."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    pad = driver.find_element("id", "pad")
    pointer = PointerInput(getattr(interaction, f"POINTER_{kind.upper()}"), f"{kind}-1")
    actions = ActionBuilder(driver, mouse=pointer, duration=15)
    actions.pointer_action.move_to(pad, *points[0])
    actions.pointer_action.pointer_down(pressure=0.6 if kind == "pen" else None)
    for x, y in points[1:]:
        actions.pointer_action.move_to(pad, x, y, pressure=0.6 if kind == "pen" else None)
    actions.pointer_action.pointer_up()
    actions.perform()


def pad_png(driver):
    url = driver.execute_script("return document.getElementById('pad').toDataURL('image/png');")
    return base64.b64decode(url.split(",", 1)[1])


def seen_pixels(driver):
    """The grey levels of the page's 'what the model receives' canvas."""
    data = driver.execute_script("""
        const c = document.getElementById('seen');
        return [c.width, c.height, Array.from(c.getContext('2d')
                .getImageData(0, 0, c.width, c.height).data)];""")
    width, height, rgba = data
    return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[..., 0]


def upload(driver, path):
    before = round_trips(driver)
    driver.find_element("id", "upload").send_keys(str(path))
    wait_for(driver, "document.body.dataset.pending === '0' && "
                     "document.getElementById('message').textContent !== '' && "
                     "!document.getElementById('message').textContent.startsWith('Draw')")
    return before


def message(driver):
    return driver.find_element("id", "message").text


# --------------------------------------------------------------- drawing
def test_drawing_a_zero_shows_the_models_answer_as_the_stroke_grows(page, predictor):
    draw(page, ellipse(turns=0.5))  # half a stroke first
    wait_for_answer(page)
    half, _ = shown_probabilities(page)
    trips_half = round_trips(page)

    draw(page, ellipse())
    wait_for_answer(page, trips_half)
    probabilities, top = shown_probabilities(page)
    assert top == "0"
    assert round_trips(page) - trips_half >= 2, "the answer should follow the stroke"
    assert half != probabilities

    # What the page shows is exactly the model's answer on what was drawn.
    answer = predictor.predict_bytes(pad_png(page))
    shown = np.array([float(probabilities[c]) for c in predictor.classes])
    np.testing.assert_allclose(shown, answer["probabilities"], rtol=0, atol=1e-12)
    assert shown.sum() == pytest.approx(1.0)
    assert page.find_element("css selector", "#bars li.top").get_attribute("data-label") == "0"
    # ... and the small picture is the model's input.
    np.testing.assert_array_equal(seen_pixels(page), np.asarray(answer["input"]))
    assert "Round trip" in page.find_element("id", "timing").text


@pytest.mark.parametrize("kind", ["touch", "pen"])
def test_touch_and_pen_draw_too(page, kind):
    draw(page, ellipse(), kind=kind)
    wait_for_answer(page)
    assert page.execute_script("return document.body.dataset.pointer;") == kind
    assert shown_probabilities(page)[1] == "0"


def test_clear_empties_the_pad_and_the_answer(page):
    draw(page, ellipse())
    wait_for_answer(page)
    page.find_element("id", "clear").click()
    probabilities, top = shown_probabilities(page)
    assert top == "?" and set(probabilities.values()) == {""}
    assert not np.asarray(Image.open(io.BytesIO(pad_png(page))).convert("L")).min() < 255


# --------------------------------------------------------------- uploads
def test_uploading_a_real_png_digit(page, tmp_path):
    pictures, y = digit_pictures()
    path = tmp_path / "three.png"
    index = int(np.flatnonzero(y == 3)[0])
    path.write_bytes(scan_png(pictures[index], side=96))
    upload(page, path)
    assert message(page).startswith("Uploaded three.png")
    assert shown_probabilities(page)[1] == "3"
    # The picture is shown on the pad (dark ink on white).
    wait_for(page, "true")
    pad = np.asarray(Image.open(io.BytesIO(pad_png(page))).convert("L"))
    assert pad.min() < 60 and pad.max() == 255


@pytest.mark.parametrize("name, make, words", [
    ("damaged.png", truncated_png, "damaged"),
    ("notes.png", lambda: b"these are notes, not a picture\n" * 20, "not an image"),
    ("bomb.png", bomb_png, "decompression bomb"),
    ("huge.png", lambda: b"\x89PNG\r\n\x1a\n" + bytes(MAX_BYTES), "larger than the limit"),
])
def test_bad_uploads_get_a_clear_message_on_the_page(page, tmp_path, name, make, words):
    path = tmp_path / name
    path.write_bytes(make())
    upload(page, path)
    text = message(page)
    assert text.startswith(name) and words in text
    assert page.execute_script("return document.body.dataset.state;") == "error"
    assert shown_probabilities(page)[1] == "?"
    assert "Traceback" not in page.page_source


# ------------------------------------------------------- privacy, screenshot
def test_the_page_contacts_only_its_own_server(browser, server):
    for log in ("performance", "browser"):
        browser.get_log(log)  # drop what earlier tests left
    browser.get(server + "/")
    wait_for(browser, "document.body.dataset.state === 'ready'")
    draw(browser, ellipse())
    wait_for_answer(browser)
    own = urlsplit(server).netloc
    requested = []
    for entry in browser.get_log("performance"):
        event = json.loads(entry["message"])["message"]
        if event["method"] == "Network.requestWillBeSent":
            requested.append(event["params"]["request"]["url"])
    web = [url for url in requested if urlsplit(url).scheme in ("http", "https", "ws", "wss")]
    assert {urlsplit(url).path for url in web} >= {"/", "/static/app.js", "/static/style.css",
                                                   "/api/model", "/api/predict"}
    assert [url for url in web if urlsplit(url).netloc != own] == []
    # No script error and no request blocked by the page's Content-Security-Policy.
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_screenshot(page, tmp_path):
    draw(page, ellipse())
    wait_for_answer(page)
    shot = tmp_path / "serve.png"
    assert page.save_screenshot(str(shot))
    with Image.open(shot) as image:
        assert image.size[0] >= 1000
        target = os.environ.get("SKDIGITS_SCREENSHOT")
        if target:
            # A 64-colour palette keeps the committed picture small.
            image.convert("RGB").quantize(64).save(Path(target), optimize=True)
