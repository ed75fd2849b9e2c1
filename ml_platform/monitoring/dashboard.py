"""The model's health at a glance (version, status, serving latency and errors, live performance
against its baseline, drift, the score histogram, firing alerts) as Markdown (Dagster asset metadata),
a PNG (four panels) and plain text (``ml-platform status``).

Every renderer takes the same :class:`ModelHealth` and copes with any part missing (no server, no
labels yet, no drift report): it says "n/a" rather than failing, because a dashboard is most needed
when something is down.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ml_platform.monitoring.alerts import DEFAULT_RULES, Alert, AlertRule
from ml_platform.monitoring.drift import METHOD_TITLES, DriftReport
from ml_platform.monitoring.images import INLINE_DPI, figure_png, markdown_image
from ml_platform.monitoring.performance import LIVE_METRICS, VARIANT_METRICS, LivePerformance, VariantComparison
from ml_platform.monitoring.serving_metrics import ServingMetrics

STATUSES: tuple[str, ...] = ("healthy", "degraded", "down", "no model")
HISTOGRAM_BINS = 10
# Bar colours of the PNG: a figure within its rule, and one its alert rule fires on.
OK_COLOUR = "#3b7dd8"
ALERT_COLOUR = "#d84b3b"


@dataclass
class ModelHealth:
    model_name: str
    model_version: int | None
    status: str  # "healthy" | "degraded" | "down" | "no model"
    deployed_at: str | None = None
    uptime_seconds: float | None = None
    endpoint: str | None = None
    serving: ServingMetrics | None = None
    performance: LivePerformance | None = None
    drift: DriftReport | None = None
    prediction_scores: np.ndarray = field(default_factory=lambda: np.empty(0))  # probabilities in the window
    alerts: list[Alert] = field(default_factory=list)  # rules failing right now
    variants: VariantComparison | None = None  # every variant served, shown when there is more than one

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status: expected one of {', '.join(STATUSES)}, got {self.status!r}")
        self.prediction_scores = np.asarray(self.prediction_scores, dtype="float64").reshape(-1)


def health_status(*, model_version: int | None, server_up: bool, alerts: Sequence[Alert] = ()) -> str:
    """The one-word status: "no model" before any champion, "down" when the server does not answer,
    "degraded" with any ERROR alert firing, else "healthy" (WARN alerts are shown, not escalated)."""
    if model_version is None:
        return "no model"
    if not server_up:
        return "down"
    if any(alert.severity == "ERROR" for alert in alerts):
        return "degraded"
    return "healthy"


# ---- formatting helpers --------------------------------------------------------------------------
def _known(value: float | None) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _fmt(value: float | None, digits: int = 3) -> str:
    if not _known(value):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _ms(value: float | None) -> str:
    return f"{float(value):.1f} ms" if _known(value) else "n/a"


def _pct(value: float | None) -> str:
    return f"{100 * float(value):.2f}%" if _known(value) else "n/a"


def format_uptime(seconds: float | None) -> str:
    if not _known(seconds):
        return "n/a"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {seconds}s"
    return f"{seconds}s"


def _version(health: ModelHealth) -> str:
    return f"v{health.model_version}" if health.model_version is not None else "none"


def score_histogram(scores: np.ndarray, bins: int = HISTOGRAM_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Counts of prediction scores in ``bins`` equal bins over [0, 1] (non-finite scores ignored)."""
    finite = scores[np.isfinite(scores)]
    return np.histogram(np.clip(finite, 0.0, 1.0), bins=bins, range=(0.0, 1.0))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


# ---- Markdown ------------------------------------------------------------------------------------
def render_markdown(health: ModelHealth, *, dashboard_png: bytes | None = None) -> str:
    """Markdown tables: model, serving, live performance vs baseline, drift, score histogram (a PNG inline),
    alerts; with ``dashboard_png`` (:func:`render_png_bytes`) the dashboard image first, inline too."""
    lines = [f"## {health.model_name} {_version(health)}: {health.status}", ""]
    if dashboard_png is not None:
        lines += [markdown_image(dashboard_png, f"dashboard of {health.model_name} {_version(health)}"), ""]
    lines += _table(
        ["model", "version", "status", "deployed", "uptime", "endpoint"],
        [
            [
                health.model_name,
                _version(health),
                health.status,
                health.deployed_at or "n/a",
                format_uptime(health.uptime_seconds),
                health.endpoint or "n/a",
            ]
        ],
    )
    serving = health.serving
    lines += ["", f"### Serving{f' ({serving.window})' if serving else ''}", ""]
    if serving is None:
        lines.append("No serving metrics (server not answering or no traffic).")
    else:
        lines += _table(
            ["latency p50", "latency p95", "latency p99", "throughput", "requests", "rows", "errors", "error rate"],
            [
                [
                    _ms(serving.latency_p50_ms),
                    _ms(serving.latency_p95_ms),
                    _ms(serving.latency_p99_ms),
                    f"{serving.throughput_rps:.2f} rows/s",
                    str(serving.requests),
                    str(serving.rows),
                    str(serving.errors),
                    _pct(serving.error_rate),
                ]
            ],
        )
        if serving.by_version:
            lines.append("")
            lines.append("Rows by model version: " + ", ".join(f"v{v}: {n}" for v, n in serving.by_version.items()))
    performance = health.performance
    lines += ["", "### Live performance", ""]
    if performance is None:
        lines.append("No live performance (no labels yet).")
    else:
        lines.append(
            f"{performance.labeled_rows} labeled, {performance.unlabeled_rows} awaiting labels"
            + (f" (model v{performance.model_version})" if performance.model_version is not None else "")
        )
        lines.append("")
        lines += _table(
            ["metric", "live", "baseline", "drop"],
            [
                [
                    name,
                    _fmt(performance.metrics.get(name)),
                    _fmt(performance.baseline.get(name)),
                    _fmt(performance.drop(name)),
                ]
                for name in LIVE_METRICS
            ],
        )
    variants = health.variants
    if variants is not None and len(variants) > 1:
        frame = variants.to_frame()
        lines += ["", f"### Variants ({variants.confidence:.0%} interval of the difference with the champion)", ""]
        lines += _table(list(frame.columns), [[str(cell) for cell in row] for row in frame.itertuples(index=False)])
    drift = health.drift
    lines += ["", "### Drift", ""]
    if drift is None:
        lines.append("No drift report.")
    else:
        lines.append(
            f"Drift score {drift.drift_score:.3f} ({len(drift.drifted_features)} of {len(drift.features)} features"
            f" drifted; {METHOD_TITLES.get(drift.method, drift.method)}; {drift.reference_rows} reference rows,"
            f" {drift.current_rows} current rows)"
        )
        lines.append("")
        lines += _table(
            ["feature", "score", "threshold", "drifted"],
            [[f.feature, f"{f.score:.4g}", f"{f.threshold:g}", "yes" if f.drifted else "no"] for f in drift.top(3)],
        )
    lines += ["", f"### Prediction scores ({len(health.prediction_scores)} predictions)", ""]
    if len(health.prediction_scores):
        counts, edges = score_histogram(health.prediction_scores)
        described = ", ".join(f"{edges[i]:.1f}-{edges[i + 1]:.1f}: {int(n)}" for i, n in enumerate(counts))
        lines.append(markdown_image(score_histogram_png(health.prediction_scores), f"scores per bin {described}"))
    else:
        lines.append("No predictions in the window.")
    lines += ["", "### Alerts", ""]
    if health.alerts:
        lines += _table(
            ["severity", "alert", "value", "threshold", "message"],
            [[a.severity, a.name, f"{a.value:.4g}", f"{a.threshold:g}", a.message] for a in health.alerts],
        )
    else:
        lines.append("None firing.")
    return "\n".join(lines) + "\n"


# ---- plain text ----------------------------------------------------------------------------------
def render_terminal(health: ModelHealth) -> str:
    """Plain text for ``ml-platform status``."""
    lines = [f"{health.model_name} {_version(health)}  [{health.status.upper()}]"]
    lines.append(
        f"  deployed {health.deployed_at or 'n/a'}   uptime {format_uptime(health.uptime_seconds)}"
        f"   endpoint {health.endpoint or 'n/a'}"
    )
    serving = health.serving
    if serving is not None:
        lines.append(f"  serving ({serving.window})")
        lines.append(
            f"    latency p50 {_ms(serving.latency_p50_ms)}   p95 {_ms(serving.latency_p95_ms)}"
            f"   p99 {_ms(serving.latency_p99_ms)}"
        )
        lines.append(
            f"    throughput {serving.throughput_rps:.2f} rows/s   requests {serving.requests}   rows {serving.rows}"
            f"   errors {serving.errors} ({_pct(serving.error_rate)})"
        )
    else:
        lines.append("  serving: n/a")
    performance = health.performance
    if performance is not None:
        lines.append(f"  live performance ({performance.labeled_rows} labeled, {performance.unlabeled_rows} awaiting)")
        for name in LIVE_METRICS:
            lines.append(
                f"    {name:<9} {_fmt(performance.metrics.get(name))}   baseline {_fmt(performance.baseline.get(name))}"
                f"   drop {_fmt(performance.drop(name))}"
            )
    else:
        lines.append("  live performance: n/a")
    variants = health.variants
    if variants is not None and len(variants) > 1:
        lines.append(f"  variants ({variants.confidence:.0%} interval of the difference with the champion)")
        for row in variants.to_frame().to_dict("records"):
            versus = "   ".join(
                f"{name} {row[f'{name} vs champion']}" for name in VARIANT_METRICS if row[f"{name} vs champion"]
            )
            lines.append(
                f"    {row['variant']:<18} {row['versions']:<6} rows {row['rows']}   labelled {row['labelled_rows']}"
                f"   positives {row['positives']}   precision {row['precision']}   recall {row['recall']}"
                f"   pr_auc {row['pr_auc']}" + (f"\n      vs champion: {versus}" if versus else "")
            )
    drift = health.drift
    if drift is not None:
        top = ", ".join(f"{f.feature} {f.score:.3g}" for f in drift.top(3))
        lines.append(f"  drift score {drift.drift_score:.3f} ({drift.method}); top: {top}")
    else:
        lines.append("  drift: n/a")
    if health.alerts:
        lines.append("  alerts:")
        lines += [f"    [{a.severity}] {a.name}: {a.message}" for a in health.alerts]
    else:
        lines.append("  alerts: none")
    return "\n".join(lines) + "\n"


# ---- PNG -----------------------------------------------------------------------------------------
def _figure(width: float, height: float, dpi: float = 100):
    """A matplotlib figure on the Agg renderer (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def score_histogram_png(scores: np.ndarray, dpi: float = INLINE_DPI) -> bytes:
    """The histogram of prediction scores (:data:`HISTOGRAM_BINS` bins over [0, 1]) as a small PNG."""
    figure = _figure(6, 2.4)
    axis = figure.subplots()
    counts, edges = score_histogram(np.asarray(scores, dtype="float64").reshape(-1))
    axis.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=OK_COLOUR, edgecolor="white")
    axis.set_xlim(0, 1)
    axis.set_xlabel("fraud probability")
    axis.set_ylabel("predictions")
    figure.tight_layout()
    return figure_png(figure, dpi=dpi)


def latency_colours(values: Sequence[float], rule: AlertRule) -> list[str]:
    """The colour of each latency percentile bar (p50, p95, p99): the alert colour only for the p99 bar
    and only when ``rule`` (the p99 latency rule) fires on it; the others are not what the rule judges."""
    return [
        ALERT_COLOUR if name == "p99" and rule.fires(value) else OK_COLOUR
        for name, value in zip(("p50", "p95", "p99"), values, strict=True)
    ]


def dashboard_figure(health: ModelHealth, rules: Mapping[str, AlertRule] | None = None):
    """Four panels (latency percentiles, live metrics vs baseline, drift per feature, score histogram);
    ``rules`` (default :data:`DEFAULT_RULES`) are the alert rules in force, which colour the p99 bar and
    draw its threshold."""
    figure = _figure(12, 8)
    (latency_axis, metrics_axis), (drift_axis, histogram_axis) = figure.subplots(2, 2)
    figure.suptitle(f"{health.model_name} {_version(health)}: {health.status}", fontsize=14)

    serving = health.serving
    latency_axis.set_title("Latency" + (f" ({serving.window})" if serving else ""))
    if serving is not None and _known(serving.latency_p99_ms):
        names = ["p50", "p95", "p99"]
        values = [serving.latency_p50_ms, serving.latency_p95_ms, serving.latency_p99_ms]
        rule = (rules or DEFAULT_RULES).get("latency_p99", DEFAULT_RULES["latency_p99"])
        bars = latency_axis.bar(names, values, color=latency_colours(values, rule))
        latency_axis.bar_label(bars, labels=[f"{v:.1f}" for v in values])
        latency_axis.axhline(
            rule.threshold, color="black", linestyle="--", linewidth=1, label=f"p99 alert ({rule.describe()})"
        )
        latency_axis.legend(loc="upper left", fontsize=8)
        latency_axis.set_ylabel("ms")
    else:
        _no_data(latency_axis, "no serving metrics")

    performance = health.performance
    metrics_axis.set_title("Live metrics vs baseline")
    if performance is not None and performance.labeled_rows:
        positions = np.arange(len(LIVE_METRICS))
        live = [performance.metrics.get(name, np.nan) for name in LIVE_METRICS]
        base = [performance.baseline.get(name, np.nan) for name in LIVE_METRICS]
        metrics_axis.bar(positions - 0.2, live, width=0.4, label=f"live ({performance.labeled_rows} labeled)")
        metrics_axis.bar(positions + 0.2, base, width=0.4, label="baseline (test split)")
        metrics_axis.set_xticks(positions, LIVE_METRICS)
        metrics_axis.set_ylim(0, 1.05)
        metrics_axis.legend(loc="lower right", fontsize=8)
    else:
        _no_data(metrics_axis, "no labels yet")

    drift = health.drift
    drift_axis.set_title(
        f"Drift per feature (score {drift.drift_score:.2f}, {drift.method})" if drift else "Drift per feature"
    )
    if drift is not None and drift.features:
        ordered = list(reversed(drift.features))
        colours = [ALERT_COLOUR if f.drifted else OK_COLOUR for f in ordered]
        drift_axis.barh([f.feature for f in ordered], [f.score for f in ordered], color=colours)
        drift_axis.axvline(ordered[0].threshold, color="black", linestyle="--", linewidth=1, label="threshold")
        drift_axis.legend(loc="lower right", fontsize=8)
        drift_axis.tick_params(axis="y", labelsize=8)
    else:
        _no_data(drift_axis, "no drift report")

    histogram_axis.set_title(f"Prediction scores ({len(health.prediction_scores)})")
    if len(health.prediction_scores):
        counts, edges = score_histogram(health.prediction_scores, bins=20)
        histogram_axis.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=OK_COLOUR)
        histogram_axis.set_yscale("log" if counts.max() > 100 * max(np.median(counts), 1) else "linear")
        histogram_axis.set_xlabel("fraud probability")
    else:
        _no_data(histogram_axis, "no predictions")

    figure.tight_layout()
    return figure


def render_png(health: ModelHealth, path: str | Path, rules: Mapping[str, AlertRule] | None = None) -> Path:
    """The dashboard (:func:`dashboard_figure`) at full size (1200x800), written atomically to ``path``."""
    png = figure_png(dashboard_figure(health, rules))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_bytes(png)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def render_png_bytes(
    health: ModelHealth, rules: Mapping[str, AlertRule] | None = None, dpi: float = INLINE_DPI
) -> bytes:
    """The dashboard as PNG bytes at ``dpi`` (default small, 720x480: for Markdown, see images)."""
    return figure_png(dashboard_figure(health, rules), dpi=dpi)


def _no_data(axis, text: str) -> None:
    axis.text(0.5, 0.5, text, ha="center", va="center", transform=axis.transAxes, color="grey")
    axis.set_xticks([])
    axis.set_yticks([])
