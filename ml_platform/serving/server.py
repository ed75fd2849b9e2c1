"""The predictor behind every face of the app: routing, scoring, logging."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import itertools
import logging
import os
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.predictions import PredictionBatch, PredictionLogger, RowIds
from ml_platform.registry import Registry
from ml_platform.serving.config import ServerConfig
from ml_platform.serving.metrics import Metrics
from ml_platform.serving.models import Deployment, ModelHandle, ModelManager
from ml_platform.serving.online import OnlineFeatures
from ml_platform.serving.schemas import ApiError

_log = logging.getLogger(__name__)

CHAMPION_VARIANT = "champion"
CHALLENGER_VARIANT = "challenger"
SHADOW_VARIANT = "challenger_shadow"


@dataclass(frozen=True)
class Routing:
    challenger_weight: float
    mode: str
    sticky: bool


def customer_bucket(customer_id: int) -> float:
    """A stable number in [0, 1) per customer (the same in every process and after restarts)."""
    digest = hashlib.blake2b(str(int(customer_id)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class _RequestIds:
    """Ids for requests that bring none: 32 hex digits, a random prefix per process and a counter.

    As unique as ``uuid4().hex`` in practice (64 random bits per process, then 2**64 ids each) and
    ~10x cheaper: uuid4 reads the kernel's random source per call, and that call releases the GIL,
    which on a busy server hands it to another thread at every request.
    """

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)  # a forked worker must not repeat its parent's ids

    def reset(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_REQUEST_IDS = _RequestIds()


def new_request_id() -> str:
    """A fresh request id (32 hex digits), for a request that brought none."""
    return _REQUEST_IDS.new()


def row_ids(base: str | None, n: int) -> list[str]:
    base = base or new_request_id()
    return [base] if n == 1 else [f"{base}/{index}" for index in range(n)]


class ModelServer:
    """State shared by the routes: the models, the router, the feature store, the log, the metrics."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.registry = Registry(config.tracking_uri, config.model_name, config.model_name, config.artifact_root)
        self.features = OnlineFeatures(config.feast) if config.feast is not None else None
        self.manager = ModelManager(
            self.registry,
            poll_seconds=config.poll_seconds,
            on_swap=self._swapped,
            on_refused=self._refused,
            extra_work=self._open_features if self.features is not None else None,
            primary_alias=config.serve_alias,
            pinned_version=config.model_version,
        )
        # The label of the model that answers: "champion", or "challenger" on a canary server.
        self.primary_variant = CHAMPION_VARIANT if config.serve_alias == CHAMPION_VARIANT else CHALLENGER_VARIANT
        self.logger = PredictionLogger(
            config.log_dir,
            journal_dir=config.journal_dir,
            flush_rows=config.log_flush_rows,
            flush_seconds=config.log_flush_seconds,
            on_count=self.metrics.count_prediction_log,
        )
        self.routing = Routing(float(config.challenger_weight), config.mode, bool(config.sticky))
        self.metrics.challenger_weight.set(self.routing.challenger_weight)
        self.started_at = time.monotonic()
        self.draining = False
        self._random = random.Random()
        self.row_queue = RowQueue(self)

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.started_at = time.monotonic()
        self.logger.start()
        self.manager.start()

    def stop(self) -> None:
        """Called once the HTTP server stopped accepting and finished the requests in flight."""
        self.draining = True
        self.manager.stop()
        self.logger.close()

    def _swapped(self, deployment: Deployment) -> None:
        self.metrics.model_version.labels(self.primary_variant).set(deployment.champion.version)
        self.metrics.model_version.labels(CHALLENGER_VARIANT).set(
            deployment.challenger.version if deployment.challenger else 0
        )
        # Everything alive now (libraries, models) lives as long as the process: keep it out of the
        # cyclic collector's scans. Otherwise each full collection walks millions of objects that
        # MLflow, pandas and scikit-learn left behind and stalls requests for ~100 ms (the p99 tail).
        gc.freeze()

    def _refused(self, version: int, reason: str) -> None:
        self.metrics.model_refused.labels(str(version)).set(1)

    def _open_features(self) -> None:
        if self.features is not None and not self.features.ready:
            self.features.open()
            # Opened after the first swap froze the rest: Feast, its registry and the store's clients live
            # as long as the process too (unfrozen, they doubled the p99 of requests that read Redis).
            gc.freeze()

    # ---- state ---------------------------------------------------------------------------------
    @property
    def deployment(self) -> Deployment | None:
        return self.manager.deployment

    @property
    def pinned(self) -> bool:
        """Whether this server serves one pinned version (ignoring alias moves) rather than following the alias."""
        return self.config.model_version is not None

    def pin_state(self) -> dict[str, Any]:
        """What the health routes say about the pin: ``pinned`` and ``pinned_version`` (None when following)."""
        return {"pinned": self.pinned, "pinned_version": self.config.model_version}

    def not_ready_reason(self) -> str | None:
        if self.draining:
            return "shutting down"
        if self.manager.deployment is None:
            return self.manager.last_error or "loading the champion"
        if self.features is not None and not self.features.ready:
            return self.features.last_error or "opening the feature store"
        return None

    def require_deployment(self) -> Deployment:
        deployment = self.manager.deployment
        if deployment is None:
            raise ApiError(503, f"no model loaded: {self.manager.last_error or 'loading the champion'}", None)
        return deployment

    def set_routing(self, *, challenger_weight: float | None, mode: str | None, sticky: bool | None) -> Routing:
        current = self.routing
        routing = Routing(
            current.challenger_weight if challenger_weight is None else float(challenger_weight),
            current.mode if mode is None else mode,
            current.sticky if sticky is None else bool(sticky),
        )
        self.routing = routing  # one reference, read once per request
        self.metrics.challenger_weight.set(routing.challenger_weight)
        _log.info("routing changed to %s", routing)
        return routing

    def routing_state(self) -> dict[str, Any]:
        deployment = self.manager.deployment
        state: dict[str, Any] = asdict(self.routing)
        state["champion_version"] = deployment.champion.version if deployment else None
        state["challenger_version"] = deployment.challenger.version if deployment and deployment.challenger else None
        return state

    # ---- scoring -------------------------------------------------------------------------------
    def choose_challenger(self, deployment: Deployment, routing: Routing, customer_ids: list[int | None]) -> np.ndarray:
        """Which rows the challenger answers (split mode only; shadow mode never returns it)."""
        n = len(customer_ids)
        weight = routing.challenger_weight
        if deployment.challenger is None or routing.mode != "split" or weight <= 0.0:
            return np.zeros(n, dtype=bool)
        if weight >= 1.0:
            return np.ones(n, dtype=bool)
        picks = np.empty(n, dtype=bool)
        for index, customer_id in enumerate(customer_ids):
            if routing.sticky and customer_id is not None:
                picks[index] = customer_bucket(customer_id) < weight
            else:
                picks[index] = self._random.random() < weight
        return picks

    def score(
        self,
        deployment: Deployment,
        features: np.ndarray,
        *,
        customer_ids: list[int | None],
        request_ids: list[str],
        started: float,
        routing: Routing | None = None,
        handle: ModelHandle | None = None,
    ) -> list[dict[str, Any]]:
        """Score rows, log them, count them; ``handle`` pins one model (no routing, no shadow)."""
        routing = routing or self.routing
        n = len(features)
        if handle is not None:
            variant = self.primary_variant if handle is deployment.champion else CHALLENGER_VARIANT
            groups = [(handle, variant, np.arange(n))]
        else:
            to_challenger = self.choose_challenger(deployment, routing, customer_ids)
            groups = [(deployment.champion, self.primary_variant, np.flatnonzero(~to_challenger))]
            if deployment.challenger is not None:
                groups.append((deployment.challenger, CHALLENGER_VARIANT, np.flatnonzero(to_challenger)))
        results: list[dict[str, Any] | None] = [None] * n
        scored = []
        for model, variant, rows in groups:
            if len(rows) == 0:
                continue
            probabilities = model.predict(features[rows])
            scored.append((model, variant, rows, probabilities))
        latency_ms = (time.perf_counter() - started) * 1000.0
        now = time.time()
        for model, variant, rows, probabilities in scored:
            is_fraud = probabilities >= model.threshold
            for position, row in enumerate(rows):
                results[row] = {
                    "request_id": request_ids[row],
                    "probability": float(probabilities[position]),
                    "is_fraud": bool(is_fraud[position]),
                    "threshold": model.threshold,
                    "model_version": model.version,
                    "variant": variant,
                    "latency_ms": round(latency_ms, 3),
                }
            self._log(now, model, variant, rows, features, probabilities, customer_ids, request_ids, latency_ms)
        if handle is None and routing.mode == "shadow" and deployment.challenger is not None:
            shadow_started = time.perf_counter()
            probabilities = deployment.challenger.predict(features)
            shadow_ms = (time.perf_counter() - shadow_started) * 1000.0
            self._log(
                now,
                deployment.challenger,
                SHADOW_VARIANT,
                np.arange(n),
                features,
                probabilities,
                customer_ids,
                request_ids,
                shadow_ms,
            )
        return results  # type: ignore[return-value]

    def score_pinned(
        self, handle: ModelHandle, variant: str, features: np.ndarray, *, request_id: str, started: float
    ) -> np.ndarray:
        """P(fraud) of each row by one model (no routing, no shadow), every row logged and counted.

        What :meth:`score` does with ``handle`` given, without building an answer per row: the protocols
        that render their own answers (v2 infer, ``/invocations``) call this. One row goes through the
        model's one-row buffer and the log's one-row entry (:meth:`score_row`), more as one matrix.
        """
        n = len(features)
        if n == 1:
            return np.array(
                [self.score_row(handle, variant, features[0].tolist(), request_id=request_id, started=started)]
            )
        probabilities = handle.predict(features)
        latency_ms = (time.perf_counter() - started) * 1000.0
        # the rows' ids are <request_id>/<row>, journaled as the id and the count
        self.log_external(handle, variant, features, probabilities, RowIds(request_id, n), latency_ms)
        return probabilities

    def score_row(
        self, handle: ModelHandle, variant: str, values: Sequence[float | None], *, request_id: str, started: float
    ) -> float:
        """P(fraud) of one row (``values`` in :data:`MODEL_FEATURES` order, None or NaN: missing) by one
        model, through its one-row buffer; the row logged as it is given, and counted."""
        probability = handle.predict_row(values)
        latency_ms = (time.perf_counter() - started) * 1000.0
        threshold = handle.threshold
        self.metrics.count_predictions(variant, 1)
        self.logger.log_row(
            time.time(), request_id, None, values, probability, probability >= threshold, threshold,
            handle.version, variant, latency_ms,
        )  # fmt: skip
        return probability

    async def score_row_soon(
        self, handle: ModelHandle, variant: str, values: Sequence[float | None], *, request_id: str, started: float
    ) -> float:
        """:meth:`score_row`'s answer, scored with the other one-row requests of this event-loop turn in one
        call (:class:`RowQueue`): bit for bit the same probability, logged and counted the same."""
        probability, _ = await self.row_queue.submit(handle, variant, values, None, request_id, started, None)
        return probability

    async def score_one_soon(
        self,
        deployment: Deployment,
        features: Sequence[float | None],
        *,
        customer_id: int | None,
        request_id: str,
        started: float,
    ) -> dict[str, Any]:
        """One row, as :meth:`score` answers and logs it (routing, shadow and all), without its arrays.

        The single-row path of ``/predict``: ``features`` is the request's own list (None for a missing
        value), logged as it is. The row is scored with the other one-row requests of this event-loop
        turn, in one call per model (:class:`RowQueue`); a row alone goes through the model's one-row buffer.
        """
        model, variant, shadow = self._pick_one(deployment, customer_id)
        probability, latency_ms = await self.row_queue.submit(
            model, variant, features, customer_id, request_id, started, shadow
        )
        return one_answer(request_id, probability, model, variant, latency_ms)

    def _pick_one(self, deployment: Deployment, customer_id: int | None) -> tuple[ModelHandle, str, ModelHandle | None]:
        """The model that answers one row (the routing's split), its variant, and the shadow model or None."""
        routing = self.routing
        challenger = deployment.challenger
        if challenger is None:
            return deployment.champion, self.primary_variant, None
        if routing.mode == "shadow":
            return deployment.champion, self.primary_variant, challenger
        if routing.mode == "split" and routing.challenger_weight > 0.0:
            weight = routing.challenger_weight
            if weight >= 1.0:
                picked = True
            elif routing.sticky and customer_id is not None:
                picked = customer_bucket(customer_id) < weight
            else:
                picked = self._random.random() < weight
            if picked:
                return challenger, CHALLENGER_VARIANT, None
        return deployment.champion, self.primary_variant, None

    def _log(self, now, model, variant, rows, features, probabilities, customer_ids, request_ids, latency_ms):
        self.metrics.count_predictions(variant, len(rows))
        self.logger.log(
            PredictionBatch(
                time=now,
                request_ids=[request_ids[row] for row in rows],
                customer_ids=[customer_ids[row] for row in rows],
                features=features[rows],
                probabilities=probabilities,
                is_fraud=probabilities >= model.threshold,
                threshold=model.threshold,
                model_version=model.version,
                variant=variant,
                latency_ms=latency_ms,
            )
        )

    def log_external(
        self, handle: ModelHandle, variant: str, features, probabilities, request_ids: Sequence[str], latency_ms
    ):
        """Log rows scored outside :meth:`score` (every row: no selection, no customer ids)."""
        n = len(request_ids)
        probabilities = np.asarray(probabilities, dtype="float64").reshape(-1)
        self.metrics.count_predictions(variant, n)
        self.logger.log(
            PredictionBatch(
                time=time.time(),
                request_ids=request_ids,
                customer_ids=[None] * n,
                features=np.asarray(features, dtype="float64").reshape(n, len(MODEL_FEATURES)),
                probabilities=probabilities,
                is_fraud=probabilities >= handle.threshold,
                threshold=handle.threshold,
                model_version=handle.version,
                variant=variant,
                latency_ms=latency_ms,
            )
        )


def one_answer(request_id: str, probability: float, model: ModelHandle, variant: str, latency_ms: float) -> dict:
    """The answer for one row, as ``/predict`` renders it."""
    threshold = model.threshold
    return {
        "request_id": request_id,
        "probability": probability,
        "is_fraud": probability >= threshold,
        "threshold": threshold,
        "model_version": model.version,
        "variant": variant,
        "latency_ms": round(latency_ms, 3),
    }


class _QueuedRow:
    """A one-row request waiting for its turn: who scores it, what is logged of it, and its answer
    (the probability and the latency in ms)."""

    __slots__ = ("model", "variant", "values", "customer_id", "request_id", "started", "shadow", "answer")

    def __init__(self, model, variant, values, customer_id, request_id, started, shadow, answer) -> None:
        self.model: ModelHandle = model
        self.variant: str = variant
        self.values: Sequence[float | None] = values
        self.customer_id: int | None = customer_id
        self.request_id: str = request_id
        self.started: float = started
        self.shadow: ModelHandle | None = shadow
        self.answer: asyncio.Future[tuple[float, float]] = answer


class RowQueue:
    """One-row requests of one event-loop turn, scored in one XGBoost call per model.

    Under load, the requests of several connections are read in the same turn of the event loop, and
    each asks for one row. An XGBoost call costs about ten times what one more row in it costs (it
    builds its context per call), so scoring the turn's rows in one call pays that once per turn rather
    than once per request. The first row of a turn schedules the scoring for the next turn
    (``loop.call_soon``): a request waits at most one turn, and a row alone is scored alone, through the
    model's one-row buffer.

    A row in a matrix gets the same probability, bit for bit, as the row alone: XGBoost sums each row's
    trees in the same order whatever the rows around it (tests/serving/test_row_queue.py checks it).
    Each row is logged as :meth:`ModelServer.score` logs a row (its own id, customer, latency; the
    shadow model's answer too); a row whose scoring or log write fails gets that error, not an answer.
    """

    def __init__(self, server: ModelServer) -> None:
        self.server = server
        # the rows waiting for the next turn, per event loop (a server runs one; tests may call from another)
        self._waiting: dict[asyncio.AbstractEventLoop, list[_QueuedRow]] = {}

    def submit(
        self,
        model: ModelHandle,
        variant: str,
        values: Sequence[float | None],
        customer_id: int | None,
        request_id: str,
        started: float,
        shadow: ModelHandle | None,
    ) -> asyncio.Future[tuple[float, float]]:
        """The row's (probability, latency in ms), once the rows of this turn are scored and logged."""
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        waiting = self._waiting.get(loop)
        if waiting is None:
            waiting = self._waiting[loop] = []
            loop.call_soon(self._score, loop)
        waiting.append(_QueuedRow(model, variant, values, customer_id, request_id, started, shadow, answer))
        return answer

    def _score(self, loop: asyncio.AbstractEventLoop) -> None:
        rows = self._waiting.pop(loop)
        try:
            self._score_rows(rows)
        except Exception as error:  # a fault here must not leave a request waiting: each gets the error
            _log.exception("scoring the queued one-row requests failed")
            for row in rows:
                if not row.answer.done():
                    row.answer.set_exception(error)

    def _score_rows(self, rows: list[_QueuedRow]) -> None:
        errors: dict[int, Exception] = {}  # a row's position -> why it has no answer
        answers: list[tuple[float, float] | None] = [None] * len(rows)
        log_row, count = self.server.logger.log_row, self.server.metrics.count_predictions
        for model, positions in _by_model(rows, lambda row: row.model):
            try:
                probabilities = _predict(model, [rows[at].values for at in positions])
            except Exception as error:
                errors.update(dict.fromkeys(positions, error))
                continue
            ended, now = time.perf_counter(), time.time()
            threshold, version = model.threshold, model.version
            for at, probability in zip(positions, probabilities, strict=True):
                row = rows[at]
                latency_ms = (ended - row.started) * 1000.0
                try:
                    log_row(now, row.request_id, row.customer_id, row.values, probability, probability >= threshold,
                            threshold, version, row.variant, latency_ms)  # fmt: skip
                except Exception as error:
                    errors[at] = error
                    continue
                count(row.variant, 1)
                answers[at] = (probability, latency_ms)
        shadowed = [at for at, row in enumerate(rows) if row.shadow is not None and at not in errors]
        for shadow, positions in _by_model([rows[at] for at in shadowed], lambda row: row.shadow):
            positions = [shadowed[at] for at in positions]
            shadow_started = time.perf_counter()
            try:
                probabilities = _predict(shadow, [rows[at].values for at in positions])
            except Exception as error:
                errors.update(dict.fromkeys(positions, error))
                continue
            shadow_ms = (time.perf_counter() - shadow_started) * 1000.0
            now, threshold = time.time(), shadow.threshold
            for at, probability in zip(positions, probabilities, strict=True):
                row = rows[at]
                try:
                    log_row(now, row.request_id, row.customer_id, row.values, probability, probability >= threshold,
                            threshold, shadow.version, SHADOW_VARIANT, shadow_ms)  # fmt: skip
                except Exception as error:
                    errors[at] = error
                    continue
                count(SHADOW_VARIANT, 1)
        for at, row in enumerate(rows):
            if row.answer.done():  # its request was cancelled meanwhile
                continue
            error = errors.get(at)
            if error is not None:
                row.answer.set_exception(error)
            else:
                row.answer.set_result(answers[at])


def _by_model(rows: list[_QueuedRow], model_of) -> list[tuple[ModelHandle, list[int]]]:
    """The rows' positions grouped by the model ``model_of`` gives (nearly always one group)."""
    groups: dict[int, tuple[ModelHandle, list[int]]] = {}
    for at, row in enumerate(rows):
        model = model_of(row)
        group = groups.get(id(model))
        if group is None:
            groups[id(model)] = (model, [at])
        else:
            group[1].append(at)
    return list(groups.values())


def _predict(model: ModelHandle, rows: list[Sequence[float | None]]) -> list[float]:
    """P(fraud) of each row: one row through the model's one-row buffer, more as one float64 matrix
    (numpy reads None as NaN, as the buffer does)."""
    if len(rows) == 1:
        return [model.predict_row(rows[0])]
    return model.predict(np.array(rows, dtype="float64")).tolist()
