"""The proxy's live page in a real headless browser (Debian's chromium driven by Playwright).

A proxy and an engine run the chain sample against the real broker; the page must show the
pipeline as it flows (inputs, steps, models, outputs, the error path), sparklines that move
while records flow, and the same trouble signal as `dataflow status` and `describe` after a
bad record. Without a broker: 50 pipelines, filtered, the troubled one first. The
screenshot taken at the end goes to the test's folder, and replaces the README's
(`docs/live-page.png`) when `UPDATE_SCREENSHOT=1`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from dataflow.proxy import ProxyServer
from tests.integration.harness import REPO, Proxy, create_topics, engine
from tests.integration.test_describe import CHAIN, chain_spec, chain_topics, send

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


#: The flow of the chain sample: inputs -> step -> model -> step -> model -> outputs, and the
#: error path (the error topic -> the errors step -> outputs).
def chain_flow(name: str) -> set[tuple[str, str]]:
    return {
        ("inputs", "step tfsimple1"),
        ("step tfsimple1", "model tfsimple1"),
        ("model tfsimple1", "step tfsimple2"),
        ("step tfsimple2", "model tfsimple2"),
        ("model tfsimple2", f"step {name}.outputs"),
        (f"step {name}.outputs", "outputs"),
        ("errors", f"step {name}.errors"),
        (f"step {name}.errors", "outputs"),
    }


EDGES_JS = """() => [...document.querySelectorAll('#graph path.edge')].map((e) => {
    const label = (id) => document.querySelector(`#graph g.node[data-id="${CSS.escape(id)}"]`)
        .getAttribute('data-label');
    return [label(e.getAttribute('data-from')), label(e.getAttribute('data-to')), e.classList[1]];
})"""

SPARK = '#graph g.step[data-step="tfsimple2"] polyline.spark-in'


async def keep_sending(bootstrap: str, name: str) -> None:
    """Traffic until cancelled: 20 requests every half second."""
    n = 0
    while True:
        await send(bootstrap, name, 20, start=n)
        n += 20
        await asyncio.sleep(0.5)


@pytest.mark.kafka
@needs_chromium
async def test_the_page_shows_the_flow_with_sparklines_that_move(
    running: tuple[Proxy, str], browser: object, bootstrap: str, tmp_path: Path
) -> None:
    proxy, name = running
    page = await browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    await page.goto(proxy.url + "/")
    item = page.locator(f'.pipeline-item[data-name="{name}"]')
    await item.wait_for(timeout=15_000)
    assert "Ready" in await item.inner_text()
    assert "engine-a" in await item.inner_text()
    await item.click()
    for step in ("tfsimple1", "tfsimple2", f"{name}.outputs", f"{name}.errors"):
        await page.locator(f'#graph g.step[data-step="{step}"]').wait_for(timeout=15_000)
    edges = {(a, b) for a, b, _ in await page.evaluate(EDGES_JS)}
    assert chain_flow(name) <= edges, edges
    kinds = {(a, b): kind for a, b, kind in await page.evaluate(EDGES_JS)}
    assert kinds[("errors", f"step {name}.errors")] == "error"
    # The tensor map is on the edge into tfsimple2; the error path is below the main lane.
    assert "OUTPUT0→INPUT0" in await page.locator("#graph").inner_text()
    assert await page.locator("#graph line.lane").count() == 1
    rate = page.locator('#figures tr[data-step="tfsimple2"] td.rate-in')
    assert await rate.inner_text() == "0.0/s"

    traffic = asyncio.create_task(keep_sending(bootstrap, name))
    try:
        # The sparkline gets a point above its base line once the proxy sampled traffic
        # (every 5 s), then keeps moving while records flow.
        await page.wait_for_function(
            f"""() => {{
                const line = document.querySelector('{SPARK}');
                return line && line.getAttribute('points').split(' ')
                    .some((p) => p && parseFloat(p.split(',')[1]) < 18);
            }}""",
            timeout=40_000,
        )
        first = await page.locator(SPARK).get_attribute("points")
        await page.wait_for_function(
            f"""(first) => {{
                const line = document.querySelector('{SPARK}');
                return line && line.getAttribute('points') !== first;
            }}""",
            arg=first,
            timeout=20_000,
        )
        assert float((await rate.inner_text()).removesuffix("/s")) > 0
        # A bad record once the proxy samples the step (an error it saw happen).
        await produce_bad(bootstrap, name)
        # The bad record: an error, and the trouble signal on the step, the list and the CLI.
        await page.locator("#errors li", has_text="tfsimple2:").wait_for(timeout=15_000)
        await page.locator('#graph g.step.trouble[data-step="tfsimple2"]').wait_for(timeout=20_000)
        assert "error in the last minute" in await item.inner_text()
        status = dataflow_cli("status", "--url", proxy.url)
        assert "  trouble: tfsimple2: 1 error in the last minute" in status, status
        described = dataflow_cli("describe", name, "--url", proxy.url)
        assert "  trouble:  1 error in the last minute" in described, described
        # The selected step's details.
        await page.locator('#graph g.step[data-step="tfsimple2"]').click()
        detail = page.locator("#step-detail")
        await detail.wait_for(timeout=5_000)
        text = await detail.inner_text()
        assert f"seldon.{name}.model.tfsimple1.outputs" in text and "OUTPUT0→INPUT0" in text
        assert f"seldon.{name}.model.tfsimple2.inputs" in text
    finally:
        traffic.cancel()
        await asyncio.wait([traffic])
    shot = tmp_path / "live-page.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def dataflow_cli(*args: str) -> str:
    """The output of `dataflow ARGS` (both streams)."""
    result = subprocess.run(
        [sys.executable, "-c", "from dataflow.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout + result.stderr


@needs_chromium
async def test_fifty_pipelines_are_filtered_and_the_troubled_one_comes_first(
    browser: object,
) -> None:
    """No broker needed: the list of 50 pipelines, one with errors in the last minute."""
    proxy = ProxyServer(port=0, control_port=0)
    await proxy.start()
    try:
        for i in range(50):
            text = CHAIN.read_text().replace("  name: tfsimples", f"  name: pipe-{i:02d}")
            proxy.load_text(text, f"pipe-{i:02d}.yaml")
        described = await proxy.describe("pipe-37")
        proxy.history.add(0.0, described)
        described["steps"][1]["live"]["totals"]["errors"] = 3
        proxy.history.add(5.0, described)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
        await page.goto(f"http://127.0.0.1:{proxy.control_port}/")
        items = page.locator(".pipeline-item")
        await page.wait_for_function(
            "() => document.querySelectorAll('.pipeline-item').length === 50", timeout=15_000
        )
        assert await items.first.get_attribute("data-name") == "pipe-37"
        assert "3 errors in the last minute" in await items.first.inner_text()
        await page.fill("#filter", "pipe-4")
        names = [await i.get_attribute("data-name") for i in await items.all()]
        assert names == [f"pipe-4{i}" for i in range(10)]
        assert await page.locator("#count").inner_text() == "10 of 50"
        await items.first.click()
        await page.locator('#graph g.node.model[data-model="tfsimple2"]').wait_for(timeout=5_000)
    finally:
        await proxy.stop()


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
