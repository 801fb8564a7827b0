"""The web page of `captioner serve` and the report of `captioner caption --html`, in a real browser (headless
Debian chromium driven by selenium): upload, caption, pointing at a word lights its map, the keyboard, errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import captioner
from captioner.cli import main
from captioner.data.images import load_image
from captioner.errors import ImageLoadError
from captioner.serve import create_app
from tests.servers import ThreadServer, browser_missing, chromium

MISSING = browser_missing()
if MISSING and os.environ.get("CI"):
    raise RuntimeError(f"CI runs the browser tests, but {MISSING}")
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def model(caption_checkpoint):
    return captioner.load(caption_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def pictures(shapes_root) -> list[Path]:
    return sorted((Path(shapes_root) / "images").glob("*.png"))[:3]


def wait(browser, condition, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(lambda _: condition())


def problems(browser) -> list[dict]:
    """What the browser logged since the last call, but the refused upload the test asked for (422)."""
    return [entry for entry in browser.get_log("browser") if "status of 422" not in entry["message"]]


def canvas(browser, card) -> str:
    return browser.execute_script("return arguments[0].querySelector('canvas').toDataURL()", card)


def point_at_words(browser, card, words: list[str]) -> None:
    """Pointing at each word draws its map (the card's state and the canvas's pixels change); moving away
    restores the picture; a click pins a word; the keyboard moves along the words and Escape unpins."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    buttons = card.find_elements("css selector", ".cap-caption .cap-word")
    assert [b.text for b in buttons] == words
    wait(browser, lambda: browser.execute_script("return arguments[0].querySelector('canvas').width", card) > 0)
    plain = canvas(browser, card)
    assert card.get_attribute("data-word") == ""
    drawn = set()
    for i, button in enumerate(buttons):
        ActionChains(browser).move_to_element(button).perform()
        assert card.get_attribute("data-word") == str(i)
        drawn.add(canvas(browser, card))
    assert plain not in drawn and len(drawn) >= 1
    ActionChains(browser).move_to_element(card.find_element("css selector", ".cap-name")).perform()
    assert card.get_attribute("data-word") == "" and canvas(browser, card) == plain
    buttons[0].click()  # pin the first word: it stays when the pointer leaves
    ActionChains(browser).move_to_element(card.find_element("css selector", ".cap-name")).perform()
    assert card.get_attribute("data-word") == "0" and buttons[0].get_attribute("aria-pressed") == "true"
    if len(buttons) > 1:
        buttons[0].send_keys(Keys.ARROW_RIGHT)  # the focus moves to the next word, which shows its map
        assert browser.switch_to.active_element == buttons[1] and card.get_attribute("data-word") == "1"
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    browser.execute_script("document.activeElement.blur()")
    assert card.get_attribute("data-word") == "" and buttons[0].get_attribute("aria-pressed") == "false"


def test_the_served_page_captions_an_upload_and_shows_attention(browser, model, pictures, tmp_path):
    expected = model.caption(pictures[:1], beam_size=3, n_best=3)[0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(pictures[0].read_bytes()[:300])  # a cut PNG
    with ThreadServer(create_app(model)) as url:
        browser.get(url)
        upload = browser.find_element("id", "file")
        upload.send_keys(str(pictures[0]))
        wait(browser, lambda: browser.find_elements("css selector", ".cap-card"))
        card = browser.find_element("css selector", ".cap-card")
        assert card.get_attribute("data-image") == pictures[0].name
        point_at_words(browser, card, expected.words)
        options = card.find_elements("css selector", ".cap-candidate")
        assert [o.text for o in options] == [c.caption for c in expected.candidates]
        options[-1].click()  # another of the n best: its own words
        words = [b.text for b in card.find_elements("css selector", ".cap-caption .cap-word")]
        assert words == expected.candidates[-1].words

        upload.send_keys(str(broken))
        message = browser.find_element("id", "message")
        wait(browser, lambda: browser.find_element("id", "upload").get_attribute("data-state") == "error")
        with pytest.raises(ImageLoadError) as cli:  # what `captioner caption` says of the same file
            load_image(broken)
        assert message.text == str(cli.value).replace(str(broken), "broken.png")
        assert message.text.startswith("broken.png: corrupt or truncated image")
        assert len(browser.find_elements("css selector", ".cap-card")) == 1
        browser.save_screenshot(str(tmp_path / "served.png"))
        assert problems(browser) == []


def test_the_report_opens_from_disk_and_shows_attention(browser, caption_checkpoint, model, pictures, tmp_path):
    report = tmp_path / "report.html"
    argv = ["caption", *map(str, pictures), "--checkpoint", str(caption_checkpoint), "--n-best", "2"]
    assert main([*argv, "--html", str(report)]) == 0
    text = report.read_text()
    assert "http://" not in text and "https://" not in text and 'src="' not in text  # nothing from outside
    expected = model.caption(pictures, beam_size=3, n_best=2)
    browser.get(report.as_uri())
    cards = browser.find_elements("css selector", ".cap-card")
    assert [c.get_attribute("data-image") for c in cards] == [p.name for p in pictures]  # no absolute path
    for card, result in zip(cards, expected, strict=True):
        point_at_words(browser, card, result.words)
    assert problems(browser) == []
