"""The dashboard in a real headless Chromium (Debian's chromium and chromedriver, driven by Selenium) over a real
``modelplane up``: scheduler, agent, MLServer, gateway. The page opened first, then a model loaded whose artifact
is held back (served over HTTP by the test) until the page shows it Progressing: then it turns Available on the
page with no reload; then a second model, a pipeline of both
drawn as a graph with each step's state, and an experiment over both whose weights show and whose traffic share
follows requests sent through the gateway.

A screenshot is saved as the test's artefact: $MODELPLANE_DASHBOARD_SCREENSHOT when set, else dashboard.png in the
test's tmp dir (its path is printed). Without chromium the test fails saying how to install it (./run test does)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from grpc import aio

from generated.mlops.scheduler import scheduler_pb2 as pb
from generated.mlops.scheduler import scheduler_pb2_grpc as pb_grpc
from tests.support.agent_serving import tar_gz_of
from tests.support.http_stand_ins import serving
from tests.support.iris_sample import train_iris_sample
from tests.support.modelplane_up import Up, assert_stops_cleanly, start_up
from tests.support.processes import MODELPLANE, STARTED, run_modelplane

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Hang guards, not performance bounds: a loaded 2-core machine, and MLServer's first load imports scikit-learn.
PAGE_TIMEOUT = 60.0
LOAD_TIMEOUT = 240.0


def _browser(tmp_path: Path) -> Any:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(
            f"the dashboard's browser test needs Debian's chromium and chromedriver ({', '.join(missing)} missing): "
            "apt-get install -y chromium chromium-driver (./run test and CI install them)"
        )
    from selenium import webdriver  # noqa: PLC0415 - only this test drives a browser
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,860"):
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    # The given chromedriver: Selenium Manager never looks for (or downloads) one.
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    driver = _browser(tmp_path)
    try:
        yield driver
    finally:
        driver.quit()


def _model(name: str, uri: str) -> pb.Model:
    return pb.Model(
        meta=pb.MetaData(name=name),
        modelSpec=pb.ModelSpec(uri=uri, requirements=["sklearn"], memoryBytes=20 * 1024 * 1024),
        deploymentSpec=pb.DeploymentSpec(replicas=1),
    )


async def _call(up: Up, request: pb.LoadModelRequest | pb.LoadPipelineRequest | pb.StartExperimentRequest) -> None:
    async with aio.insecure_channel(up.listen) as channel:
        stub = pb_grpc.SchedulerStub(channel)
        if isinstance(request, pb.LoadModelRequest):
            await stub.LoadModel(request, timeout=30)
        elif isinstance(request, pb.LoadPipelineRequest):
            await stub.LoadPipeline(request, timeout=30)
        else:
            await stub.StartExperiment(request, timeout=30)


def _infer(up: Up, name: str, request: dict[str, Any]) -> None:
    http = urllib.request.Request(
        f"http://{up.addresses['gateway']}/v2/models/{name}/infer",
        data=json.dumps(request).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(http, timeout=30) as answer:  # noqa: S310
        assert answer.status == 200


async def _until(browser: Any, selector: str, timeout: float) -> None:
    """Wait until the page has an element ``selector`` finds (off the event loop: the loop serves the artifact)."""
    from selenium.webdriver.common.by import By  # noqa: PLC0415 - see _browser
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    wait = WebDriverWait(browser, timeout)
    await asyncio.to_thread(wait.until, lambda driver: driver.find_elements(By.CSS_SELECTOR, selector))


def _read(browser: Any, selector: str, attribute: str) -> list[str]:
    """``attribute`` ("text" for the visible text) of every element ``selector`` finds, read in one script run: the
    page re-renders its rows as changes arrive, so an element found by one WebDriver call may be gone by the next
    (StaleElementReferenceException); one script sees one state of the page."""
    script = (
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".map(e => arguments[1] === 'text' ? e.innerText : (e.getAttribute(arguments[1]) || ''));"
    )
    values: list[str] = browser.execute_script(script, selector, attribute)
    return values


def _screenshot_path(tmp_path: Path) -> Path:
    chosen = os.environ.get("MODELPLANE_DASHBOARD_SCREENSHOT")
    return Path(chosen) if chosen else tmp_path / "dashboard.png"


@pytest.mark.servers
@pytest.mark.timeout(900)
async def test_a_model_goes_from_progressing_to_available_on_the_open_page(tmp_path: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By  # noqa: PLC0415 - see _browser
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415

    sample = train_iris_sample(tmp_path / "iris")
    up = start_up(tmp_path, tmp_path / "state", "up")
    page = f"http://{up.addresses['dashboard']}/"
    assert f"dashboard    {page}" in up.stdout()
    browser.get(page)
    WebDriverWait(browser, PAGE_TIMEOUT).until(
        lambda driver: (
            _read(driver, "#connection", "text") == ["live"]
            and driver.find_elements(By.CSS_SELECTOR, 'tr[data-server="mlserver"]')
        )
    )
    assert browser.find_elements(By.CSS_SELECTOR, "tr[data-model]") == []
    # Set once on this document: a reload would make a new one without it.
    browser.execute_script("window.loadedOnce = 'the same page';")

    # The artifact is served over HTTP only once the page has shown the model loading: the page is seen to show
    # Progressing first, whatever the machine's load, and then to change by itself.
    served = asyncio.Event()
    archive = tar_gz_of(tmp_path / "iris")

    async def artifact(_: web.Request) -> web.Response:
        await served.wait()
        return web.Response(body=archive, content_type="application/gzip")

    files = web.Application()
    files.router.add_get("/iris.tar.gz", artifact)
    async with serving(files) as base:
        await _call(up, pb.LoadModelRequest(model=_model("iris", f"{base}/iris.tar.gz")))
        await _until(browser, 'tr[data-model="iris"][data-state="ModelProgressing"]', LOAD_TIMEOUT)
        served.set()
        await _until(browser, 'tr[data-model="iris"][data-state="ModelAvailable"]', LOAD_TIMEOUT)
    [history] = _read(browser, 'tr[data-model="iris"]', "data-history")
    seen = history.split()
    assert seen[0] == "ModelProgressing", seen
    assert seen[-1] == "ModelAvailable", seen
    assert browser.execute_script("return window.loadedOnce;") == "the same page"
    assert browser.execute_script("return performance.getEntriesByType('navigation').length;") == 1

    # A second model, a pipeline of both and an experiment over both.
    await _call(up, pb.LoadModelRequest(model=_model("iris-b", f"file://{tmp_path / 'iris'}")))
    pipeline = pb.Pipeline(name="flowers")
    pipeline.steps.add(name="iris")
    pipeline.steps.add(name="iris-b", inputs=["flowers.inputs"])
    pipeline.output.steps.extend(["iris", "iris-b"])
    await _call(up, pb.LoadPipelineRequest(pipeline=pipeline))
    experiment = pb.Experiment(name="iris-ab", default="iris", resourceType=pb.MODEL)
    experiment.candidates.add(name="iris", weight=75)
    experiment.candidates.add(name="iris-b", weight=25)
    await _call(up, pb.StartExperimentRequest(experiment=experiment))
    WebDriverWait(browser, LOAD_TIMEOUT).until(
        lambda driver: (
            driver.find_elements(By.CSS_SELECTOR, 'tr[data-model="iris-b"][data-state="ModelAvailable"]')
            and driver.find_elements(By.CSS_SELECTOR, 'svg[data-pipeline-graph="flowers"] g[data-step="iris-b"]')
            and driver.find_elements(By.CSS_SELECTOR, '[data-experiment="iris-ab"][data-active="true"]')
        )
    )
    step_nodes = 'svg[data-pipeline-graph="flowers"] g[data-step]:not([data-step=""])'
    steps = zip(_read(browser, step_nodes, "data-step"), _read(browser, step_nodes, "data-state"), strict=True)
    assert dict(steps) == {
        "iris": "ModelAvailable",
        "iris-b": "ModelAvailable",
    }
    [weights] = _read(browser, '[data-experiment="iris-ab"] tr[data-candidate="iris"]', "text")
    assert "75 (75%)" in weights

    for _ in range(12):
        _infer(up, "iris-ab", sample["request"])
    traffic = '[data-experiment="iris-ab"] tr[data-candidate]'
    WebDriverWait(browser, PAGE_TIMEOUT).until(
        lambda driver: sum(int(float(count or 0)) for count in _read(driver, traffic, "data-requests")) == 12
    )
    assert browser.execute_script("return window.loadedOnce;") == "the same page"

    screenshot = _screenshot_path(tmp_path)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(screenshot)), "chromium saved no screenshot"
    print(f"dashboard screenshot: {screenshot}")
    assert screenshot.stat().st_size > 0
    _standalone_dashboard(tmp_path, up)
    assert_stops_cleanly(up)


def test_modelplane_dashboard_refuses_to_serve_beyond_loopback_unless_told() -> None:
    refused = run_modelplane("dashboard", "--listen", "0.0.0.0:0")
    assert refused.returncode == 2
    assert "not a loopback address" in refused.stderr
    assert "--listen-beyond-loopback" in refused.stderr


def test_modelplane_dashboard_refuses_plaintext_to_a_remote_scheduler_before_serving(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    refused = run_modelplane(
        "dashboard", "--scheduler", "10.0.0.1:9004", "--listen", "127.0.0.1:0", f"--ready-file={ready}"
    )
    assert refused.returncode == 1
    assert "refusing plaintext gRPC on non-loopback address 10.0.0.1:9004" in refused.stderr
    assert not ready.exists()


def _events_until(url: str, holds: Callable[[dict[str, dict[str, Any]]], bool]) -> dict[str, dict[str, Any]]:
    """Follow the event stream at ``url`` as the page does (the snapshot, then each batch of changes applied) until
    what it holds makes ``holds`` true; that state. The first event must be the snapshot."""
    with urllib.request.urlopen(url, timeout=PAGE_TIMEOUT) as stream:  # noqa: S310 - a loopback URL built here
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        objects: dict[str, dict[str, Any]] | None = None
        fields: dict[str, str] = {}
        while True:
            line = stream.readline().decode()
            assert line, "the event stream ended"
            line = line.rstrip("\n")
            if line.startswith(":"):
                continue  # a keep-alive comment
            if line:
                key, _, value = line.partition(": ")
                fields[key] = value
                continue
            data = json.loads(fields["data"])
            if objects is None:
                assert fields["event"] == "snapshot", fields
                objects = data["objects"]
            else:
                assert fields["event"] == "changes", fields
                for change in data:
                    kind = objects[change["kind"]]
                    if change["view"] is None:
                        kind.pop(change["name"], None)
                    else:
                        kind[change["name"]] = change["view"]
            fields = {}
            if holds(objects):
                return objects


def _standalone_dashboard(tmp_path: Path, up: Up) -> None:
    """``modelplane dashboard`` on its own against up's scheduler and gateway: its snapshot has what up runs."""
    ready = tmp_path / "dashboard.json"
    log = tmp_path / "dashboard.log"
    argv = [
        *MODELPLANE,
        "dashboard",
        f"--scheduler={up.listen}",
        f"--gateway-metrics=http://{up.addresses['gateway']}/metrics",
        "--listen=127.0.0.1:0",
        f"--ready-file={ready}",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
    STARTED.append(process)
    deadline = time.monotonic() + PAGE_TIMEOUT
    while not (ready.exists() and ready.read_text().endswith("\n")):
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    url = json.loads(ready.read_text())["url"]
    # It serves before it has listed anything: the scheduler is "connecting" until its streams are followed.
    objects = _events_until(url + "events", lambda objects: objects["sources"]["scheduler"]["ok"])
    assert "mlserver" in objects["servers"]
    assert {"iris", "iris-b"} <= set(objects["models"])
    assert "flowers" in objects["pipelines"]
    assert objects["experimentSpecs"]["iris-ab"]["candidates"] == [
        {"name": "iris", "weight": 75},
        {"name": "iris-b", "weight": 25},
    ]
    os.kill(process.pid, signal.SIGINT)
    assert process.wait(PAGE_TIMEOUT) == 0, log.read_text()
