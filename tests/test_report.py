"""report.html: the page's pieces, and what a real browser shows of it (skipped without Chromium)."""
from __future__ import annotations

import numpy as np
import pytest

from common.report.browser import check_page, find_browser
from common.report.build import Thumbnails, headline
from common.report.html import Page, cell, table, thumbnail_uri
from common.tasks.identification import Identification
from common.tasks.video import Video

needs_browser = pytest.mark.skipif(find_browser() is None, reason="Chromium is not installed (apt-get install chromium)")


def test_headline_puts_each_metric_beside_its_baseline_and_says_which_is_better():
    whales = headline(Identification, {"oof_map5": 0.61, "oof_baseline_map5": 0.47, "test_map5": 0.40,
                                       "test_baseline_map5": 0.45})
    assert "0.6100" in whales and "0.4700" in whales and "better by 0.1400" in whales
    assert "not better by 0.0500" in whales
    video = headline(Video, {"oof_logloss": 0.30, "baseline_logloss": 0.6931})  # lower is better
    assert "better by 0.3931" in video and "not better" not in video


def test_page_escapes_text_and_inlines_thumbnails():
    rgb = np.zeros((300, 150, 3), np.uint8)
    uri = thumbnail_uri(rgb, 100)
    assert uri.startswith("data:image/jpeg;base64,")
    page = Page("<run>", "a & b")
    page.add("gallery", cell(uri, ["x"], "right") + table([["<b>ok</b>", 0.5, 3]], ["what", "score", "n"]))
    html = page.render()
    assert "&lt;run&gt;" in html and "a &amp; b" in html and 'class="cell right"' in html
    assert "0.5000" in html and "src=\"http" not in html  # nothing fetched from elsewhere


def test_thumbnails_of_missing_or_broken_files_are_none(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"no image")
    thumbs = Thumbnails({"bad": str(tmp_path / "bad.jpg"), "gone": str(tmp_path / "gone.jpg")}, 64)
    assert thumbs("bad") is None and thumbs("gone") is None and thumbs("unknown") is None


@needs_browser
def test_browser_check_sees_broken_images_and_script_errors(tmp_path):
    good = tmp_path / "good.html"
    page = Page("fine")
    page.add("one", cell(thumbnail_uri(np.full((20, 20, 3), 200, np.uint8)), ["ok"]))
    good.write_text(page.render())
    result = check_page(good, tmp_path / "good.png")
    assert result.ok and result.images == 1 and (tmp_path / "good.png").stat().st_size > 1000

    bad = tmp_path / "bad.html"
    page.add("two", '<img src="data:image/png;base64,AAAA"><img src="missing.png"><script>notDefined();</script>')
    bad.write_text(page.render())
    result = check_page(bad)
    assert not result.ok and result.images == 3 and result.broken_images == 2
    assert any("notDefined" in line for line in result.console)
