"""The dashboard's images: the p99 bar red only over its rule's threshold (read from the drawn bars), the
dashboard and the score histogram as PNGs inline in the Markdown (decoded back and measured)."""

import base64
import re
from dataclasses import replace

import numpy as np
import pytest
from matplotlib.colors import to_hex

from ml_platform.monitoring.alerts import DEFAULT_RULES
from ml_platform.monitoring.dashboard import (
    ALERT_COLOUR,
    OK_COLOUR,
    ModelHealth,
    dashboard_figure,
    latency_colours,
    render_markdown,
    render_png_bytes,
    score_histogram,
    score_histogram_png,
)
from ml_platform.monitoring.images import PNG_MAGIC, markdown_image, png_size
from ml_platform.monitoring.serving_metrics import ServingMetrics

INLINE_IMAGE = re.compile(r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")
P99_RULE = DEFAULT_RULES["latency_p99"]  # fires above 200 ms


def health_with_latency(p50: float, p95: float, p99: float, scores=()) -> ModelHealth:
    serving = ServingMetrics(
        window="1h",
        requests=10,
        rows=10,
        errors=0,
        error_rate=0.0,
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        latency_p99_ms=p99,
        throughput_rps=1.0,
    )
    return ModelHealth("fraud_detector", 3, "healthy", serving=serving, prediction_scores=np.asarray(scores))


def drawn_latency_colours(health: ModelHealth, rules=None) -> list[str]:
    """The face colours of the bars drawn in the latency panel (the figure's first axes)."""
    latency_axis = dashboard_figure(health, rules).axes[0]
    assert latency_axis.get_title().startswith("Latency")
    return [to_hex(bar.get_facecolor()) for bar in latency_axis.patches]


def inline_images(markdown: str) -> list[tuple[str, bytes]]:
    return [(alt, base64.b64decode(data, validate=True)) for alt, data in INLINE_IMAGE.findall(markdown)]


# ---- the p99 bar ---------------------------------------------------------------------------------------
def test_the_p99_bar_is_red_only_over_its_threshold():
    assert drawn_latency_colours(health_with_latency(3.0, 12.0, 150.0)) == [OK_COLOUR] * 3
    assert drawn_latency_colours(health_with_latency(3.0, 12.0, 200.0)) == [OK_COLOUR] * 3  # at it: within
    assert drawn_latency_colours(health_with_latency(3.0, 12.0, 234.5)) == [OK_COLOUR, OK_COLOUR, ALERT_COLOUR]


def test_the_p99_bar_follows_the_rule_in_force_and_never_colours_p50_or_p95():
    strict = {**DEFAULT_RULES, "latency_p99": replace(P99_RULE, threshold=100.0)}
    assert drawn_latency_colours(health_with_latency(3.0, 12.0, 150.0), strict) == [OK_COLOUR, OK_COLOUR, ALERT_COLOUR]
    # p50 and p95 above the p99 threshold are not what the rule judges
    assert drawn_latency_colours(health_with_latency(300.0, 400.0, 150.0)) == [OK_COLOUR] * 3
    assert latency_colours([1.0, 2.0, 201.0], P99_RULE) == [OK_COLOUR, OK_COLOUR, ALERT_COLOUR]
    assert ALERT_COLOUR != OK_COLOUR


# ---- images inline in the Markdown -----------------------------------------------------------------------
def test_the_health_markdown_holds_the_dashboard_as_a_small_decodable_png():
    health = health_with_latency(3.0, 12.0, 234.5, scores=np.linspace(0, 1, 200))
    png = render_png_bytes(health)
    markdown = render_markdown(health, dashboard_png=png)
    (dashboard_alt, dashboard), (histogram_alt, histogram) = inline_images(markdown)
    assert dashboard == png and dashboard[:8] == PNG_MAGIC
    assert dashboard_alt == "dashboard of fraud_detector v3"
    assert png_size(dashboard) == (720, 480)  # 12x8 in at 60 dpi
    assert 10_000 < len(dashboard) < 150_000  # drawn, and small enough for the event log
    assert len(markdown) < 250_000
    assert markdown.index(dashboard_alt) < markdown.index("| model | version |")  # the picture first


def test_the_score_histogram_is_a_png_not_hash_marks():
    scores = np.concatenate([np.full(80, 0.05), np.full(15, 0.55), np.full(5, 0.95)])
    markdown = render_markdown(ModelHealth("fraud_detector", 7, "healthy", prediction_scores=scores))
    [(alt, histogram)] = inline_images(markdown)
    assert histogram[:8] == PNG_MAGIC and png_size(histogram) == (360, 144)  # 6x2.4 in at 60 dpi
    assert histogram == score_histogram_png(scores)
    counts, _ = score_histogram(scores)
    assert counts.tolist() == [80, 0, 0, 0, 0, 15, 0, 0, 0, 5]
    assert alt.startswith("scores per bin 0.0-0.1: 80, 0.1-0.2: 0,") and alt.endswith("0.9-1.0: 5")
    section = markdown.split("### Prediction scores (100 predictions)")[1].split("### Alerts")[0]
    assert section.strip() == markdown_image(histogram, alt)  # the image alone: no table of # bars


def test_no_scores_no_histogram_image():
    markdown = render_markdown(ModelHealth("fraud_detector", 7, "healthy"))
    assert inline_images(markdown) == [] and "No predictions in the window." in markdown


def test_markdown_image_refuses_bytes_that_are_not_a_png_and_keeps_its_alt_text_whole():
    with pytest.raises(ValueError, match="not a PNG image"):
        markdown_image(b"<svg onload=alert(1)>", "x")
    png = score_histogram_png(np.array([0.2, 0.4]))
    [(alt, data)] = inline_images(markdown_image(png, "a [bracketed]\nalt"))
    assert alt == "a (bracketed) alt" and data == png
