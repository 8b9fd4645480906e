"""Screenshot of a running web demo (the one in the README and docs/guide/web-demo.md).

    medvill serve --checkpoint demo-output        # in another terminal
    python scripts/web_demo_screenshot.py --image demo-output/cache/synthetic/*/images/synth-000002.png \\
        --output docs/images/web-demo.png

Uploads the image in headless Chromium (Debian's, through Playwright, as ``make e2e``), waits
for every panel, clicks ``--word`` in the report (default: the first word that is not a stop
word), asks ``--question`` and writes a full-page PNG.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
STOP = {"pa", "ap", "view", "of", "the", "a", "is", "are", "no", "there", "and", "chest", "in"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:7860/")
    ap.add_argument("--image", required=True, type=Path)
    ap.add_argument("--output", required=True, type=Path)
    ap.add_argument("--word", default=None, help="report word to click (default: the first informative one)")
    ap.add_argument("--question", default="is there a pleural effusion?")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--width", type=int, default=1280)
    args = ap.parse_args()
    if not args.image.is_file():
        ap.error(f"image not found: {args.image}")

    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=args.chromium, headless=True, args=FLAGS,
                                                    viewport={"width": args.width, "height": 900})
        page = ctx.new_page()
        page.goto(args.url)
        page.set_input_files("#file", str(args.image))
        expect(page.locator("#report-hint")).to_be_visible()  # the report is written and its words are known
        expect(page.locator("#probabilities tbody tr").first).to_be_visible()
        if page.locator('section[data-task="retrieval"] .note').is_hidden():
            expect(page.locator("#similar li").first).to_be_visible()
        words = page.locator("#report .word")
        texts = words.all_inner_texts()
        if texts:
            pick = args.word or next((w for w in texts if w.lower() not in STOP), texts[0])
            if pick not in texts:
                print(f"{pick!r} is not in the report: {' '.join(texts)}", file=sys.stderr)
                return 1
            words.nth(texts.index(pick)).click()
            expect(page.locator("#image-caption")).to_contain_text(f'attention of "{pick}"')
        else:
            print("the report has no word to click: no attention overlay", file=sys.stderr)
        if page.locator("#question").is_enabled():
            page.fill("#question", args.question)
            page.click("#ask")
            expect(page.locator("#answer strong")).to_be_visible()
        args.output.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.output), full_page=True)
        ctx.close()
    print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
