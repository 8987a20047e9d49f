"""The OHIF viewer (npm @ohif/app, the build ``./run test`` fetches) served by ``dicomhub serve
--viewer``, in headless Chromium (Debian chromium and chromium-driver, driven by selenium):
its study list lists what dicomhub stores; its viewer draws a CT, an MR, a JPEG 2000, an RLE,
a JPEG baseline and a multi-frame instance (the viewport's pixels are looked at, not only its
element); and OHIF served from another origin reads dicomhub when ``--cors-origins`` names
that origin, and is refused by the browser when nothing does.

One browser session and two servers serve the whole module. Screenshots are kept in
test-artifacts/ohif/.
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import re
import shutil
import threading
import time
import urllib.parse
import warnings
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageChops, ImageStat
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from dicomhub.web.viewer import app_config
from tests.components import Unavailable
from tests.conftest import ROOT, free_port, ran, running_server, unavailable
from tests.dicomfiles import read
from tests.helpers import store_files

BUILD = ROOT / "tests" / "components" / "ohif" / "package" / "dist"
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = ROOT / "test-artifacts" / "ohif"
# test-components.md: what Chromium needs to run headless here (and draw WebGL in software)
FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-background-networking "
    "--disable-component-update --disable-sync --no-first-run --disable-dev-shm-usage "
    "--enable-unsafe-swiftshader --window-size=1280,900"
).split()
WAIT = 90  # seconds a page may take to show what it should (a loaded machine is slow)
FILES = {  # one instance of each kind, each its own study
    "CT": "CT_small.dcm",
    "MR": "MR_small.dcm",
    "J2K": "JPEG2000.dcm",  # JPEG 2000
    "RLE": "MR_small_RLE.dcm",
    "JPEG": "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL colour
    "MULTIFRAME": "emri_small.dcm",  # 10 frames (pydicom-data)
}


def _study(kind: str) -> tuple[str, bytes]:
    """The test file of ``kind`` as a study of its own, its patient named OHIF^kind."""
    ds = read(Path(get_testdata_file(FILES[kind], download=False)).read_bytes())
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID = f"OHIF^{kind}", f"OHIF-{kind}"
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=False)
    return ds.StudyInstanceUID, out.getvalue()


def _shown(kind: str) -> str:
    return f"OHIF, {kind}"  # how OHIF's study list writes the patient's name


def chromium(artifacts: Path):
    """Headless Chromium driven by Selenium (Debian's chromium and chromium-driver), with a
    fresh ``artifacts`` folder for screenshots; quit when the generator closes."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable(Unavailable("OHIF", "PyPI selenium is not installed"))
    for path, package in ((CHROMIUM, "chromium"), (DRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            unavailable(Unavailable("OHIF", f"Debian {package} is not installed"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))  # never downloads one
    ran("OHIF")
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def browser():
    if not (BUILD / "index.html").is_file():
        unavailable(Unavailable("OHIF", f"no OHIF build in {BUILD} (./run test fetches it)"))
    yield from chromium(ARTIFACTS)


class OtherOrigin(http.server.SimpleHTTPRequestHandler):
    """OHIF's files from a plain HTTP server, its app-config.js pointing at ``root``."""

    root = ""

    def send_head(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/app-config.js":
            body = app_config(type(self).root).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/javascript")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            return io.BytesIO(body)
        if not os.path.isfile(self.translate_path(self.path)):
            self.path = "/index.html"  # OHIF's routes
        return super().send_head()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def other_origin():
    """The origin OHIF is served from by the plain server (the server is not started before
    the browser can run)."""
    port = free_port()
    handler = type("Site", (OtherOrigin,), {})
    site = http.server.ThreadingHTTPServer(
        ("127.0.0.1", port), functools.partial(handler, directory=str(BUILD))
    )
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", handler
    finally:
        site.shutdown()
        site.server_close()


@pytest.fixture(scope="module")
def served(browser, other_origin, tmp_path_factory):
    """dicomhub with the viewer, the other origin allowed (CORS), and the studies stored."""
    data = tmp_path_factory.mktemp("ohif")
    with running_server(data, viewer=str(BUILD), cors_origins=other_origin[0]) as (url, _):
        studies = {}
        for kind in FILES:
            studies[kind], file = _study(kind)
            store_files(url, file)
        yield url, studies, data


def wait_for(what: str, condition, timeout: float = WAIT):
    """``condition()``'s first true value, asked until ``timeout`` seconds have passed (an
    element redrawn while it was read counts as not yet). The console's tests use it too."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout} s")
        time.sleep(0.2)


def page_text(driver) -> str:
    return driver.execute_script("return document.body ? document.body.innerText : ''")


def open_page(driver, url: str) -> None:
    driver.get(url)
    # OHIF's investigational-use notice and onboarding tour cover the page: put them away
    driver.execute_script(
        "document.querySelectorAll('.shepherd-element, .shepherd-modal-overlay-container')"
        ".forEach(e => e.remove());"
        "const ok = document.querySelector('[data-cy=\"confirm-and-hide-button\"]');"
        "if (ok) ok.click();"
    )


def viewport(driver) -> Image.Image | None:
    """What the viewport's canvas shows (its text overlays hidden), or None before it is
    there."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    driver.execute_script(
        "document.querySelectorAll('.viewport-overlay, .shepherd-element')"
        ".forEach(e => e.style.visibility = 'hidden');"
        "const ok = document.querySelector('[data-cy=\"confirm-and-hide-button\"]');"
        "if (ok) ok.click();"
    )
    canvases = driver.find_elements(By.CSS_SELECTOR, ".cornerstone-canvas")
    if not canvases:
        return None
    try:
        return Image.open(io.BytesIO(canvases[0].screenshot_as_png)).convert("RGB")
    except WebDriverException:  # re-drawn (or replaced) while it was taken
        return None


def centre(image: Image.Image) -> Image.Image:
    """The middle of the viewport, where OHIF fits the image (the corners hold text)."""
    w, h = image.size
    return image.crop((int(w * 0.35), int(h * 0.35), int(w * 0.65), int(h * 0.65)))


def drawn(image: Image.Image | None) -> bool:
    """Whether ``image`` shows a picture: its middle mostly not black, in many shades (not a
    blank viewport, a spinner or a one-colour error)."""
    if image is None:
        return False
    grey = centre(image).convert("L")
    histogram = grey.histogram()
    lit = sum(histogram[24:]) / sum(histogram)
    shades = sum(1 for count in histogram if count)
    return lit > 0.25 and shades >= 16 and ImageStat.Stat(grey).stddev[0] > 4


def share_of(image: Image.Image, channel: int) -> float:
    """The share of ``image``'s pixels of a pure primary colour (0 red, 1 green, 2 blue)."""
    bands = [band.point(lambda v: 255 if v > 200 else 0) for band in image.split()]
    dark = [band.point(lambda v: 255 if v < 60 else 0) for band in image.split()]
    others = [dark[c] for c in range(3) if c != channel]
    pure = ImageChops.multiply(bands[channel], ImageChops.multiply(*others))
    return pure.histogram()[255] / (image.width * image.height)


def test_study_list_lists_the_stored_studies(browser, served):
    url, studies, _ = served
    open_page(browser, url + "/viewer")
    wait_for(
        "study list with every stored study",
        lambda: all(_shown(kind) in page_text(browser) for kind in studies),
    )
    browser.save_screenshot(str(ARTIFACTS / "study-list.png"))


@pytest.mark.parametrize("kind", list(FILES))
def test_the_viewer_draws_each_kind_of_image(browser, served, kind):
    url, studies, _ = served
    open_page(browser, f"{url}/viewer/viewer?StudyInstanceUIDs={studies[kind]}")
    first = wait_for(
        f"{kind} image in the viewport", lambda: (i := viewport(browser)) and drawn(i) and i
    )
    first.save(ARTIFACTS / f"viewport-{kind}.png")
    browser.save_screenshot(str(ARTIFACTS / f"viewer-{kind}.png"))
    if kind == "JPEG":  # YBR_FULL decoded to its true colours: red, green and blue bars
        assert all(share_of(first, colour) > 0.02 for colour in (0, 1, 2))
    if kind == "MULTIFRAME":  # the next frame is another image
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        element = browser.find_element(By.CSS_SELECTOR, ".cornerstone-viewport-element")
        browser.execute_script("arguments[0].focus()", element)
        element.send_keys(Keys.ARROW_DOWN)

        def other_frame():
            image = viewport(browser)
            if not drawn(image):
                return None
            difference = ImageStat.Stat(ImageChops.difference(centre(first), centre(image)))
            return image if max(difference.mean) > 2 else None

        wait_for("next frame", other_frame).save(ARTIFACTS / "viewport-MULTIFRAME-2.png")


def test_ohif_on_another_origin_with_cors(browser, served, other_origin):
    url, studies, _ = served
    origin, site = other_origin
    site.root = url + "/v2"
    open_page(browser, origin + "/viewer")
    wait_for("study list", lambda: _shown("CT") in page_text(browser))
    browser.save_screenshot(str(ARTIFACTS / "other-origin-study-list.png"))
    open_page(browser, f"{origin}/viewer/viewer?StudyInstanceUIDs={studies['CT']}")
    wait_for("CT image across origins", lambda: drawn(viewport(browser)))
    browser.save_screenshot(str(ARTIFACTS / "other-origin-viewer.png"))


def test_ohif_on_another_origin_without_cors_is_refused(browser, other_origin, tmp_path):
    origin, site = other_origin
    with running_server(tmp_path) as (url, _):
        _, file = _study("CT")
        store_files(url, file)
        site.root = url + "/v2"
        browser.get_log("browser")  # what earlier pages logged
        open_page(browser, origin + "/viewer")
        logged: list[str] = []

        def refused():
            logged.extend(e["message"] for e in browser.get_log("browser"))
            return any("blocked by CORS policy" in m and url in m for m in logged)

        wait_for("CORS refusal in the browser's log", refused)
        wait_for("empty study list", lambda: "No studies available" in page_text(browser))
        browser.save_screenshot(str(ARTIFACTS / "other-origin-refused.png"))
        assert _shown("CT") not in page_text(browser)


def test_the_builds_files_as_served(served):
    """Every file of the real build: its size, its media type (WebAssembly's above all: a
    browser compiles it only as application/wasm) and how long browsers may keep it."""
    url = served[0]
    files = [f for f in BUILD.rglob("*") if f.is_file()]
    assert len(files) > 100
    with httpx.Client(base_url=url) as client:
        for file in files:
            path = "/" + file.relative_to(BUILD).as_posix()
            r = client.head(path)
            if path in ("/sw.js", "/_headers", "/_redirects", "/serve.json"):
                assert r.status_code == 404, path
                continue
            assert r.status_code == 200, path
            if path == "/app-config.js":  # dicomhub's own
                continue
            assert int(r.headers["content-length"]) == file.stat().st_size, path
            kind = r.headers["content-type"].split(";")[0]
            expected = {".wasm": "application/wasm", ".js": "text/javascript", ".css": "text/css"}
            assert kind == expected.get(file.suffix, kind), path
            hashed = re.search(r"(^|[./])[0-9a-f]{16}\.", file.name)
            cache = "public, max-age=31536000, immutable" if hashed else "no-cache"
            assert r.headers["cache-control"] == cache, path


def test_every_request_ohif_made_of_the_api_succeeded(browser, served):
    """The audit log's account of the pages OHIF showed (in this module, and this one): no
    API request OHIF made failed (a failure OHIF shrugs off would not show in a screenshot)."""
    url, studies, _ = served
    open_page(browser, f"{url}/viewer/viewer?StudyInstanceUIDs={studies['MULTIFRAME']}")
    wait_for("image", lambda: drawn(viewport(browser)))
    entries = httpx.get(url + "/v2/audit", params={"limit": 1000}).json()
    api = [e for e in entries if e["path"].startswith("/v2/")]
    assert any(e["route"] == "v2-frames" for e in api)  # OHIF's requests are there
    failed = [(e["status"], e["method"], e["path"]) for e in api if e["status"] >= 400]
    assert failed == []


def test_what_counts_as_drawn():
    """The pixel check refuses a blank or one-colour viewport, and a spinner's few shades."""
    assert not drawn(Image.new("RGB", (400, 300)))
    assert not drawn(Image.new("RGB", (400, 300), (90, 90, 90)))
    ring = Image.new("RGB", (400, 300))
    for x in range(150, 250):
        for y in range(120, 180):
            ring.putpixel((x, y), (0, 0, 255) if (x + y) % 7 else (60, 60, 200))
    assert not drawn(ring)
    picture = Image.effect_noise((400, 300), 40).convert("RGB")
    assert drawn(Image.eval(picture, lambda v: min(255, v + 40)))
    bars = Image.new("RGB", (300, 300))
    bars.paste((255, 0, 0), (0, 0, 300, 100))
    bars.paste((0, 250, 10), (0, 100, 300, 150))
    assert (share_of(bars, 0), share_of(bars, 1), share_of(bars, 2)) == (1 / 3, 1 / 6, 0)
