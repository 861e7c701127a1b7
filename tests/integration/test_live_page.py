"""The proxy's live page in a real headless browser (Debian's chromium driven by Playwright).

A proxy and an engine run the chain sample against the real broker; the page must show the
pipeline, its steps in the graph, and rate figures that change when records flow. The
screenshot taken at the end goes to the test's folder, and replaces the README's
(`docs/live-page.png`) when `UPDATE_SCREENSHOT=1`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from dataflow.proxy import ProxyServer
from tests.integration.harness import REPO, Proxy, create_topics, engine
from tests.integration.test_describe import chain_spec, chain_topics, send

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT = REPO / "docs" / "live-page.png"

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="playwright is not installed (pip install -e '.[dev]')"
)
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="chromium is not installed (apt-get install -y chromium; .ci/run does it)",
)


@pytest.fixture
def running(tmp_path: Path, bootstrap: str, unique: str) -> Iterator[tuple[Proxy, str]]:
    name = f"page-{unique}"
    asyncio.run(create_topics(bootstrap, *chain_topics(name)))
    proxy = Proxy(tmp_path).start()
    eng = engine(tmp_path, bootstrap, proxy)
    try:
        proxy.load(chain_spec(tmp_path, name))
        proxy.wait_state(name, "Ready", timeout=60)
        yield proxy, name
    finally:
        eng.stop()
        proxy.stop()


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    async with playwright_api.async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.mark.kafka
@needs_chromium
async def test_the_page_shows_the_steps_and_rates_that_change(
    running: tuple[Proxy, str], browser: object, bootstrap: str, tmp_path: Path
) -> None:
    proxy, name = running
    page = await browser.new_page(viewport={"width": 1280, "height": 760})  # type: ignore[attr-defined]
    await page.goto(proxy.url + "/")
    item = page.locator(f'.pipeline-item[data-name="{name}"]')
    await item.wait_for(timeout=15_000)
    assert "Ready" in await item.inner_text()
    assert "engine-a" in await item.inner_text()
    await item.click()
    for step in ("tfsimple1", "tfsimple2", f"{name}.outputs", f"{name}.errors"):
        await page.locator(f'#graph g.step[data-step="{step}"]').wait_for(timeout=15_000)
    # Topics are nodes too, and the rename is on the edge into tfsimple2.
    await page.locator(
        f'#graph g.topic[data-topic="seldon.{name}.model.tfsimple1.outputs"]'
    ).wait_for()
    assert "OUTPUT0→INPUT0" in await page.locator("#graph").inner_text()
    rate = page.locator('#figures tr[data-step="tfsimple2"] td.rate-in')
    before = await rate.inner_text()
    assert before == "0.0/s"

    await send(bootstrap, name, 200)
    await produce_bad(bootstrap, name)
    await page.wait_for_function(
        """() => {
            const cell = document.querySelector('#figures tr[data-step="tfsimple2"] td.rate-in');
            return cell && cell.textContent !== "0.0/s";
        }""",
        timeout=30_000,
    )
    after = await rate.inner_text()
    assert after != before and float(after.removesuffix("/s")) > 0
    errors = page.locator("#errors li", has_text="tfsimple2:")
    await errors.wait_for(timeout=15_000)
    await page.locator('#graph g.step.errors[data-step="tfsimple2"]').wait_for(timeout=15_000)
    shot = tmp_path / "live-page.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


async def produce_bad(bootstrap: str, name: str) -> None:
    from tests.integration.harness import produce

    topic = chain_topics(name)[1]
    await produce(
        bootstrap, topic, [(None, b"\xff\xff not protobuf", [("pipeline", name.encode())])]
    )


async def test_a_token_is_given_once_and_kept_in_a_read_only_cookie() -> None:
    """No broker needed: the proxy's own HTTP rules for the page when a token is set."""
    proxy = ProxyServer(port=0, control_port=0, token="s3cret")
    await proxy.start()
    base = f"http://127.0.0.1:{proxy.control_port}"
    try:
        # unsafe: keep cookies of an IP address host (127.0.0.1), as a browser does.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(base + "/") as r:
                assert r.status == 401 and "/?token=" in await r.text()
            async with http.get(base + "/?token=wrong") as r:
                assert r.status == 401
            async with http.get(base + "/?token=s3cret", allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"] == "/"
                cookie = r.cookies["dataflow_token"]
                assert cookie["httponly"] and cookie["samesite"] == "Strict"
            async with http.get(base + "/") as r:
                assert r.status == 200 and '<script src="/page/app.js">' in await r.text()
            async with http.get(base + "/page/app.js") as r:
                assert r.status == 200
            async with http.get(base + "/pipelines") as r:
                assert r.status == 200 and await r.json() == []
            async with http.post(base + "/pipelines", data=b"kind: x") as r:
                assert r.status == 401  # the cookie reads, it never loads
    finally:
        await proxy.stop()
