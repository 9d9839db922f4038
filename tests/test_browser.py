"""The running app in a real headless browser: `streamlit run` as a subprocess (pointed at copies of
the bundled demos), Debian's chromium driven by selenium. The main journey: upload an example image
(OCR pre-fills the meme's text), predict, choose a patch by clicking the picture on Attention,
Attributions at their defaults, Metrics; a real (bad) upload; the layout on a phone-sized window.

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

from clara_app.gallery import load_examples
from clara_app.state import CHECKPOINTS_ENV, RESULTS_ENV
from _app_utils import EXAMPLES_DIR, ROOT, bundled_app_folders, require_demo, require_or_skip, text_renamed_png_bytes

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CLARA_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CLARA_CHROMEDRIVER", "/usr/bin/chromedriver")
WINDOW = (1280, 1500)
PHONE = (390, 844)
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
    folders = bundled_app_folders(tmp_path_factory.mktemp("app_folders"))  # never the user's own runs
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "2",
           CHECKPOINTS_ENV: str(folders.checkpoints), RESULTS_ENV: str(folders.results)}
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


def element_top(driver, css: str) -> float:
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, css).rect["y"]


def click_picture(driver, chart_key: str, dx: float = 0.0, dy: float = 0.0) -> None:
    """Click a plotly chart's plot area at (dx, dy) from its centre, in fractions of its size."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    chart = driver.find_element(By.CSS_SELECTOR, f".st-key-{chart_key} [data-testid='stPlotlyChart']")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", chart)
    time.sleep(0.5)
    plot = chart.find_element(By.CSS_SELECTOR, ".nsewdrag")
    size = plot.rect
    ActionChains(driver).move_to_element_with_offset(plot, int(dx * size["width"]), int(dy * size["height"])) \
        .click().perform()


def selected_option(driver, label_start: str) -> str:
    """The shown value of the select box whose label starts with `label_start`."""
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, f"input[aria-label^='{label_start}']").get_attribute("value")


def test_the_main_journey_in_a_real_browser(server, browser, shots, tmp_path):
    """Upload the meme, predict, click a patch on Attention, Attributions at the defaults, Metrics."""
    from selenium.webdriver.common.by import By

    meme = next(e for e in load_examples(EXAMPLES_DIR) if e.name.startswith("meme_"))
    browser.get(server)
    wait_for_text(browser, "You are using the demo checkpoint")
    wait_until_idle(browser)
    screenshot(browser, shots, "home")

    go_to(browser, "predict", "try an example")
    browser.find_element(By.CSS_SELECTOR, "input[type='file']").send_keys(str(meme.image_path))
    wait_for_text(browser, f"{meme.image_path.name} · JPEG")  # the uploaded image's caption
    wait_for_text(browser, "OCR read")  # rapidocr (requirements.txt) or tesseract pre-fills the image text
    wait_until_idle(browser)
    image_text = browser.find_element(By.CSS_SELECTOR, "textarea[aria-label^='Text in the image']")
    assert meme.note.split("'")[1] in image_text.get_attribute("value").split()
    click_button(browser, "Predict")
    wait_for_text(browser, f"Prediction: {meme.label}")
    wait_until_idle(browser)
    values = [v.text for v in browser.find_elements(By.CSS_SELECTOR, '[data-testid="stMetricValue"]')]
    assert values[0] == meme.label
    assert "Uncertainty head" in body_text(browser) and "The verification head" in body_text(browser)
    # wide screen: the result stands beside the input, not below it
    result_top = element_top(browser, '[data-testid="stHeading"]:has(h2)')
    assert result_top < element_top(browser, "textarea[aria-label^='Post text']")
    sidebar = browser.find_element(By.CSS_SELECTOR, '[data-testid="stSidebar"]').text
    assert "Checkpoint in use" in sidebar and "demo" in sidebar
    screenshot(browser, shots, "predict", height=1800)

    go_to(browser, "attention", "Raw attention beside relevancy")
    assert selected_option(browser, "Image patch") == "all patches (mean)"
    grid = int(body_text(browser).split(" patches of ")[0].split("·")[-1].strip().split("x")[0])
    row, column = 1, grid - 2  # a click at the centre of that patch of the (square) picture
    click_picture(browser, "attention_patch_picker", (column + 0.5) / grid - 0.5, (row + 0.5) / grid - 0.5)
    wait_until_idle(browser)
    chosen = f"row {row + 1}, column {column + 1}"
    assert selected_option(browser, "Image patch") == chosen
    wait_for_text(browser, f"Attention of {chosen} on each word", timeout=30)  # the bars redrawn for it
    screenshot(browser, shots, "attention", height=2600)

    go_to(browser, "attributions", "Compute attributions")
    click_button(browser, "Compute attributions")  # every setting at its default
    wait_for_text(browser, "Time per step on this server")
    wait_until_idle(browser)
    assert "did not converge" not in body_text(browser)
    assert "Deletion curves" not in [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    screenshot(browser, shots, "attributions", height=2600)

    go_to(browser, "metrics", "Confusion matrices")
    screenshot(browser, shots, "metrics", height=2600)
    assert "Traceback" not in body_text(browser)


def test_a_bad_upload_and_the_other_pages_in_a_real_browser(server, browser, shots, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server)  # a new session
    wait_for_text(browser, "You are using the demo checkpoint")
    wait_until_idle(browser)
    go_to(browser, "predict", "try an example")
    # a real upload through the browser's file input: a text file named .png is refused on the page
    bad = tmp_path / "notes.png"
    bad.write_bytes(text_renamed_png_bytes())
    browser.find_element(By.CSS_SELECTOR, "input[type='file']").send_keys(str(bad))
    wait_for_text(browser, "not a PNG, JPEG, WebP or GIF image")
    wait_until_idle(browser)

    go_to(browser, "errors", "test posts are misclassified")
    screenshot(browser, shots, "errors")
    go_to(browser, "batch", "Batch prediction")
    click_button(browser, "Try it on the bundled examples")
    wait_for_text(browser, "rows predicted")
    wait_until_idle(browser)
    screenshot(browser, shots, "batch")
    assert "Traceback" not in body_text(browser)


def test_on_a_phone_the_uploader_comes_before_the_gallery(server, browser):
    browser.set_window_size(*PHONE)
    try:
        browser.get(f"{server}/predict")  # a new session; on a phone the sidebar is folded away
        wait_for_text(browser, "try an example")
        wait_until_idle(browser)
        uploader = element_top(browser, '[data-testid="stFileUploader"]')
        first_example = element_top(browser, '[data-testid="stImage"]')
        post_text = element_top(browser, "textarea[aria-label^='Post text']")
        assert uploader < first_example < post_text
        assert post_text - uploader < 2 * PHONE[1], "the gallery pushes the text boxes far below the uploader"
    finally:
        browser.set_window_size(*WINDOW)


def test_a_page_keeps_its_widget_values_across_a_visit_elsewhere(server, browser):
    """Each page declares the widgets it keeps (clara_app.state.keep_widgets): text typed on
    Predict is still there after a visit to Metrics (Streamlit would drop it otherwise)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server)  # a new session
    wait_for_text(browser, "You are using the demo checkpoint")
    wait_until_idle(browser)
    go_to(browser, "predict", "try an example")
    post_box = browser.find_element(By.CSS_SELECTOR, "textarea[aria-label^='Post text']")
    post_box.send_keys("kept while away", Keys.CONTROL, Keys.ENTER)  # ctrl+enter submits a text area
    wait_until_idle(browser)
    go_to(browser, "metrics", "Confusion matrices")
    go_to(browser, "predict", "try an example")
    post_box = browser.find_element(By.CSS_SELECTOR, "textarea[aria-label^='Post text']")
    assert post_box.get_attribute("value") == "kept while away"
