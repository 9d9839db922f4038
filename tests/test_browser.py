"""The running app in a real headless browser: `streamlit run` as a subprocess, Debian's chromium
driven by selenium. One prediction on a bundled example, a real (bad) file upload, and a visit to
every main page.

Skipped when chromium/chromedriver are missing, unless CI=true (then it fails). Screenshots of each
main page go to $CLARA_SCREENSHOTS when set (`CLARA_SCREENSHOTS=docs/screenshots python -m pytest
tests/test_browser.py` refreshes the README's), else to a temporary folder.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from clara import app_support as support
from _app_utils import EXAMPLES_DIR, ROOT, require_demo, require_or_skip, text_renamed_png_bytes

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CLARA_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CLARA_CHROMEDRIVER", "/usr/bin/chromedriver")
WINDOW = (1280, 1500)
SIDEBAR_WIDTH, SCROLLBAR_WIDTH = 320, 20  # px of the screenshot taken by the sidebar and the scroll bar
WRITE_SCREENSHOTS = bool(os.environ.get("CLARA_SCREENSHOTS"))
START_TIMEOUT = 90
STEP_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_or_skip(Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file(), "chromium + chromedriver")
    pytest.importorskip("selenium")
    require_demo()
    port = free_port()
    log_path = tmp_path_factory.mktemp("streamlit") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
             "--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start (exit {process.poll()}):\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    server_log = log_path.read_text()
    assert "Traceback" not in server_log, server_log[-3000:]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_window_size(*WINDOW)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ["CLARA_SCREENSHOTS"]) if WRITE_SCREENSHOTS else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def body_text(driver) -> str:
    from selenium.webdriver.common.by import By
    return driver.find_element(By.TAG_NAME, "body").text


def wait_for_text(driver, text: str, timeout: float = STEP_TIMEOUT) -> None:
    from selenium.webdriver.support.ui import WebDriverWait
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: text in body_text(d))
    except Exception:
        pytest.fail(f"{text!r} did not appear within {timeout} s; the page shows:\n{body_text(driver)[-3000:]}")


def wait_until_idle(driver, timeout: float = STEP_TIMEOUT) -> None:
    """Streamlit shows a status widget while a script run is in progress."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    time.sleep(0.5)
    WebDriverWait(driver, timeout, poll_frequency=0.5).until(
        lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'))
    time.sleep(1.0)  # let charts and images paint


def click_button(driver, label: str) -> None:
    from selenium.webdriver.common.by import By
    buttons = [b for b in driver.find_elements(By.TAG_NAME, "button") if b.text.strip() == label]
    assert buttons, f"no button {label!r}"
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", buttons[0])
    buttons[0].click()


def go_to(driver, page: str, ready_text: str) -> None:
    """Navigate with the sidebar (a link click keeps the session, unlike loading a new URL)."""
    from selenium.webdriver.common.by import By
    links = [a for a in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSidebarNavLink"]')
             if a.get_attribute("href").rstrip("/").endswith("/" + page)]
    assert links, f"no sidebar link to {page}"
    links[0].click()
    wait_for_text(driver, ready_text)
    wait_until_idle(driver)


def screenshot(driver, folder: Path, name: str, height: int | None = None) -> Path:
    """Save the page from the top, palette-quantised to keep the PNG small; `height` makes the window
    that tall for this picture (Streamlit scrolls inside the page, so a tall window shows more)."""
    from PIL import Image, ImageChops

    if height:
        driver.set_window_size(WINDOW[0], height)
        wait_until_idle(driver)
    driver.execute_script("document.querySelectorAll('section, [data-testid=\"stMain\"]')"
                          ".forEach(e => e.scrollTo(0, 0)); window.scrollTo(0, 0);")
    time.sleep(0.5)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    picture = Image.open(path).convert("RGB")
    # Crop the empty page below the content (the sidebar runs the full height, so look right of it).
    difference = ImageChops.difference(picture, Image.new("RGB", picture.size, "white")).convert("L")
    content = difference.crop((SIDEBAR_WIDTH, 0, picture.width - SCROLLBAR_WIDTH, picture.height)).point(
        lambda v: 255 if v > 30 else 0).getbbox()  # ignore near-white shading
    if content is not None:
        picture = picture.crop((0, 0, picture.width, min(picture.height, content[3] + 40)))
    picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    if height:
        driver.set_window_size(*WINDOW)
    return path


def test_predict_an_example_in_a_real_browser(server, browser, shots, tmp_path):
    from selenium.webdriver.common.by import By

    example = support.load_examples(EXAMPLES_DIR)[0]
    browser.get(server)
    wait_for_text(browser, "You are using the demo checkpoint")
    wait_until_idle(browser)
    screenshot(browser, shots, "home")

    go_to(browser, "predict", "Try an example")
    click_button(browser, "Try it")
    wait_for_text(browser, f"{example.name} · JPEG · 96x96")  # the chosen image's caption
    wait_until_idle(browser)
    post_box = browser.find_element(By.CSS_SELECTOR, "textarea[aria-label^='Post text']")
    assert post_box.get_attribute("value") == example.text
    click_button(browser, "Predict")
    wait_for_text(browser, f"Prediction: {example.label}")
    wait_until_idle(browser)
    values = [v.text for v in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stMetricValue"]')]
    assert values[0] == example.label
    assert "The verification head" in body_text(browser)
    sidebar = browser.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"]').text
    assert "Checkpoint in use" in sidebar and "demo" in sidebar
    screenshot(browser, shots, "predict", height=2300)

    # a real upload through the browser's file input: a text file named .png is refused on the page
    bad = tmp_path / "notes.png"
    bad.write_bytes(text_renamed_png_bytes())
    browser.find_element(By.CSS_SELECTOR, "input[type='file']").send_keys(str(bad))
    wait_for_text(browser, "not a PNG, JPEG, WebP or GIF image")
    wait_until_idle(browser)
    assert "Traceback" not in body_text(browser)


def test_every_main_page_renders_in_a_real_browser(server, browser, shots):
    browser.get(server)  # a new session
    wait_for_text(browser, "You are using the demo checkpoint")
    wait_until_idle(browser)
    go_to(browser, "predict", "Try an example")
    click_button(browser, "Try it")
    wait_for_text(browser, " · JPEG · 96x96")
    wait_until_idle(browser)
    click_button(browser, "Predict")
    wait_for_text(browser, "Prediction:")
    wait_until_idle(browser)
    go_to(browser, "attention", "Raw attention beside relevancy")
    screenshot(browser, shots, "attention", height=2000)

    go_to(browser, "attributions", "Compute attributions")
    if WRITE_SCREENSHOTS:  # computing takes a while; AppTest covers it, the README shows it
        click_button(browser, "Compute attributions")
        wait_for_text(browser, "Deletion curves")
        wait_until_idle(browser)
        screenshot(browser, shots, "attributions", height=2300)

    go_to(browser, "metrics", "Confusion matrices")
    screenshot(browser, shots, "metrics", height=2300)
    go_to(browser, "errors", "test posts are misclassified")
    screenshot(browser, shots, "errors")
    go_to(browser, "batch", "Batch prediction")
    click_button(browser, "Try it on the bundled examples")
    wait_for_text(browser, "rows predicted")
    wait_until_idle(browser)
    screenshot(browser, shots, "batch")
    assert "Traceback" not in body_text(browser)
