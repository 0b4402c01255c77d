"""Drive the explore page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, via selenium).

Used by the browser test and to make the README's screenshot; nothing is downloaded (the browser and its
driver come from the system, selenium's driver manager is kept offline).

    python -m safeclip.explore.browser --url http://127.0.0.1:7860/ --query "a red circle covered in blood" \\
        --screenshot docs/explore.png

Install once: ``apt-get install -y chromium chromium-driver`` and ``pip install selenium``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Flags that work offline and in containers (no sandbox, no GPU, no background network, a fresh profile).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")


def browser_missing() -> str | None:
    """Why a headless browser cannot be started here, or None when it can."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing: apt-get install -y chromium chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install selenium (in the test extra)"
    return None


def open_chromium(*, width: int = 1400, height: int = 1000):
    """A selenium WebDriver around headless Chromium with a fresh profile; call ``quit()`` when done."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium's manager look for a driver online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="safeclip-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.profile_dir = profile  # removed by close_chromium
    return driver


def close_chromium(driver) -> None:
    driver.quit()
    shutil.rmtree(getattr(driver, "profile_dir", ""), ignore_errors=True)


def wait_for(driver, condition, *, timeout: float = 120.0, what: str = "the page"):
    """Poll ``condition(driver)`` until it returns something truthy; fail with the page's message after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition(driver)
        if value:
            return value
        time.sleep(0.2)
    message = driver.execute_script("return document.getElementById('message').textContent")
    raise TimeoutError(f"waited {timeout:.0f} s for {what}; the page says: {message!r}")


def wait_until_ready(driver, *, timeout: float = 300.0) -> None:
    """Wait until every model has loaded and embedded the gallery (or failed, with a message)."""
    wait_for(driver, lambda d: d.execute_script("return document.body.dataset.ready === 'true'"), timeout=timeout,
             what="the models to load and embed the gallery")


def read_columns(driver) -> dict[str, list[dict]]:
    """The ranked results shown on the page: ``{model label: [{rank, index, label, score, blurred, src}, ...]}``."""
    return driver.execute_script("""
        const out = {};
        for (const col of document.querySelectorAll('.column')) {
          out[col.dataset.model] = [...col.querySelectorAll('li.result')].map((li) => {
            const img = li.querySelector('img');
            return {rank: Number(li.dataset.rank), index: Number(li.dataset.index), label: li.dataset.label,
                    score: Number(li.dataset.score), blurred: img ? img.dataset.blurred === 'true' : null,
                    src: img ? img.getAttribute('src') : null,
                    loaded: img ? img.complete && img.naturalWidth > 0 : null};
          });
        }
        return out;""")


def submit_query(driver, text: str, *, k: int | None = None) -> dict[str, list[dict]]:
    """Type ``text`` into the query box, press Enter and return the columns once results or a message show."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.execute_script("document.getElementById('results').replaceChildren();"
                          "document.getElementById('message').hidden = true;")
    if k is not None:
        field = driver.find_element(By.ID, "k")
        field.clear()
        field.send_keys(str(k))
    box = driver.find_element(By.ID, "query")
    box.clear()
    box.send_keys(text, Keys.ENTER)
    wait_for(driver, lambda d: d.execute_script(
        "return document.querySelectorAll('.column').length > 0 || !document.getElementById('message').hidden"),
        timeout=60, what=f"results for {text!r}")
    return read_columns(driver)


def page_message(driver) -> str:
    """The message box's text ('' when hidden)."""
    return driver.execute_script("const m = document.getElementById('message'); return m.hidden ? '' : m.textContent")


def set_reveal(driver, on: bool) -> None:
    """Turn the page's reveal switch on or off and wait for every image to load again."""
    from selenium.webdriver.common.by import By

    switch = driver.find_element(By.ID, "reveal")
    if switch.is_selected() != on:
        switch.click()
    wait_for(driver, lambda d: d.execute_script(
        "return [...document.querySelectorAll('img')].every((i) => i.complete && i.naturalWidth > 0)"),
        timeout=30, what="the images to load")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Open the explore page headless, run one query, save a screenshot.")
    parser.add_argument("--url", required=True, help="the page, e.g. http://127.0.0.1:7860/")
    parser.add_argument("--query", required=True, help="text query to type")
    parser.add_argument("--k", type=int, default=8, help="results per model")
    parser.add_argument("--screenshot", required=True, help="PNG file to write")
    parser.add_argument("--width", type=int, default=1400, help="window width in pixels")
    parser.add_argument("--height", type=int, default=900, help="window height in pixels")
    args = parser.parse_args(argv)
    problem = browser_missing()
    if problem:
        parser.error(problem)
    driver = open_chromium(width=args.width, height=args.height)
    try:
        driver.get(args.url)
        wait_until_ready(driver)
        columns = submit_query(driver, args.query, k=args.k)
        set_reveal(driver, False)
        for label, results in columns.items():
            print(label, [(r["rank"], r["label"], r["score"]) for r in results])
        Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(args.screenshot)
        print(f"wrote {args.screenshot}")
    finally:
        close_chromium(driver)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
