"""The web demo in a real browser (``make e2e``): ``medvill serve`` runs as a subprocess on a
free local port against tiny real checkpoints, and headless Chromium (Debian's ``chromium``,
driven by Playwright; no browser download) uploads images, reads the results, clicks a word,
asks a question, and uploads bad files.  A screenshot goes to the test's tmp folder (and to
``$MEDVILL_E2E_SCREENSHOTS`` when set)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medvill.labels import CHEXPERT_OBSERVATIONS

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("MEDVILL_CHROMIUM", "/usr/bin/chromium")
# Playwright adds --headless (headless=True) and --user-data-dir (a fresh folder per run); the
# rest keeps Chromium off the network and quiet on a machine without a display or GPU.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``medvill serve`` in a subprocess; its output goes to ``log``."""

    def __init__(self, checkpoint: Path, log: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        script = Path(sys.executable).with_name("medvill")
        cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "medvill"]
        cmd += ["serve", "--checkpoint", str(checkpoint), "--port", str(self.port), "--device", "cpu",
                "--max-upload-mb", "1", *extra]
        self._out = log.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1", "MEDVILL_LOG": "INFO"})
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"medvill serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "api/info", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"medvill serve did not answer within 120 s:\n{self.output()}")
            time.sleep(0.2)

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._out.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make e2e` (it installs Debian's chromium) "
                    "or set MEDVILL_CHROMIUM")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture
def page(browser):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def keep_screenshot(path: Path) -> None:
    folder = os.environ.get("MEDVILL_E2E_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)


def test_upload_report_probabilities_attention_question_and_bad_files(page, tiny_demo_dir, synthetic_root, tmp_path):
    from playwright.sync_api import expect

    sample = sorted((synthetic_root / "images").glob("*.png"))[0]
    answers = json.loads((tiny_demo_dir / "finetune" / "vqa-MedViLL-BAR" / "answers.json").read_text())
    # the tiny 2-step generation model repeats "." greedily; a 1-gram ban makes it write words to click
    server = Server(tiny_demo_dir, tmp_path / "server.log", "--no-repeat-ngram", "1")
    try:
        page.goto(server.url)
        expect(page.locator("#checkpoint")).to_contain_text(str(tiny_demo_dir))
        expect(page.locator("#limit")).to_have_text("1.0 MB")

        # a good image: report, probabilities, similar reports
        page.set_input_files("#file", str(sample))
        expect(page.locator("#report .word").first).to_be_visible()
        assert page.inner_text("#report").strip()
        rows = page.locator("#probabilities tbody tr")
        expect(rows).to_have_count(len(CHEXPERT_OBSERVATIONS))
        names = rows.locator("td:first-child").all_inner_texts()
        assert sorted(names) == sorted(CHEXPERT_OBSERVATIONS)
        values = [float(v) for v in rows.locator("td.num").all_inner_texts()]
        assert all(0.0 <= v <= 1.0 for v in values) and values == sorted(values, reverse=True)
        expect(page.locator("#similar li")).to_have_count(5)
        expect(page.locator("#image-caption")).to_contain_text(f"{sample.name}: 64 x 64 px")
        preview = page.get_attribute("#image", "src")

        # click a word: the image becomes its attention overlay
        word = page.locator("#report .word").first
        text = word.inner_text()
        word.click()
        expect(page.locator("#image-caption")).to_contain_text(f'attention of "{text}"')
        expect(word).to_have_class("word selected")
        overlay = page.get_attribute("#image", "src")
        assert overlay.startswith("data:image/png;base64,") and overlay != preview
        page.select_option("#layer", "mean")
        expect(page.locator("#image-caption")).to_contain_text("mean of layers")

        # a question
        page.fill("#question", "is there a pleural effusion?")
        page.click("#ask")
        expect(page.locator("#answer strong")).to_be_visible()
        assert page.inner_text("#answer strong") in answers
        expect(page.locator("#answer")).to_contain_text("Top answers:")
        expect(page.locator("#message")).to_be_hidden()

        shot = tmp_path / "web-demo.png"
        page.screenshot(path=str(shot), full_page=True)
        with Image.open(shot) as im:
            assert im.width == 1280 and im.height >= 900
        keep_screenshot(shot)

        # bad files: a visible message, never a stack trace; the previous results stay
        message = page.locator("#message")
        page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                              "buffer": b"this is not an image\n"}])
        expect(message).to_be_visible()
        expect(message).to_contain_text("notes.txt is not an image that can be read")
        expect(message).to_contain_text("The results of the previous image are still shown.")
        page.set_input_files("#file", files=[{"name": "big.png", "mimeType": "image/png",
                                              "buffer": bytes(int(1.5 * 1024 * 1024))}])
        expect(message).to_contain_text("big.png is 1.5 MB; the limit is 1.0 MB")
        data = sample.read_bytes()
        page.set_input_files("#file", files=[{"name": "broken.png", "mimeType": "image/png",
                                              "buffer": data[: len(data) // 2]}])
        expect(message).to_contain_text("broken.png could not be decoded")
        assert "Traceback" not in message.inner_text()
        expect(page.locator("#probabilities tbody tr")).to_have_count(len(CHEXPERT_OBSERVATIONS))

        # a 16-bit PNG is accepted, and the page says how it was read
        deep = np.random.default_rng(0).integers(0, 4096, (96, 80)).astype(np.uint16)
        page.set_input_files("#file", files=[{"name": "deep.png", "mimeType": "image/png", "buffer": png(deep)}])
        expect(page.locator("#image-notes")).to_contain_text("16-bit image: read as 12-bit values")
        expect(page.locator("#image-caption")).to_contain_text("deep.png: 80 x 96 px (16-bit)")
        expect(message).to_be_hidden()
        expect(page.locator("#report .word").first).to_be_visible()
    finally:
        server.stop()
    log = server.output()
    assert "notes.txt is not an image" in log and "broken.png could not be decoded" in log  # the server logs them
    assert "Traceback" not in log


def test_missing_tasks_show_a_note(page, tiny_demo_dir, synthetic_root, tmp_path):
    from playwright.sync_api import expect

    folder = tmp_path / "only-classification"
    shutil.copytree(tiny_demo_dir / "finetune" / "classification-MedViLL-BAR",
                    folder / "finetune" / "classification-MedViLL-BAR")
    server = Server(folder, tmp_path / "server.log")
    try:
        page.goto(server.url)
        for task in ("generation", "vqa", "retrieval"):
            note = page.locator(f'section[data-task="{task}"] .note')
            expect(note).to_be_visible()
            expect(note).to_contain_text(f"no {task} checkpoint in {folder}")
        expect(page.locator('section[data-task="classification"] .note')).to_be_hidden()
        page.set_input_files("#file", str(sorted((synthetic_root / "images").glob("*.png"))[0]))
        expect(page.locator("#probabilities tbody tr")).to_have_count(len(CHEXPERT_OBSERVATIONS))
        expect(page.locator("#question")).to_be_disabled()
        expect(page.locator("#report")).to_be_empty()
        expect(page.locator("#message")).to_be_hidden()
    finally:
        server.stop()
