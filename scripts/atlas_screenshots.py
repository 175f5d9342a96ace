"""Screenshots of pinned heads in the atlas, taken with Chromium (for docs/figures.md).

Opens ``ATLAS#model/LxHy`` (the atlas's deep link) for each ``--head model/LxHy`` and saves
the model's grid and head page as ``OUT/atlas-<model>-LxHy.png``. Rerun it after
``scripts/atlas.sh`` to refresh the images:

    python scripts/atlas_screenshots.py atlas/atlas.html --head smollm2/L23H2 \\
        --head smollm2/L26H2 --head smollm2/L14H3 --head gemma3-270m/L12H2 --out docs/images
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def main() -> None:
    """Take one screenshot per head."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("atlas", type=Path, help="the atlas HTML file (headatlas report)")
    parser.add_argument(
        "--head",
        action="append",
        required=True,
        metavar="MODEL/LxHy",
        help="a head to pin, as in the atlas's deep links (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/images"), help="folder of PNGs")
    parser.add_argument("--chromium", default=CHROMIUM, help="Chromium executable")
    parser.add_argument("--width", type=int, default=1500, help="viewport width in pixels")
    parser.add_argument("--height", type=int, default=1100, help="viewport height in pixels")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    url = args.atlas.resolve().as_uri()
    with sync_playwright() as manager:
        browser = manager.chromium.launch(
            executable_path=args.chromium,
            args=["--no-sandbox", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        for link in args.head:
            page.goto(f"{url}#{link}")
            page.wait_for_selector("body[data-ready='1']")
            model = page.locator(".model.active")
            title = model.locator("aside.side .head-title")
            if title.count() == 0:
                raise SystemExit(f"{link}: no such model or head in {args.atlas}")
            side = model.locator("aside.side")
            # show the whole head page: lift the panel's scroll limit for the picture
            side.evaluate("e => { e.style.maxHeight = 'none'; }")
            name = re.sub(r"[^A-Za-z0-9._-]+", "-", link.replace("/", "-"))
            path = args.out / f"atlas-{name}.png"
            model.locator(".body").screenshot(path=str(path))
            print(f"{path}: {title.inner_text()}")
        browser.close()


if __name__ == "__main__":
    main()
