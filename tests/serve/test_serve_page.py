"""The chat page in a real browser: Debian's Chromium (/usr/bin/chromium) driven by Playwright.

Playwright's own browser download is never used. Without Chromium the test skips, except in CI
(CI=true), where a missing browser is a failure: `make test` installs it with
scripts/install_test_browser.sh. The screenshot lands in test-artifacts/serve_page.png.
"""
from __future__ import annotations

import base64
import os
import tempfile
from pathlib import Path

import pytest
from helpers.server import LiveServer, direct, load_assistant
from PIL import Image, ImageDraw

from llava_lite.serve import Settings, create_app

pytestmark = pytest.mark.slow  # a live server driven by a real browser

CHROMIUM = Path("/usr/bin/chromium")
# Closed network: without these, Chromium waits on background connections that never come.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
MAX_TOKENS = 24  # the server's default, as the page sends no max_tokens


@pytest.fixture(scope="module")
def page():
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing; scripts/install_test_browser.sh installs Debian's chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=ARGS, headless=True, viewport={"width": 900, "height": 760})
        yield context.new_page()
        context.close()


@pytest.fixture(scope="module")
def server(assistant):
    settings = Settings(model_name="tiny-llava", default_max_tokens=MAX_TOKENS, max_image_pixels=200 * 200)
    with LiveServer(create_app(assistant, settings)) as live:
        yield live


def shapes(path: Path, size: tuple[int, int] = (160, 120)) -> bytes:
    img = Image.new("RGB", size, "#dfe3ea")
    draw = ImageDraw.Draw(img)
    draw.ellipse((20, 20, 70, 70), fill="red")
    draw.rectangle((90, 50, 140, 100), fill="blue")
    img.save(path)
    return path.read_bytes()


def answers(page) -> list[str]:
    """Text of each finished answer on the page."""
    page.wait_for_function("!document.querySelector('.msg.streaming')")
    return page.locator(".msg.assistant p").evaluate_all("ps => ps.map(p => p.textContent)")


def test_upload_ask_stream_follow_up_and_reset(page, server, assistant, tmp_path):
    image = shapes(tmp_path / "shapes.png")
    page.goto(server.url)
    page.wait_for_function("document.getElementById('model').textContent === 'tiny-llava'")
    page.fill("#temperature", "0")
    page.set_input_files("#file", str(tmp_path / "shapes.png"))
    page.wait_for_selector("#preview:not([hidden])")
    # Record every text the answer shows while it streams in.
    page.evaluate("""() => { window.seen = [];
        new MutationObserver(() => { const p = document.querySelector('.msg.assistant:last-child p');
                                     if (p && p.textContent) window.seen.push(p.textContent); })
            .observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true}); }""")
    page.fill("#prompt", "What is in the picture?")
    page.click("#send")
    first = direct(assistant, [("user", "What is in the picture?")], [image], max_new_tokens=MAX_TOKENS)
    assert answers(page) == [first.text]
    seen = page.evaluate("window.seen")
    assert len(set(seen)) > 2 and all(first.text.startswith(s) for s in seen), seen  # grew piece by piece

    page.fill("#prompt", "And what colour is the circle?")
    page.press("#prompt", "Enter")
    turns = [("user", "What is in the picture?"), ("assistant", first.text), ("user", "And what colour is the circle?")]
    second = direct(assistant, turns, [image], max_new_tokens=MAX_TOKENS)
    assert answers(page) == [first.text, second.text]
    assert page.locator(".msg.user img").count() == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)

    # An image dragged onto the page; the server refuses it (too many pixels): the error is shown
    # and the turn is given back to retry.
    big = base64.b64encode(shapes(tmp_path / "big.png", (300, 300))).decode()
    page.evaluate("""(b64) => { const dt = new DataTransfer();
        dt.items.add(new File([Uint8Array.from(atob(b64), c => c.charCodeAt(0))], 'big.png', {type: 'image/png'}));
        document.getElementById('drop').dispatchEvent(
            new DragEvent('drop', {dataTransfer: dt, bubbles: true})); }""", big)
    page.wait_for_selector("#preview:not([hidden])")
    page.fill("#prompt", "What about this one?")
    page.click("#send")
    page.wait_for_selector("#error:not([hidden])")
    assert "413" in page.text_content("#error") and "pixels" in page.text_content("#error")
    assert page.input_value("#prompt") == "What about this one?" and len(answers(page)) == 2

    # A file that is not an image is refused in the page itself.
    (tmp_path / "notes.txt").write_text("not an image")
    page.set_input_files("#file", str(tmp_path / "notes.txt"))
    page.wait_for_function("document.getElementById('error').textContent.includes('notes.txt')")

    page.click("#reset")
    assert answers(page) == [] and page.is_hidden("#error") and page.is_hidden("#preview")
    page.fill("#prompt", "Hello again.")
    page.click("#send")
    assert answers(page) == [direct(assistant, [("user", "Hello again.")], max_new_tokens=MAX_TOKENS).text]


def test_page_with_api_key(page, assistant):
    with LiveServer(create_app(assistant, Settings(api_key="sekret", default_max_tokens=MAX_TOKENS))) as live:
        page.goto(live.url)
        page.wait_for_selector("#key-label:not([hidden])")
        page.fill("#temperature", "0")
        page.fill("#prompt", "Hi")
        page.click("#send")
        page.wait_for_selector("#error:not([hidden])")
        assert "401" in page.text_content("#error")
        page.fill("#api-key", "sekret")
        page.click("#send")
        assert answers(page) == [direct(assistant, [("user", "Hi")], max_new_tokens=MAX_TOKENS).text]
        assert page.is_hidden("#error")


def screenshot(model_dir: str, image: str, out: str, *questions: str) -> None:
    """The page serving a trained model, after `questions` about `image` (docs/serve_page.png):
    python tests/serve/test_serve_page.py runs/demo/stage2 IMAGE docs/serve_page.png "Describe the image." ..."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw, \
            LiveServer(create_app(load_assistant(Path(model_dir)), Settings(model_name=Path(model_dir).name))) as live:
        shown = Path(tmp) / Path(image).name  # the demo's 64 px images, shown 4x larger (pixels repeated)
        with Image.open(image) as img:
            img.resize((img.width * 4, img.height * 4), Image.NEAREST).save(shown)
        context = pw.chromium.launch_persistent_context(
            Path(tmp) / "profile", executable_path=str(CHROMIUM), args=ARGS, headless=True,
            viewport={"width": 900, "height": 720})
        page = context.new_page()
        page.goto(live.url)
        page.fill("#temperature", "0")
        page.set_input_files("#file", str(shown))
        for question in questions:
            page.fill("#prompt", question)
            page.click("#send")
            print(question, "->", answers(page)[-1])
        page.screenshot(path=out, full_page=True)
        context.close()


if __name__ == "__main__":
    import sys

    screenshot(*sys.argv[1:])
