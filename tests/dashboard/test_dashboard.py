"""The dashboard in real headless Chromium (Debian's ``chromium``, driven by Playwright for Python).

The browser submits a job from the form, follows its page while a real worker runs it, and the
charts are read back through Chart.js (``Chart.getChart``) and compared with the REST answers: one
schedule series per layer, one curve point per meta-iteration. A screenshot of the finished page is
saved; with ``REVTUNE_UPDATE_SCREENSHOT=1`` it replaces ``docs/dashboard.png``.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from client.live import TINY_LAYERS, Service, tiny_spec

from jobs import templates
from revtune import Client

CHROMIUM = os.environ.get("REVTUNE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"

# The job the browser submits: long enough (after the worker's first compilation) for the page, which
# polls once a second, to see progress advance several times even on a quiet machine (about 30 ms a
# meta-iteration there), small enough for a few seconds of CPU; per-weight L2 on the first layer so
# the page draws its penalties as 8x8 pictures.
FORM_SPEC = tiny_spec(
    name="dashboard-digits",
    training={"steps": 20},
    hyperparameters={
        "learning_rate": {"init": 0.3, "granularity": "layer_step", "learn": True},
        "momentum": {"init": 0.9, "granularity": "layer_step", "learn": True},
        "init_scale": {"init": 0.1, "granularity": "layer", "learn": True},
        "l2": {"init": 0.001, "granularity": "weight", "learn": True},
    },
    meta={"iterations": 150, "optimizer": "adam", "learning_rate": 0.04},
)


def _need_browser():
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
        pytest.skip(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("playwright is not installed")
    return sync_playwright


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _need_browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, service: Service):
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    pg = context.new_page()
    pg.errors = []
    pg.requested = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("request", lambda r: pg.requested.append((r.url, r.headers)))
    yield pg
    context.close()


def finished(client: Client, spec: dict) -> dict:
    """Submit ``spec`` and wait for the real worker to finish it; the job, which succeeded."""
    job = client.wait(client.submit(spec), progress=False, poll=0.2, timeout=240)
    assert job["status"] == "succeeded", job
    return job


def chart(page, selector: str) -> dict:
    """A Chart.js chart's type, labels and datasets, read from the live instance on the canvas."""
    return page.evaluate(
        """(sel) => {
            const c = Chart.getChart(document.querySelector(sel));
            if (!c) return null;
            return { type: c.config.type, labels: c.data.labels,
                     datasets: c.data.datasets.map((d) => ({ label: d.label, data: d.data })) };
        }""",
        selector,
    )


def test_submit_from_the_form_and_watch_the_job_to_the_end(page, service: Service, tmp_path):
    page.goto(service.url + "/")
    page.wait_for_function("document.querySelector('#spec-text').value.includes('hyperparameters')")
    template_spec = yaml.safe_load(page.input_value("#spec-text"))  # JSON is YAML
    page.select_option("#spec-format", "yaml")
    assert yaml.safe_load(page.input_value("#spec-text")) == template_spec
    assert not page.input_value("#spec-text").lstrip().startswith("{")

    page.fill("#spec-text", yaml.safe_dump(FORM_SPEC))
    page.click("#submit-job")
    page.wait_for_url(re.compile(r".*#/jobs/[^/]+$"))
    job_id = page.url.rsplit("/", 1)[1]

    n = FORM_SPEC["meta"]["iterations"]
    seen: list[str] = []
    deadline = time.monotonic() + 240
    while page.get_attribute("#poll-state", "data-polling") != "stopped":
        assert time.monotonic() < deadline, f"the job did not finish; progress seen: {seen}"
        text = page.text_content("#job-summary [data-progress]") or ""
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        time.sleep(0.1)
    done = [int(s.split("/")[0]) for s in seen]
    assert done == sorted(done), f"progress went backwards: {seen}"
    assert any(0 < k < n for k in done), f"never saw the job between start and end: {seen}"
    assert page.text_content("#job-summary [data-status]") == "succeeded"
    assert page.text_content("#job-summary [data-progress]") == f"{n}/{n}"
    assert "one fixed split" in page.text_content("#job-summary")
    assert page.is_disabled("#cancel-job")

    with Client(service.url) as client:
        steps = client.steps(job_id)
        lr = client.hyperparameters(job_id, "learning_rate")
        momentum = client.hyperparameters(job_id, "momentum")
        scales = client.hyperparameters(job_id, "init_scale")

    curve = chart(page, "#chart-curve canvas")
    assert curve["labels"] == [s["meta_iter"] for s in steps] == list(range(n))
    by_label = {d["label"]: d["data"] for d in curve["datasets"]}
    assert by_label["objective"] == [s["objective"] for s in steps]
    assert by_label["test_loss"] == [s["test_loss"] for s in steps]
    hypergrad = chart(page, "#chart-hypergrad canvas")
    assert hypergrad["datasets"][0]["data"] == [s["hypergrad_norm"] for s in steps]

    page.wait_for_selector(f"#hyper-learning_rate[data-meta-iter='{n}']")
    for hp, card in ((lr, "#hyper-learning_rate"), (momentum, "#hyper-momentum")):
        drawn = chart(page, f"{card} canvas")
        assert drawn["type"] == "line"
        assert len(drawn["datasets"]) == TINY_LAYERS == hp.values.shape[1]
        assert [d["label"] for d in drawn["datasets"]] == [str(x) for x in hp.labels["layer"]]
        assert drawn["labels"] == list(range(FORM_SPEC["training"]["steps"]))
        np.testing.assert_allclose(np.array([d["data"] for d in drawn["datasets"]]).T, hp.values, rtol=1e-12)
    bars = chart(page, "#hyper-init_scale canvas")
    assert bars["type"] == "bar" and bars["labels"] == [str(x) for x in scales.labels["layer"]]
    np.testing.assert_allclose(bars["datasets"][0]["data"], scales.values, rtol=1e-12)

    # Per-weight penalties on the first layer: one 8x8 picture (64 digit pixels) per hidden unit.
    pictures = page.locator("[id^='hyper-l2'] .images[data-image-side='8']")
    assert pictures.count() >= 1
    assert pictures.first.locator("canvas").count() == FORM_SPEC["model"]["hidden"][0]

    page.set_viewport_size({"width": 1300, "height": 900})
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if os.environ.get("REVTUNE_UPDATE_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS_SCREENSHOT)

    page.click("text=← all jobs")
    row = page.locator(f"tr[data-job-id='{job_id}']")
    row.wait_for()
    assert row.locator("[data-status]").text_content() == "succeeded"
    assert row.locator("[data-progress]").text_content() == f"{n}/{n}"

    assert not page.errors, page.errors
    foreign = [u for u, _ in page.requested if not u.startswith(service.url) and not u.startswith("data:")]
    assert not foreign, f"the dashboard fetched from outside its server: {foreign}"


def test_cancel_button_stops_a_running_job(page, service: Service):
    with Client(service.url) as client:
        job = client.submit(tiny_spec(name="to-cancel", meta={"iterations": 200, "optimizer": "adam"}))
    page.goto(f"{service.url}/#/jobs/{job['id']}")
    page.wait_for_selector("#cancel-job:not([disabled])")
    page.click("#cancel-job")
    page.wait_for_selector("#poll-state[data-polling='stopped']", timeout=120_000)
    assert page.text_content("#job-summary [data-status]") == "cancelled"
    assert page.is_disabled("#cancel-job")
    assert not page.errors, page.errors


def test_a_refused_spec_shows_the_fields(page, service: Service):
    page.goto(service.url + "/")
    page.wait_for_function("document.querySelector('#spec-text').value.length > 0")
    page.select_option("#spec-format", "yaml")
    page.fill("#spec-text", yaml.safe_dump(tiny_spec(training={"steps": 10**9})))
    page.click("#submit-job")
    page.wait_for_function("document.querySelector('#submit-errors').textContent.length > 0")
    assert "training.steps" in page.text_content("#submit-errors")
    assert page.url.endswith("/") or page.url.endswith("#/")
    page.fill("#spec-text", "{not: [valid")
    page.click("#submit-job")
    page.wait_for_function("document.querySelector('#submit-errors').textContent.includes('not valid YAML')")


def test_api_key_is_kept_in_local_storage_and_sent(page, service: Service):
    page.goto(service.url + "/")
    page.fill("#api-key", "rt_test_key")
    page.press("#api-key", "Enter")
    page.dispatch_event("#api-key", "change")
    assert page.evaluate("localStorage.getItem('revtune.apiKey')") == "rt_test_key"
    page.reload()
    assert page.input_value("#api-key") == "rt_test_key"
    page.wait_for_function("document.querySelector('#template-select').options.length > 1")
    sent = [h.get("authorization") for u, h in page.requested if "/v1/" in u]
    assert sent and sent[-1] == "Bearer rt_test_key"


def test_a_multitask_job_draws_its_sharing_matrices(page, service: Service):
    """The paper's sharing experiment, scaled down, through the real worker: the page draws each
    layer's learned 10 x 10 task-sharing matrix as a heatmap whose grey levels are the REST values."""
    spec = templates.get("sharing-mnist5k-tasks")
    spec["dataset"].update(train=100, valid=100, test=100)  # still re-split every meta-iteration
    spec["model"]["hidden"] = [4]
    spec["training"]["steps"] = 3
    spec["meta"]["iterations"] = 2
    with Client(service.url) as client:
        job = finished(client, spec)
        names = [h["name"] for h in client.hyperparameter_list(job)]
        T = client.hyperparameters(job, "sharing.layer0")
    assert {"sharing.layer0", "sharing.layer1"} <= set(names)
    assert T.axes == ("task", "latent") and T.labels["task"][5] == "A1rot"

    page.goto(f"{service.url}/#/jobs/{job['id']}")
    card = "#hyper-sharing-layer0"
    page.wait_for_selector(f"{card} canvas.heatmap")
    # The template re-splits every meta-iteration, and the page says so where the losses are drawn.
    assert "re-split every meta-iteration" in page.text_content("#job-summary")
    assert "re-split" in page.text_content("#chart-curve .caption")
    assert "Sharing across tasks (T): layer0" in page.text_content(f"{card} h2")

    def grey(selector):
        drawn = page.evaluate(
            """(sel) => {
                const c = document.querySelector(sel);
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                return { w: c.width, h: c.height, grey: Array.from(d).filter((_, i) => i % 4 === 0) };
            }""",
            selector,
        )
        assert (drawn["w"], drawn["h"]) == (10, 10)
        return np.array(drawn["grey"])

    lo, hi = T.values.min(), T.values.max()
    expected = np.round(255 * (T.values - lo) / (hi - lo)).astype(int).ravel()
    assert np.abs(grey(f"{card} canvas.heatmap") - expected).max() <= 1
    # Beside T, the prior correlation of the tasks' weights, T T^T normalised, on a fixed -1..1 scale.
    cov = T.values @ T.values.T
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    assert not np.allclose(corr, np.eye(10))  # the job shared: the picture has something to show
    assert np.abs(grey(f"{card} canvas.correlation") - np.round(255 * (corr + 1) / 2).ravel()).max() <= 1
    off_diagonal = corr[~np.eye(10, dtype=bool)]
    assert f"mean {float(f'{off_diagonal.mean():.4g}')!r}" in page.text_content(card)  # as the page's fmt
    assert not page.errors, page.errors


def test_an_adamw_job_draws_its_betas_and_weight_decay(page, service: Service):
    """The AdamW schedule template, scaled down, through the real worker: the page says which
    optimizer trained the model (apart from the meta-optimizer) and draws the learning rate per
    layer and step, beta1 and the weight decay per layer as the REST API serves them."""
    spec = templates.get("adam-schedule-mnist")
    spec["dataset"].update(train=200, valid=100, test=100, batch_size=50)
    spec["model"]["hidden"] = [4]
    spec["training"]["steps"] = 6
    spec["meta"]["iterations"] = 2
    with Client(service.url) as client:
        job = finished(client, spec)
        lr = client.hyperparameters(job, "learning_rate")
        beta1 = client.hyperparameters(job, "beta1")
        decay = client.hyperparameters(job, "weight_decay")
    assert lr.axes == ("step", "layer") and beta1.axes == decay.axes == ("layer",)
    # learned: the meta-optimizer moved them off the template's 0.9 and 0.01
    assert not np.allclose(beta1.values, 0.9) and not np.allclose(decay.values, 0.01)
    assert np.all(decay.values > 0) and np.all((beta1.values >= 0.5) & (beta1.values < 1))

    page.goto(f"{service.url}/#/jobs/{job['id']}")
    page.wait_for_selector("#hyper-weight_decay canvas")
    summary = page.text_content("#job-summary")
    assert page.get_attribute("[data-training-optimizer]", "data-training-optimizer") == "adamw"
    assert "AdamW, 6 steps" in summary and "adam_paper, step 0.04" in summary
    assert "Adam beta1 schedule" in page.text_content("#hyper-beta1 h2")
    assert "Weight decay (AdamW)" in page.text_content("#hyper-weight_decay h2")
    drawn = chart(page, "#hyper-learning_rate canvas")
    assert drawn["type"] == "line" and len(drawn["datasets"]) == lr.values.shape[1]
    np.testing.assert_allclose(np.array([d["data"] for d in drawn["datasets"]]).T, lr.values, rtol=1e-12)
    for hp, card in ((beta1, "#hyper-beta1"), (decay, "#hyper-weight_decay")):
        bars = chart(page, f"{card} canvas")
        assert bars["type"] == "bar" and bars["labels"] == [str(x) for x in hp.labels["layer"]]
        np.testing.assert_allclose(bars["datasets"][0]["data"], hp.values, rtol=1e-12)
    assert not page.errors, page.errors
