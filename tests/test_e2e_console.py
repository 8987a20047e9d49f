"""The web console (web/console) in headless Chromium (Debian chromium and chromium-driver,
driven by selenium) against `dicomhub serve` over a real socket: the study list loads and its
search filters, a study opens and its preview draws (the image's pixels are looked at), frames
of a multi-frame instance scroll, the metadata table names tags, a folder of files uploads
(checked by QIDO), a study is deleted after its confirmation; with authentication on, the page
asks for a token, then shows only what the token's roles allow.

One browser serves the module. Screenshots are kept in test-artifacts/console/ (the path is
printed).
"""

from __future__ import annotations

import contextlib
import http.server
import io
import threading
import warnings
import zipfile
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageChops, ImageStat
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.conftest import ROOT, running_server
from tests.dicomfiles import read
from tests.helpers import MULTIPART, multipart, store_files
from tests.issuer import AUDIENCE, Issuer
from tests.synthetic import instance
from tests.test_e2e_ohif import chromium, drawn, wait_for
from tests.test_e2e_ohif import page_text as text

ARTIFACTS = ROOT / "test-artifacts" / "console"
FILES = {  # patient name: (file, modality), each its own study
    "CONSOLE^CT": "CT_small.dcm",
    "CONSOLE^MR": "MR_small.dcm",
    "CONSOLE^FRAMES": "emri_small.dcm",  # 10 frames (pydicom-data)
}


def _study(name: str, file: str, date: str) -> tuple[str, bytes]:
    ds = read(Path(get_testdata_file(file, download=False)).read_bytes())
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID = name, name.replace("^", "-")
    ds.StudyDate = date
    ds.AccessionNumber = "ACC-" + name.split("^")[1]
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(out, enforce_file_format=False)
    return ds.StudyInstanceUID, out.getvalue()


@pytest.fixture(scope="module")
def browser(request):
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\nconsole screenshots: {ARTIFACTS}")  # shown however pytest captures output
    yield from chromium(ARTIFACTS)


@pytest.fixture(scope="module")
def served(browser, tmp_path_factory):
    data = tmp_path_factory.mktemp("console")
    with running_server(data, delete_delay="0") as (url, _):
        studies = {}
        for n, (name, file) in enumerate(FILES.items()):
            studies[name], body = _study(name, file, f"2024010{n + 1}")
            store_files(url, body)
        yield url, studies


def css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def shot(driver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def rows(driver) -> list[str]:
    """The patients of the study list (read at once: the list may be redrawn meanwhile)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('table.studies a.study-link')].map(a => a.innerText)"
    )


def preview(driver) -> Image.Image | None:
    """What the preview shows, once an image is loaded in it."""
    from selenium.common.exceptions import WebDriverException

    loaded = driver.execute_script(
        "const i = document.getElementById('preview');"
        "return i && i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:');"
    )
    if not loaded:
        return None
    try:
        return Image.open(io.BytesIO(css(driver, "#preview")[0].screenshot_as_png)).convert("RGB")
    except WebDriverException:
        return None


def log_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def search(driver, **fields: str) -> None:
    from selenium.webdriver.common.keys import Keys

    for name, value in fields.items():
        box = css(driver, f"form.search [name={name}]")[0]
        box.clear()
        box.send_keys(value)
    css(driver, "form.search [name=PatientName]")[0].send_keys(Keys.ENTER)


def test_the_study_list_loads_and_searches(browser, served):
    url, studies = served
    browser.get(url + "/")
    wait_for("every study listed", lambda: len(rows(browser)) == len(studies))
    assert "Studies 1–3 of 3" in text(browser)
    wait_for("thumbnails", lambda: len(css(browser, "td.thumb img")) == len(studies))
    shot(browser, "study-list")
    # the form's controls are labelled (a screen reader names each)
    for control in css(browser, "form.search input, form.search select"):
        label = browser.execute_script("return arguments[0].labels[0].innerText", control)
        assert label.strip(), control.get_attribute("name")
    # the keyboard: the skip link first, then the search form
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    assert browser.switch_to.active_element.text == "Studies"  # a new page: its heading
    ActionChains(browser).send_keys(Keys.TAB).perform()
    active = browser.switch_to.active_element
    assert active.get_attribute("name") == "PatientName"
    assert "Patient name" in browser.execute_script(
        "return arguments[0].labels[0].innerText", active
    )
    browser.execute_script("document.getElementById('skip').focus()")
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    assert browser.switch_to.active_element.text == "Studies"
    assert "#" not in browser.current_url or browser.current_url.endswith("#/")
    search(browser, PatientName="console mr")
    wait_for("the MR only", lambda: rows(browser) == ["CONSOLE, MR"])
    assert "PatientName=console+mr" in browser.current_url
    shot(browser, "search-name")
    browser.get(url + "/#/?ModalitiesInStudy=CT")
    wait_for("the CT only", lambda: rows(browser) == ["CONSOLE, CT"])
    browser.get(url + "/#/?from=2024-01-02&to=2024-01-03")
    wait_for("two by date", lambda: sorted(rows(browser)) == ["CONSOLE, FRAMES", "CONSOLE, MR"])
    browser.get(url + "/#/?AccessionNumber=ACC-CT")
    wait_for("the CT by accession", lambda: rows(browser) == ["CONSOLE, CT"])
    browser.get(url + "/#/?PatientID=nobody")
    wait_for("nothing", lambda: "No study matches." in text(browser))
    browser.get(url + "/#/?limit=25&offset=1")
    wait_for("the second page", lambda: len(rows(browser)) == 2)
    assert "Studies 2–3 of 3" in text(browser)
    assert log_errors(browser) == []


def test_a_study_opens_and_its_preview_draws(browser, served):
    url, studies = served
    browser.get(url + "/")
    wait_for("the list", lambda: "CONSOLE, CT" in rows(browser))
    next(e for e in css(browser, "a.study-link") if e.text == "CONSOLE, CT").click()
    wait_for("the study page", lambda: "Instances" in text(browser))
    image = wait_for("the CT drawn", lambda: (i := preview(browser)) and drawn(i) and i)
    image.save(ARTIFACTS / "preview-CT.png")
    shot(browser, "study-CT")
    # another window: another picture
    from selenium.webdriver.support.ui import Select

    Select(css(browser, "#window")[0]).select_by_value("bone")
    bone = wait_for(
        "the bone window",
        lambda: (i := preview(browser)) and _differs(image, i) and i,
    )
    bone.save(ARTIFACTS / "preview-CT-bone.png")
    Select(css(browser, "#window")[0]).select_by_value("custom")
    for name, value in (("wc", "40"), ("ww", "80")):
        box = css(browser, f"#{name}")[0]
        box.clear()
        box.send_keys(value)
    Select(css(browser, "#wf")[0]).select_by_value("sigmoid")
    sigmoid = wait_for(
        "a custom sigmoid window",
        lambda: (i := preview(browser)) and _differs(bone, i) and _differs(image, i) and i,
    )
    sigmoid.save(ARTIFACTS / "preview-CT-sigmoid.png")
    css(browser, "button.show-metadata")[0].click()
    wait_for("the tag table", lambda: "PatientName" in text(browser))
    table = css(browser, "table.tags")[0].text
    assert "(0010,0010) PatientName PN CONSOLE^CT" in table
    assert "(7FE0,0010) PixelData" in table
    shot(browser, "metadata-CT")


def _differs(a: Image.Image, b: Image.Image) -> bool:
    if a.size != b.size:
        return True
    return max(ImageStat.Stat(ImageChops.difference(a, b)).mean) > 2


def test_a_series_of_more_instances_than_a_search_page(browser, served):
    """A series of 120 instances: the page reads them all (QIDO answers 100 unless asked)."""
    url, _ = served
    study, series = generate_uid(), generate_uid()
    made = [
        instance(study, series, generate_uid(), PatientName="LONG^SERIES", InstanceNumber=n)
        for n in range(120, 0, -1)
    ]
    r = httpx.post(
        url + "/v2/studies", content=multipart(*made), headers={"Content-Type": MULTIPART}
    )
    assert r.status_code == 200
    browser.get(f"{url}/#/study/{study}")
    wait_for("every instance", lambda: len(css(browser, "table.instances tbody tr")) == 120)
    assert "Instance 1 of 120" in text(browser)
    first = css(browser, "table.instances tbody tr")[0].text
    assert first.startswith("1 "), first  # in instance-number order
    browser.get(url + "/#/?ModalitiesInStudy=ct&PatientName=long")  # any case
    wait_for("the study", lambda: rows(browser) == ["LONG, SERIES"])


def test_the_frames_of_a_multiframe_instance_scroll(browser, served):
    from selenium.webdriver.common.keys import Keys

    url, studies = served
    browser.get(f"{url}/#/study/{studies['CONSOLE^FRAMES']}")
    first = wait_for("frame 1", lambda: (i := preview(browser)) and drawn(i) and i)
    first.save(ARTIFACTS / "preview-frame-1.png")
    assert "frame 1 of 10" in text(browser)
    viewport = css(browser, "#viewport")[0]
    viewport.send_keys(Keys.ARROW_RIGHT)
    viewport.send_keys(Keys.ARROW_RIGHT)
    wait_for("frame 3", lambda: css(browser, "#preview")[0].get_attribute("data-frame") == "3")
    third = wait_for("frame 3 drawn", lambda: (i := preview(browser)) and _differs(first, i) and i)
    third.save(ARTIFACTS / "preview-frame-3.png")
    assert "frame 3 of 10" in text(browser)
    shot(browser, "study-multiframe")


def _folder(tmp: Path, name: str, count: int) -> tuple[Path, str]:
    """A folder of ``count`` new instances of one new study (in a sub-folder too), and a file
    that is not DICOM; the study's UID."""
    study, series = generate_uid(), generate_uid()
    (tmp / "sub").mkdir(parents=True)
    for n in range(count):
        attributes = {"PatientName": name, "InstanceNumber": n + 1, "StudyDate": "20230101"}
        body = instance(study, series, generate_uid(), **attributes)
        (tmp / ("sub" if n % 2 else ".") / f"IM{n:04d}.dcm").write_bytes(body)
    (tmp / "notes.txt").write_text("not DICOM")
    return tmp, study


def _qido_count(url: str, **params) -> int:
    r = httpx.get(url + "/v2/instances", params=params)
    return len(r.json()) if r.status_code == 200 else 0


def _wait_uploaded(browser, files: int) -> str:
    return wait_for(
        "every file's outcome",
        lambda: (
            len(css(browser, "#upload-summary ~ table tbody tr")) == files
            and "done in" in css(browser, "#upload-summary")[0].text
            and css(browser, "#upload-summary")[0].text
        ),
    )


def test_upload_a_folder(browser, served, tmp_path):
    from selenium.webdriver.common.keys import Keys

    url, _ = served
    folder, study = _folder(tmp_path / "folder", "UPLOAD^FOLDER", 6)
    browser.get(url + "/#/upload")
    picker = wait_for("the folder picker", lambda: css(browser, "#upload-folder"))[0]
    picker.send_keys(str(folder))
    summary = _wait_uploaded(browser, 7)
    shot(browser, "upload-folder")
    assert "stored 6" in summary and "refused 1" in summary, summary
    refused = [r.text for r in css(browser, "tr.outcome-bad")]
    assert len(refused) == 1 and "notes.txt" in refused[0]
    assert _qido_count(url, StudyInstanceUID=study) == 6
    assert float(css(browser, "#upload-progress")[0].get_attribute("value")) > 0
    links = [a.get_attribute("href") for a in css(browser, "#upload-studies a")]
    assert links == [f"{url}/#/study/{study}"]  # the study stored, to open
    # the same files again: already stored, each said so
    files = sorted(str(p) for p in folder.rglob("*.dcm"))
    css(browser, "#upload-files")[0].send_keys("\n".join(files))
    summary = _wait_uploaded(browser, 6)
    assert "already stored or with warnings 6" in summary, summary
    assert all("already stored" in r.text for r in css(browser, "tr.outcome-warn"))
    # the series scrolls instance by instance, in instance-number order; one is deleted
    browser.get(f"{url}/#/study/{study}")
    wait_for("instance 1", lambda: preview(browser))
    assert "Instance 1 of 6" in text(browser)
    numbers = [r.text.split()[0] for r in css(browser, "table.instances tbody tr")]
    assert numbers == ["1", "2", "3", "4", "5", "6"]
    first = css(browser, "#preview")[0].get_attribute("data-sop")
    css(browser, "#viewport")[0].send_keys(Keys.ARROW_DOWN)
    wait_for("instance 2", lambda: "Instance 2 of 6" in text(browser))
    second = wait_for(
        "instance 2 drawn",
        lambda: (sop := css(browser, "#preview")[0].get_attribute("data-sop")) != first and sop,
    )
    rows_ = css(browser, "table.instances tbody tr")
    assert rows_[1].get_attribute("data-sop") == second
    rows_[1].find_element("css selector", "button.delete-instance").click()
    wait_for("the dialog", lambda: css(browser, "dialog[open]"))
    assert second in css(browser, "dialog[open]")[0].text
    css(browser, "#confirm-ok")[0].click()
    wait_for("5 left", lambda: _qido_count(url, StudyInstanceUID=study) == 5)
    wait_for("5 listed", lambda: len(css(browser, "table.instances tbody tr")) == 5)
    assert second not in [r.get_attribute("data-sop") for r in css(browser, "table.instances tr")]


def test_upload_by_drag_and_drop(browser, served):
    import base64

    url, _ = served
    study, series = generate_uid(), generate_uid()
    made = [instance(study, series, generate_uid(), PatientName="UP^DROP") for _ in range(3)]
    bodies = [base64.b64encode(body).decode() for body in made]
    browser.get(url + "/#/upload")
    wait_for("the drop zone", lambda: css(browser, "#drop"))
    browser.execute_script(
        "const dt = new DataTransfer();"
        "arguments[0].forEach((b, n) => dt.items.add(new File("
        "  [Uint8Array.from(atob(b), c => c.charCodeAt(0))], `drop${n}.dcm`)));"
        "const zone = document.getElementById('drop');"
        "const how = {dataTransfer: dt, bubbles: true, cancelable: true};"
        "zone.dispatchEvent(new DragEvent('dragover', how));"
        "zone.dispatchEvent(new DragEvent('drop', how));",
        bodies,
    )
    summary = _wait_uploaded(browser, 3)
    assert "stored 3" in summary, summary
    assert _qido_count(url, StudyInstanceUID=study) == 3
    shot(browser, "upload-dropped")


def test_delete_a_study_after_confirming(browser, served):
    url, _ = served
    study, body = _study("CONSOLE^DELETE", "CT_small.dcm", "20240109")
    store_files(url, body)
    browser.get(f"{url}/#/study/{study}")
    button = wait_for("the delete button", lambda: css(browser, "#delete-study"))[0]
    button.click()
    dialog = wait_for("the dialog", lambda: css(browser, "dialog[open]"))[0]
    assert "CONSOLE, DELETE" in dialog.text and "cannot be undone" in dialog.text
    shot(browser, "delete-confirm")
    # the focus is on Cancel: Enter keeps the study
    assert browser.switch_to.active_element.get_attribute("id") == "confirm-cancel"
    css(browser, "#confirm-cancel")[0].click()
    wait_for("the dialog closed", lambda: not css(browser, "dialog[open]"))
    assert _qido_count(url, StudyInstanceUID=study) == 1
    css(browser, "#delete-study")[0].click()
    wait_for("the dialog", lambda: css(browser, "dialog[open]"))
    css(browser, "#confirm-ok")[0].click()
    wait_for("the study list", lambda: browser.current_url.endswith("#/"))
    wait_for("the study gone", lambda: _qido_count(url, StudyInstanceUID=study) == 0)
    wait_for(
        "the list without it", lambda: rows(browser) and "CONSOLE, DELETE" not in rows(browser)
    )


def test_download_an_instance(browser, served, tmp_path):
    url, studies = served
    browser.execute_cdp_cmd(
        "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)}
    )
    study = studies["CONSOLE^CT"]
    browser.get(f"{url}/#/study/{study}")
    wait_for("the instances", lambda: css(browser, "button.download"))[0].click()
    sop = css(browser, "table.instances tbody tr")[0].get_attribute("data-sop")
    saved = wait_for("the file", lambda: (f := tmp_path / f"{sop}.dcm").is_file() and f)
    instances = httpx.get(f"{url}/v2/studies/{study}/instances").json()
    series = instances[0]["0020000E"]["Value"][0]
    original = httpx.get(
        f"{url}/v2/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": "application/dicom; transfer-syntax=*"},
    )
    wait_for("the whole file", lambda: saved.read_bytes() == original.content)
    # the study as a ZIP file-set: the instance and a DICOMDIR
    css(browser, "button")[[b.text for b in css(browser, "button")].index("Download ZIP")].click()
    zipped = wait_for("the ZIP", lambda: (f := tmp_path / f"study-{study}.zip").is_file() and f)

    def complete():
        try:
            with zipfile.ZipFile(zipped) as z:
                return sorted(n.split("/")[0] for n in z.namelist())
        except (zipfile.BadZipFile, OSError):
            return None

    assert wait_for("a whole ZIP", complete) == ["DICOM", "DICOMDIR"]


def test_the_change_feed(browser, served):
    url, studies = served
    latest = httpx.get(url + "/v2/changefeed/latest").json()["sequence"]
    browser.get(url + "/#/changes")
    wait_for("the feed", lambda: css(browser, "table.feed tbody tr"))
    first = css(browser, "table.feed tbody tr")[0].text
    assert first.startswith(str(latest)), first  # newest first
    assert f"Latest sequence {latest}" in text(browser)
    shot(browser, "change-feed")
    # older pages, 50 entries each, down to the first entries: the studies stored first
    for page in range(2, 10):
        top = css(browser, "table.feed tbody tr")[0].text
        if "1 " == css(browser, "table.feed tbody tr")[-1].text[:2]:
            break
        css(browser, "nav.pager button")[1].click()  # Older
        wait_for(f"page {page}", lambda p=page: f"page {p}" in text(browser))
        wait_for("its entries", lambda t=top: css(browser, "table.feed tbody tr")[0].text != t)
        first = css(browser, "table.feed tbody tr")[0].text
        assert first.startswith(str(latest - 50 * (page - 1))), first
    entries = [r.text for r in css(browser, "table.feed tbody tr")]
    assert entries[-1].startswith("1 ") and studies["CONSOLE^CT"] in entries[-1]


def test_extended_query_tags_and_their_operation(browser, served):
    from selenium.webdriver.support.ui import Select

    url, _ = served
    browser.get(url + "/#/tags")
    form = wait_for("the form", lambda: css(browser, "#add-tag"))[0]
    form.find_element("name", "path").send_keys("DeviceSerialNumber")
    Select(form.find_element("name", "level")).select_by_value("Series")
    form.find_element("css selector", "button[type=submit]").click()
    wait_for("the operation", lambda: css(browser, ".operation"))
    operation = css(browser, ".operation")[0].get_attribute("data-operation")
    assert f"id={operation}" in browser.current_url
    wait_for(
        "the operation completed",
        lambda: "completed" in " ".join(e.text for e in css(browser, ".operation")),
    )
    shot(browser, "operation")
    wait_for("the job queue", lambda: css(browser, "#jobs table, #jobs p"))
    assert "Background jobs by type" in text(browser)
    exposition = httpx.get(url + "/metrics").text
    parsed = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "import(new URL('console/ops.js', document.baseURI).href)"
        ".then(m => done(m.gauges(arguments[0], ['dicomhub_job_queue_depth'])));",
        exposition + '\ndicomhub_job_queue_depth{type="export"} 3.0\n',
    )
    assert parsed["export"] == {"dicomhub_job_queue_depth": 3}
    browser.get(url + "/#/tags")
    wait_for("the tag", lambda: "00181000" in text(browser))
    shot(browser, "extended-query-tags")
    assert httpx.get(url + "/v2/extendedquerytags").json()[0]["level"] == "Series"
    css(browser, "table.extended-tags button.danger")[0].click()
    wait_for("the dialog", lambda: css(browser, "dialog[open]"))
    css(browser, "#confirm-ok")[0].click()
    wait_for("the tag removed", lambda: httpx.get(url + "/v2/extendedquerytags").json() == [])
    wait_for("the page says so", lambda: "No extended query tag." in text(browser))


def test_health(browser, served):
    url, _ = served
    browser.get(url + "/#/health")
    wait_for("the health", lambda: "Overall: Healthy" in text(browser))
    assert "Authentication: off" in text(browser)
    shot(browser, "health")
    browser.get(url + "/#/operations?id=nothing-like-it")
    wait_for("a clear refusal", lambda: "404" in text(browser) and "not found" in text(browser))
    logged = log_errors(browser)
    assert any("404" in m for m in logged)  # the 404 the page showed
    # nothing the pages of this module did was refused by their Content-Security-Policy
    assert not [m for m in logged if "Content Security Policy" in m]


@pytest.fixture(scope="module")
def issuer():
    found = Issuer()
    yield found
    found.server.shutdown()
    found.server.server_close()


@contextlib.contextmanager
def _secured(tmp: Path, issuer: Issuer, client_id: str):
    """A server with authentication on (``issuer``'s tokens), one study in it."""
    settings = {"auth_issuer": issuer.url, "auth_audience": AUDIENCE}
    if client_id:
        settings["console_client_id"] = client_id
    with running_server(tmp, **settings) as (url, _):
        study, body = _study("SECURE^CT", "CT_small.dcm", "20240201")
        token = issuer.token()
        r = httpx.post(
            url + "/v2/studies",
            content=body,
            headers={"Content-Type": "application/dicom", "Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
        yield url, study


def _signed_in(browser) -> None:
    wait_for("signed in", lambda: "Sign out" in css(browser, "#session")[0].text)


def test_sign_in_with_authorization_code_and_pkce(browser, issuer, tmp_path):
    issuer.login = {"sub": "alice", "preferred_username": "alice", "roles": ["globalAdmin"]}
    with _secured(tmp_path, issuer, "dicomhub-console") as (url, study):
        browser.get(url + "/")
        button = wait_for("the sign-in button", lambda: css(browser, "#sign-in"))[0]
        assert "SECURE" not in text(browser)
        shot(browser, "auth-sign-in")
        button.click()  # to the issuer, and back with a code
        wait_for("the studies", lambda: rows(browser) == ["SECURE, CT"])
        _signed_in(browser)
        assert "alice" in css(browser, "#session")[0].text
        assert "code=" not in browser.current_url and "state=" not in browser.current_url
        assert issuer.refused == []
        wait_for("its thumbnail (fetched with the token)", lambda: css(browser, "td.thumb img"))
        shot(browser, "auth-study-list")
        browser.get(f"{url}/#/study/{study}")
        wait_for("the preview", lambda: (i := preview(browser)) and drawn(i))
        assert css(browser, "#delete-study") and css(browser, "button.delete-instance")
        assert css(browser, "nav a[data-section=upload]")[0].is_displayed()
        shot(browser, "auth-study-admin")
        browser.get(f"{url}/#/operations")  # an admin reads the job queue (/metrics)
        wait_for("the job queue", lambda: css(browser, "#jobs table, #jobs p"))
        assert not css(browser, "#jobs .error-box")
        browser.get(f"{url}/#/study/{study}")
        wait_for("the preview", lambda: (i := preview(browser)) and drawn(i))
        # a reader: what the roles do not allow is not offered
        css(browser, "#session button")[0].click()  # sign out
        wait_for("the sign-in button", lambda: css(browser, "#sign-in"))
        issuer.login = {"sub": "bob", "roles": ["globalReader"]}
        css(browser, "#sign-in")[0].click()  # and back where the user was: the study
        wait_for("the preview", lambda: (i := preview(browser)) and drawn(i))
        assert browser.current_url == f"{url}/#/study/{study}"
        _signed_in(browser)
        assert "bob" in css(browser, "#session")[0].text
        assert not css(browser, "#delete-study") and not css(browser, "button.delete-instance")
        assert not css(browser, "nav a[data-section=upload]")[0].is_displayed()
        shot(browser, "auth-study-reader")
        browser.get(f"{url}/#/tags")
        wait_for("the tags page", lambda: "No extended query tag." in text(browser))
        assert not css(browser, "#add-tag")
        browser.get(f"{url}/#/operations")
        wait_for("the operations page", lambda: "None in progress." in text(browser))
        assert not css(browser, "#jobs")  # /metrics needs the admin action
        # a code is good once, and only with its verifier: the issuer refuses a replay
        assert issuer.trade({"grant_type": "authorization_code", "code": "x"})[0] == 400


def test_a_pasted_token_when_no_client_is_configured(browser, issuer, tmp_path):
    with _secured(tmp_path, issuer, "") as (url, study):
        browser.get(url + "/")
        wait_for("the explanation", lambda: css(browser, "#no-client"))
        assert "cannot get a token by itself" in text(browser)
        shot(browser, "auth-paste")
        css(browser, "#token")[0].send_keys(issuer.token(roles=["globalWriter"]))
        css(browser, "form.panel button[type=submit]")[0].click()
        wait_for("the studies", lambda: rows(browser) == ["SECURE, CT"])
        assert css(browser, "nav a[data-section=upload]")[0].is_displayed()  # write: upload
        browser.get(f"{url}/#/study/{study}")
        wait_for("the preview", lambda: (i := preview(browser)) and drawn(i))
        assert not css(browser, "#delete-study")  # no delete role


def test_each_study_links_to_ohif_when_the_viewer_is_served(browser, tmp_path):
    """With ``serve --viewer``, the list and the study page link each study to OHIF, which
    draws it (the OHIF build ./run test fetches; skipped without it)."""
    from tests.test_e2e_ohif import BUILD, open_page, viewport

    if not (BUILD / "index.html").is_file():
        pytest.skip(f"no OHIF build in {BUILD} (./run test fetches it)")
    with running_server(tmp_path, viewer=str(BUILD)) as (url, _):
        study, body = _study("CONSOLE^OHIF", "CT_small.dcm", "20240301")
        store_files(url, body)
        browser.get(url + "/")
        link = wait_for("the OHIF link", lambda: css(browser, "table.studies a[target=_blank]"))
        expected = f"{url}/viewer/viewer?StudyInstanceUIDs={study}"
        assert link[0].get_attribute("href") == expected
        browser.get(f"{url}/#/study/{study}")
        assert wait_for("the link", lambda: css(browser, "#ohif"))[0].get_attribute("href") == (
            expected
        )
        open_page(browser, expected)
        wait_for("OHIF's drawing", lambda: drawn(viewport(browser)), timeout=120)
        shot(browser, "ohif-from-console")


class _PrefixProxy(http.server.BaseHTTPRequestHandler):
    """A reverse proxy that serves the server under /pacs/ (and nothing else)."""

    target = ""
    client: httpx.Client

    def _forward(self):
        if not self.path.startswith("/pacs/"):
            self.send_error(404)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        r = self.client.request(
            self.command, self.target + self.path[5:], headers=headers, content=body
        )
        self.send_response(r.status_code)
        for k, v in r.headers.multi_items():
            if k.lower() not in HOP | {"content-encoding", "content-length"}:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)

    do_GET = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815

    def log_message(self, *args):
        pass


HOP = {"host", "connection", "keep-alive", "transfer-encoding", "te", "upgrade"}


def test_behind_a_proxy_under_a_path(browser, served):
    """Every URL the page uses is relative to it: served at /pacs/ by a proxy, it works."""
    url, studies = served
    handler = type("Proxy", (_PrefixProxy,), {"target": url, "client": httpx.Client()})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{proxy.server_address[1]}/pacs/"
        browser.get(base)
        wait_for("the studies", lambda: "CONSOLE, CT" in rows(browser))
        wait_for("thumbnails", lambda: css(browser, "td.thumb img"))
        browser.get(f"{base}#/study/{studies['CONSOLE^MR']}")
        wait_for("the preview", lambda: (i := preview(browser)) and drawn(i))
        browser.get(f"{base}#/health")
        wait_for("the health", lambda: "Overall: Healthy" in text(browser))
        assert f"{base}v2/" in text(browser)
        shot(browser, "under-a-path")
    finally:
        proxy.shutdown()
        proxy.server_close()
