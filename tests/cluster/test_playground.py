"""The playground in a real browser (Debian's chromium, driven by Selenium through chromedriver), against
the gateway on the local cluster: a model listed at zero, a chat that wakes it and streams the answer,
its state turning to ready with the cold-start wait shown, two models side by side, the last hour from
Prometheus, a clear message for a wrong key, and a batch uploaded, followed and downloaded. Screenshots go to $TIDAL_SCREENSHOTS or the test's
temporary directory."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import uuid
from pathlib import Path

import pytest

from tests.cluster.test_autoscaler import apply, replicas, service
from tests.cluster.test_gateway import make_key
from tests.cluster.test_operator import wait_condition
from tests.cluster.test_smoke import wait_for
from tests.conftest import start_activator

pytestmark = [pytest.mark.cluster, pytest.mark.browser]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or \
    "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), \
        "Debian's chromium and chromium-driver are installed by make install"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1500",
                 "--disable-gpu", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def playground(dev_cluster, operator, kubectl, tmp_path_factory):
    keys_ns = f"pgkeys-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", keys_ns)
    gateway = start_activator(dev_cluster, operator, "--hold-timeout", "90", "--prometheus-url",
                              dev_cluster.prometheus_url, "--batch-storage", str(tmp_path_factory.mktemp("batches")),
                              key_namespace=keys_ns)
    # Prometheus scrapes the operator too (as `make up` and the chart's ServiceMonitor arrange): the
    # playground's pictures of replicas and queue are the operator's series.
    target = dev_cluster.state_dir / "targets" / "operator-playground.json"
    target.write_text(json.dumps([{"targets": [operator.url.removeprefix("http://")], "labels": {"job": "operator"}}]))
    yield gateway, keys_ns
    target.unlink()
    gateway.proc.terminate()
    gateway.proc.wait(10)
    kubectl("delete", "namespace", keys_ns, "--wait=false")


def shot(driver, name: str, tmp_path: Path) -> Path:
    where = Path(os.environ.get("TIDAL_SCREENSHOTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"playground-{name}.png"
    driver.save_screenshot(str(path))
    assert path.read_bytes()[:4] == b"\x89PNG"
    return path


def text(driver, css: str) -> str:
    """The element's text now. The models table is redrawn every few seconds: an element found just
    before a redraw is gone when its text is read, so it is looked up again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    for _ in range(5):
        found = driver.find_elements(By.CSS_SELECTOR, css)
        try:
            return found[0].text if found else ""
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{css}: redrawn five times while being read")


def click(driver, css: str) -> None:
    """Click an element of the models table (looked up again if a redraw replaced it)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    for _ in range(5):
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
            return
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{css}: redrawn five times while being clicked")


def test_the_playground_lists_wakes_streams_compares_and_explains_a_wrong_key(
        browser, playground, kubectl, namespace, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    gateway, keys_ns = playground
    token = "tk-" + secrets.token_urlsafe(24)
    make_key(kubectl, keys_ns, "playground-user", token)
    sleepy, awake = f"{namespace}-sleepy", f"{namespace}-awake"
    for name, served, scaling in (("sleepy", sleepy, {"idleSecondsBeforeZero": 1, "scaleDownStabilizationSeconds": 1}),
                                  ("awake", awake, {"minReplicas": 1})):
        obj = service(name, **scaling)
        obj["spec"]["model"]["servedName"] = served
        apply(kubectl, namespace, obj)
    wait_for(lambda: replicas(kubectl, namespace, "sleepy") == 0, timeout=60, interval=0.5, what="sleepy at zero")
    wait_condition(kubectl, namespace, "awake", "Ready", "True", "ModelReady")

    browser.get(f"{gateway.url}/playground/")
    assert browser.title == "Tidal playground"
    # Every input has a label a screen reader can announce.
    for field in browser.find_elements(By.CSS_SELECTOR, "input, select, textarea"):
        assert browser.find_elements(By.CSS_SELECTOR, f"label[for='{field.get_attribute('id')}']"), field

    # A wrong key: a clear message, no models.
    browser.find_element(By.ID, "api-key").send_keys("not-a-real-key-0000000000")
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait_for(lambda: "not accepted" in text(browser, "#key-status"), timeout=10, what="the wrong-key message")
    assert "tidal.dev/api-key" in text(browser, "#key-status")
    shot(browser, "wrong-key", tmp_path)

    # The right key (typed, then Enter: the keyboard works): the model at zero is listed as such.
    field = browser.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(token + "\n")
    row = f"#models tr[data-model='{sleepy}']"
    wait_for(lambda: text(browser, f"{row} .state") == "at zero", timeout=15, what="the model listed at zero")
    assert text(browser, f"#models tr[data-model='{awake}'] .state") == "1 ready"
    shot(browser, "at-zero", tmp_path)

    # Chat with the model at zero, side by side with the awake one: both stream an answer; the first
    # says it woke the model and how long the cold start made it wait.
    Select(browser.find_element(By.ID, "model-a")).select_by_value(sleepy)
    Select(browser.find_element(By.ID, "model-b")).select_by_value(awake)
    max_tokens = browser.find_element(By.ID, "max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("40")
    browser.find_element(By.ID, "send").click()
    # Streamed: the answer grows on the page token by token (a page that waited for the whole answer would
    # show 0, then 40). Read as it comes, until both panels say they are done.
    seen = set()

    def both_done():
        seen.add(text(browser, "#answer-b .text").count("tok"))
        return (browser.find_element(By.ID, "answer-a").get_attribute("data-done") == "true" and
                browser.find_element(By.ID, "answer-b").get_attribute("data-done") == "true")
    wait_for(both_done, timeout=60, interval=0.02, what="both answers streamed")
    assert len(seen - {0, 40}) >= 2, f"the answer appeared all at once: {sorted(seen)}"
    for panel, model in (("#answer-a", sleepy), ("#answer-b", awake)):
        assert text(browser, f"{panel} h3") == model
        assert text(browser, f"{panel} .text").count("tok") == 40
        assert "time to first token" in text(browser, f"{panel} .stats")
    stats = text(browser, "#answer-a .stats")
    assert "this request woke the model: it waited" in stats and " s for the cold start" in stats, stats
    assert "woke" not in text(browser, "#answer-b .stats")
    wait_for(lambda: text(browser, f"{row} .state").endswith("ready"), timeout=15, what="the woken model ready")
    assert "ActivatorWake" in text(browser, f"{row} .reason") or "ScaleFromZero" in text(browser, f"{row} .reason")
    shot(browser, "chat", tmp_path)

    # The last hour of the awake model, from Prometheus.
    click(browser, f"#models tr[data-model='{awake}'] button")
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#charts figure")) == 4, timeout=15,
             what=f"four charts ({text(browser, '#history-status')!r})")
    captions = [f.text for f in browser.find_elements(By.CSS_SELECTOR, "#charts figcaption")]
    assert captions[0].startswith("Replicas decided: now 1"), captions
    assert captions[2].startswith("Queue and held requests: now 0"), captions
    shot(browser, "history", tmp_path)
    # The key stays in this tab's session storage only.
    assert browser.execute_script("return window.localStorage.length") == 0


def test_the_playground_uploads_a_batch_shows_its_progress_and_downloads_its_results(
        browser, playground, kubectl, namespace, tmp_path):
    """A JSONL file chosen in the page: 6 requests for a model that serves and 1 for a model that does not
    exist. The page uploads it, starts the batch, shows its progress until it completes, and saves the
    output and error files where the browser downloads, each line once."""
    from selenium.webdriver.common.by import By
    gateway, keys_ns = playground
    token = "tk-" + secrets.token_urlsafe(24)
    make_key(kubectl, keys_ns, "batch-user", token)
    model = f"{namespace}-batched"
    obj = service("batched", minReplicas=1)
    obj["spec"]["model"]["servedName"] = model
    apply(kubectl, namespace, obj)
    wait_condition(kubectl, namespace, "batched", "Ready", "True", "ModelReady")
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": model if i < 6 else "no-such-model", "max_tokens": 3,
                       "messages": [{"role": "user", "content": f"question {i}"}]}} for i in range(7)]
    source = tmp_path / "questions.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})

    browser.get(f"{gateway.url}/playground/")
    field = browser.find_element(By.ID, "api-key")
    field.clear()  # the tab remembers the key of the test before
    field.send_keys(token + "\n")
    wait_for(lambda: "Connected" in text(browser, "#key-status"), timeout=15, what="connected")
    browser.find_element(By.ID, "batch-file").send_keys(str(source))
    browser.find_element(By.ID, "batch-start").click()
    wait_for(lambda: text(browser, "#batch-status").startswith("Started batch-"), timeout=15,
             what=f"the batch started ({text(browser, '#batch-status')!r})")
    batch_id = text(browser, "#batch-status").split()[1].rstrip(";")
    row = f"#batches tr[data-batch='{batch_id}']"
    wait_for(lambda: text(browser, f"{row} td:nth-child(2)") == "completed", timeout=60, interval=0.5,
             what=f"the batch completed ({text(browser, row)!r})")
    assert text(browser, f"{row} .progress") == "7 of 7 done (6 completed, 1 failed)"
    browser.execute_script("document.getElementById('batches-heading').scrollIntoView()")
    shot(browser, "batch", tmp_path)
    for label, name in (("Output", f"{batch_id}_output.jsonl"), ("Errors", f"{batch_id}_errors.jsonl")):
        click(browser, f"{row} button[data-file]:{'first' if label == 'Output' else 'last'}-of-type")
        wait_for(lambda: (downloads / name).exists(), timeout=15, what=f"{name} downloaded")
    output = [json.loads(x) for x in (downloads / f"{batch_id}_output.jsonl").read_text().splitlines()]
    errors = [json.loads(x) for x in (downloads / f"{batch_id}_errors.jsonl").read_text().splitlines()]
    assert sorted(o["custom_id"] for o in output) == [f"q{i}" for i in range(6)]
    assert all(o["response"]["body"]["usage"]["completion_tokens"] == 3 for o in output)
    assert [e["custom_id"] for e in errors] == ["q6"] and errors[0]["response"]["status_code"] == 404
