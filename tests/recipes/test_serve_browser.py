"""The ``eartalk serve`` page in a real headless Chromium (Debian's chromium + chromium-driver,
driven by selenium; no browser is downloaded): Start with the bundled face and speech, move the
yaw slider mid-stream, check that frames render and the acknowledgement arrives, save a screenshot.

Skips, saying why, where chromium, chromedriver or selenium is missing (.ci/run installs them).
The screenshot goes to ``$EARTALK_TEST_ARTIFACTS`` (default: the test's temporary folder).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _missing() -> str | None:
    if CHROMIUM is None:
        return "chromium is not installed (apt-get install chromium chromium-driver)"
    if CHROMEDRIVER is None:
        return "chromedriver is not installed (apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


# slow: starting Chromium and a server takes 20-60 s here; CI runs the slow tests too.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(_missing() is not None, reason=f"browser test skipped: {_missing()}")]


@pytest.fixture(autouse=True)
def _block_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replaces the suite's guard: loopback (the server, chromedriver) is allowed, nothing else."""
    real_connect, real_bind = socket.socket.connect, socket.socket.bind

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            if host not in ("localhost", "") and not ipaddress.ip_address(host).is_loopback:
                raise RuntimeError(f"tests may only reach loopback addresses, not {host}")

    monkeypatch.setattr(socket.socket, "connect", lambda s, a: (check(s, a), real_connect(s, a))[1])
    monkeypatch.setattr(socket.socket, "bind", lambda s, a: (check(s, a), real_bind(s, a))[1])


def make_driver(profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1280,900", f"--user-data-dir={profile}",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):  # a fake microphone (a beep)
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def wait_for(driver: Any, script: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    errors = driver.execute_script("return window.eartalk && window.eartalk.errors")
    raise AssertionError(f"timed out waiting for: {script} (page errors: {errors})")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The server on a free loopback port and a headless Chromium (yields both)."""
    from eartalk.recipes.serving.server import ServeConfig, load_model, start_in_thread

    running = start_in_thread(load_model(preset="tiny"), ServeConfig(port=0))
    driver = make_driver(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield running, driver
    finally:
        driver.quit()
        running.close()


def test_page_streams_and_a_slider_moved_mid_stream_is_acknowledged(page, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    running, driver = page
    artifacts = Path(os.environ.get("EARTALK_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    driver.get(running.url + "/")
    wait_for(driver, "return document.getElementById('slider-head_pose-yaw') !== null")
    seconds = driver.find_element(By.ID, "speech-seconds")
    seconds.clear()
    seconds.send_keys("6")
    driver.find_element(By.ID, "start").click()
    wait_for(driver, "return window.eartalk.framesDrawn >= 10")
    drawn_before = driver.execute_script("return window.eartalk.framesDrawn")
    slider = driver.find_element(By.ID, "slider-head_pose-yaw")
    for _ in range(10):
        slider.send_keys(Keys.ARROW_RIGHT)  # a person moving the slider: input events, one control each
    ack = wait_for(driver, "return window.eartalk.acks.find(a => a.name === 'head_pose')")
    assert ack["frame"] >= drawn_before and not ack["cleared"]
    wait_for(driver, f"return window.eartalk.framesDrawn >= {drawn_before + 15}")
    time.sleep(0.3)
    shot = artifacts / "serve_page.png"
    driver.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    pixels = driver.execute_script(
        "const c = document.getElementById('view'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let lo = 255, hi = 0; for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }"
        "return [lo, hi];")
    assert pixels[1] - pixels[0] > 20, f"the canvas shows a frame, not a flat colour: {pixels}"
    yaw = float(driver.find_element(By.CSS_SELECTOR, "#control-head_pose output").text)
    assert yaw > 0, "the slider moved"
    acks_listed = driver.find_elements(By.CSS_SELECTOR, "#acks li")
    assert acks_listed and "head_pose set -> frame" in acks_listed[-1].text
    assert driver.execute_script("return window.eartalk.errors") == []
    fps = driver.find_element(By.ID, "stat-fps").text
    assert fps != "-", "the page shows its fps"
    assert float(driver.find_element(By.ID, "stat-latency").text) > 0
    voice = driver.find_element(By.ID, "stat-voice").text
    assert voice.startswith(("speaking", "listening")), f"the page shows the voice state: {voice!r}"
    driver.find_element(By.ID, "stop").click()
    wait_for(driver, "return document.getElementById('stat-state').textContent.startsWith('ended')"
                     " || document.getElementById('stat-state').textContent === 'idle'")


def stream_with_speech(page, speech: str, frames: int, check) -> None:
    """Open the page, pick ``speech``, Start, wait for ``frames`` drawn frames, run ``check(driver)``, Stop."""
    from selenium.webdriver.common.by import By

    running, driver = page
    driver.get(running.url + "/")
    wait_for(driver, "return document.getElementById('slider-head_pose-yaw') !== null")
    driver.find_element(By.CSS_SELECTOR, f"input[name=speech][value={speech}]").click()
    driver.find_element(By.ID, "start").click()
    wait_for(driver, f"return window.eartalk.framesDrawn >= {frames}", timeout=90)
    assert driver.execute_script("return window.eartalk.errors") == []
    check(driver)
    driver.find_element(By.ID, "stop").click()
    wait_for(driver, "return !document.getElementById('start').disabled")


def test_page_listening_mode_says_listening(page) -> None:
    """speech "none" on the page: the listening mode, shown as such."""
    from selenium.webdriver.common.by import By

    def check(driver) -> None:
        assert driver.find_element(By.ID, "stat-voice").text.startswith("listening")

    stream_with_speech(page, "none", 5, check)


def test_page_streams_from_the_microphone(page) -> None:
    """Chromium's fake microphone, through the page's 16 kHz chunks, drives the stream."""
    from selenium.webdriver.common.by import By

    def check(driver) -> None:
        assert "streaming" in driver.find_element(By.ID, "stat-state").text

    stream_with_speech(page, "microphone", 10, check)
