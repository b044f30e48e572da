"""Render a report in headless Debian chromium: its DOM text and a screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def render(page: Path, tmp_path: Path, size: tuple[int, int] = (1200, 2400)
           ) -> tuple[str, np.ndarray]:
    """(DOM as chromium built it, RGB screenshot); skips when chromium is not installed."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium not installed (CI installs it)")
    shot = tmp_path / "report.png"
    flags = CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([chromium, *flags, f"--window-size={size[0]},{size[1]}",
                    f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         timeout=120, check=True, text=True).stdout
    return dom, np.asarray(Image.open(shot).convert("RGB")).astype(int)


def dom_text(dom: str) -> str:
    """The visible text of a DOM dump (tags dropped, entities decoded, spaces collapsed)."""
    text = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", text)).split())


def table_text(dom: str, cls: str) -> str:
    """The text of the table with class `cls` ("" when there is none)."""
    match = re.search(rf"<table class=\"{cls}\">.*?</table>", dom, flags=re.S)
    return dom_text(match.group(0)) if match else ""
