"""Headless Chromium for the tests that check a page as a user sees it (the report, MLflow's runs page).

Debian's chromium and chromium-driver (``.ci/run`` installs them with apt when missing) driven by Selenium.
Chromium starts with background networking off: the machine's closed network would otherwise refuse its
connections at every start. ``COTUNE_SCREENSHOTS=DIR`` keeps each screenshot in DIR (docs/img/ for the docs).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)


@contextmanager
def browser() -> Iterator:
    """A Selenium WebDriver on headless Chromium; the test fails (not skips) without it, as CI installs it."""
    from selenium import webdriver

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail("Chromium and ChromeDriver are needed: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    try:
        yield chrome
    finally:
        chrome.quit()


def screenshot(chrome, path: Path, *, keep_as: str) -> Path:  # noqa: ANN001 - a WebDriver
    """The whole page's height as a PNG at ``path`` (and in $COTUNE_SCREENSHOTS as ``keep_as``)."""
    height = chrome.execute_script("return document.body.scrollHeight")
    chrome.set_window_size(1400, min(max(int(height) + 100, 600), 6000))
    chrome.save_screenshot(str(path))
    keep = os.environ.get("COTUNE_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / keep_as)
    return path


def blank(path: Path) -> bool:
    """Whether a screenshot is (nearly) one colour: nothing rendered."""
    import matplotlib.image as mpimg
    import numpy as np

    pixels = mpimg.imread(str(path))[..., :3].reshape(-1, 3)
    colours = np.unique((pixels * 255).astype(np.uint8), axis=0)
    return len(colours) < 16
