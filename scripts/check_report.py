"""Open an output folder's report (index.html) in headless Chromium and check what it shows:
one row per finished or failed video, every image loaded, each failure's reason visible,
the totals, no error in the browser's console. Prints the findings as JSON; exit status 1 if
a check fails, 2 if Chromium, chromedriver or selenium is missing.

python scripts/check_report.py out --screenshot report.png

Needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver) and
``pip install selenium``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from surgseg.tables import find_videos

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1440,900",
]


def missing() -> str | None:
    """Why the check cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).is_file():
            return f"{path} not found (apt-get install -y chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


def _wait_for_images(driver, timeout: float = 20.0) -> list[dict]:
    """Scroll each <img> into view (they load lazily) and wait until it has loaded or failed."""
    images = driver.find_elements("css selector", "img")
    for image in images:
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", image)
        deadline = time.monotonic() + timeout
        while not driver.execute_script("return arguments[0].complete;", image):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    return [
        driver.execute_script(
            "const i = arguments[0]; return {src: i.getAttribute('src'), "
            "width: i.naturalWidth, height: i.naturalHeight, complete: i.complete};",
            image,
        )
        for image in images
    ]


def check(output_dir: Path, screenshot: Path | None = None) -> dict:
    """Load ``output_dir/index.html`` in headless Chromium; return the findings, with
    ``problems`` listing every failed check."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    page = (output_dir / "index.html").resolve()
    entries = find_videos(output_dir)
    profile = tempfile.mkdtemp(prefix="check-report-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(60)
        driver.get(page.as_uri())
        rows = driver.find_elements("css selector", "table.videos tbody tr")
        images = _wait_for_images(driver)
        reasons = [
            " ".join(e.text.split())
            for e in driver.find_elements("css selector", ".reason")
            if e.is_displayed()
        ]
        totals = " ".join(driver.find_element("css selector", ".totals").text.split())
        console = [m for m in driver.get_log("browser") if m.get("level") == "SEVERE"]
        if screenshot is not None:
            height = driver.execute_script("return document.documentElement.scrollHeight;")
            metrics = {"width": 1440, "height": min(int(height), 8000), "deviceScaleFactor": 1,
                       "mobile": False}  # fmt: skip
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
            driver.execute_script("window.scrollTo(0, 0);")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)

    failed = [e for e in entries if e.status == "failed"]
    done = len(entries) - len(failed)
    problems = []
    if len(rows) != len(entries):
        problems.append(f"{len(rows)} rows shown, {len(entries)} videos in the folder")
    problems += [f"image not loaded: {i['src']}" for i in images if not i["width"]]
    for entry in failed:
        reason = " ".join(str(entry.record.get("reason")).split())
        if not any(reason in shown for shown in reasons):
            problems.append(f"reason of {entry.name} not visible: {reason!r}")
    if not totals.startswith(f"{done:,} videos done {len(failed):,} failed"):
        problems.append(f"totals say {totals!r}, expected {done} done and {len(failed)} failed")
    problems += [f"console: {m['message']}" for m in console]
    return {
        "page": str(page),
        "rows": len(rows),
        "videos": len(entries),
        "images": len(images),
        "images_loaded": sum(1 for i in images if i["width"] > 0),
        "reasons_visible": reasons,
        "totals": totals,
        "screenshot": None if screenshot is None else str(screenshot),
        "problems": problems,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("output_dir", type=Path, help="the output folder holding index.html")
    parser.add_argument("--screenshot", type=Path, help="save a PNG of the whole page here")
    args = parser.parse_args()
    if (why := missing()) is not None:
        print(f"check_report: {why}", file=sys.stderr)
        return 2
    if not (args.output_dir / "index.html").is_file():
        print(f"check_report: {args.output_dir / 'index.html'}: no such file", file=sys.stderr)
        return 1
    findings = check(args.output_dir, args.screenshot)
    print(json.dumps(findings, indent=2))
    return 1 if findings["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
