"""The dashboard's example-weight card in real headless Chromium, on jobs a real worker ran.

A scaled-down ``noisy-labels-digits`` (40 % of 200 training labels flipped, 3 meta-iterations): the
page must draw the learned weights' histogram with the known-noisy ones stacked apart, the ROC of
flagging the lowest weights first with its AUC, and the 24 lowest-weighted examples as 8x8 pictures
read back through ``GET /v1/jobs/{id}/training-examples``, each captioned with its given label,
weight and row. Everything drawn is compared with the REST answers. One weight per class is one bar
per class. One test for all of it: the suite's browser time is counted.
"""

from __future__ import annotations

import re

import httpx
import numpy as np
from client.live import Service

from dashboard import test_dashboard as shared
from revtune import Client

# test_dashboard's Chromium and page fixtures (which fail the test on a console error), used here
browser, page = shared.browser, shared.page
chart, canvas_grey = shared.chart, shared.canvas_grey

LOWEST = 24


def noisy_digits(service: Service, **hyperparameters) -> dict:
    """The noisy-labels-digits template scaled down to seconds: 200 training examples, 40 steps,
    3 meta-iterations."""
    spec = httpx.get(f"{service.url}/v1/templates/noisy-labels-digits").json()
    spec["dataset"].update(train=200, valid=100, test=0)
    spec["training"]["steps"] = 40
    spec["meta"]["iterations"] = 3
    spec["hyperparameters"].update(hyperparameters)
    return spec


def auc(weights: np.ndarray, noisy: np.ndarray) -> float:
    """The chance that a noisy example weighs less than a clean one, ties counting half."""
    low, high = weights[noisy][:, None], weights[~noisy][None, :]
    return float(np.mean((low < high) + 0.5 * (low == high)))


def fmt(x: float) -> str:
    """The page's `fmt` of a weight between 1e-3 and 1e5: 4 significant digits, no trailing zeros."""
    return repr(float(f"{x:.4g}")).removesuffix(".0")


def test_example_weights_draw_a_histogram_the_detection_curve_and_the_lowest_examples(page, service: Service):
    spec = noisy_digits(service)
    per_class = noisy_digits(service, example_weight={"init": 1.0, "granularity": "class", "learn": True})
    per_class["name"] = "noisy-labels-per-class"
    with Client(service.url) as client:
        submitted = [client.submit(spec), client.submit(per_class)]  # the worker takes one after the other
        job, classes = (client.wait(j, progress=False, poll=0.2, timeout=240) for j in submitted)
    assert job["status"] == classes["status"] == "succeeded", (job, classes)
    base = f"{service.url}/v1/jobs/{job['id']}"
    hp = httpx.get(f"{base}/hyperparameters/example_weight").json()
    weights = np.array(hp["values"])
    noisy = np.array(hp["labels"]["noisy"])
    assert hp["axes"] == ["example"] and weights.shape == (200,) and noisy.sum() == 80

    page.goto(f"{service.url}/#/jobs/{job['id']}")
    card = page.locator("#hyper-example_weight")
    page.wait_for_selector(f"#hyper-example_weight[data-meta-iter='{hp['meta_iter']}']")
    page.wait_for_selector(f"#hyper-example_weight .lowest-examples[data-drawn='{LOWEST}']")

    # The histogram: every weight in one bin, the known-noisy ones in their own (red) stack.
    hist = chart(page, "#hyper-example_weight-hist")
    assert hist["type"] == "bar" and len(hist["labels"]) == 30
    assert [d["label"] for d in hist["datasets"]] == ["clean", "known noisy (mislabelled)"]
    assert [sum(d["data"]) for d in hist["datasets"]] == [120, 80]
    assert page.get_attribute("#hyper-example_weight-hist", "data-log") == "true"
    first_edge = hist["labels"][0].split("–")[0]
    assert first_edge == fmt(weights.min())

    # The detection curve: its AUC is the one the REST values give, better than chance.
    shown = float(card.locator(".auc").get_attribute("data-auc"))
    assert shown > 0.5 and abs(shown - auc(weights, noisy)) < 1e-3
    assert re.search(r"AUC 0\.\d{3}", card.locator(".auc").text_content())
    roc = chart(page, "#hyper-example_weight-roc")
    curve = roc["datasets"][0]["data"]
    assert curve[0] == {"x": 0, "y": 0} and curve[-1] == {"x": 1, "y": 1}

    # The 24 lowest weights' examples, lowest first, each an 8x8 picture of its row of digits.
    lowest = np.argsort(weights, kind="stable")[:LOWEST]
    figures = card.locator(".lowest-examples figure")
    assert figures.count() == LOWEST
    rows = [hp["labels"]["example"][i] for i in lowest]
    assert [int(figures.nth(k).get_attribute("data-row")) for k in range(LOWEST)] == rows
    for k, i in enumerate(lowest):
        figure = figures.nth(k)
        caption = figure.locator("figcaption").text_content()
        assert caption.startswith(f"label {hp['labels']['label'][i]} · w {fmt(weights[i])} · row {rows[k]}")
        assert ("✕ noisy" in caption) == bool(noisy[i]) == ("noisy" in (figure.get_attribute("class") or ""))
        assert figure.locator("canvas").evaluate("c => [c.width, c.height]") == [8, 8]
    examples = httpx.get(f"{base}/training-examples", params={"rows": ",".join(map(str, rows))}).json()
    pixels = np.array([item["x"] for item in examples["items"]])
    lo, hi = pixels.min(), pixels.max()
    drawn = canvas_grey(page, "#hyper-example_weight .lowest-examples figure:first-child canvas")
    np.testing.assert_array_equal(drawn, np.round(255 * (pixels[0, :, :, 0] - lo) / (hi - lo)))

    # One weight per class: one bar per class.
    page.goto(f"{service.url}/#/jobs/{classes['id']}")
    page.wait_for_selector("#hyper-example_weight[data-meta-iter='3'] canvas")
    per_class = httpx.get(f"{service.url}/v1/jobs/{classes['id']}/hyperparameters/example_weight").json()
    bars = chart(page, "#hyper-example_weight canvas")
    assert bars["type"] == "bar" and bars["labels"] == [str(c) for c in range(10)]
    np.testing.assert_allclose(bars["datasets"][0]["data"], per_class["values"], rtol=1e-12)
    assert page.locator(".lowest-examples").count() == 0

    assert not page.errors, page.errors
