"""The models a server answers with, and how they change while it runs.

A :class:`Deployment` (champion, optional challenger) is immutable. The :class:`ModelManager` keeps one
reference to the current one; its watcher thread polls the registry's aliases and, when they move,
builds the new deployment completely (load, threshold, warm-up) and only then replaces that one
reference. A request reads the reference once when it starts and keeps that deployment to the end,
so a swap never fails or mixes a request in flight. A manager given a pinned version loads that version
once and never follows an alias.

A model is only ever loaded from its native XGBoost file (:meth:`Registry.load_booster`); a version
that is anything else is refused, remembered as refused and never read again, and what is loaded keeps
serving.
"""

from __future__ import annotations

import ctypes
import json
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml_platform.features.engineering import MODEL_FEATURES
from ml_platform.registry import CHALLENGER, CHAMPION, ModelRefused, Registry

_log = logging.getLogger(__name__)


class InplacePredictor:
    """``booster.inplace_predict(rows)`` for float64 rows, through XGBoost's own C entry point, cheaply.

    The answers are bit-identical to the Python wrapper's: the same function
    (``XGBoosterPredictFromDense``), the same JSON config (built once by XGBoost's own ``make_jcargs``
    with the wrapper's defaults: value, all trees, ``missing`` NaN), the same array interface
    (numpy's ``__array_interface__`` as JSON) and the same float32 output widened to float64.
    What it saves, per call, is the wrapper's Python (array-interface JSON, type dispatch, a second C
    call for the feature count, the output copy: ~100 us for one row) and XGBoost's own set-up: called
    without a proxy matrix, XGBoost builds one per call, and its context reads the cgroup CPU quota
    files each time (13 system calls). Each thread here keeps its own proxy (a proxy holds the array
    it was last given, so two threads must not share one) and, for :meth:`predict_row`, its own
    one-row buffer whose array interface is built once. One row then costs ~30 us instead of ~160 us;
    most of what is left is inside XGBoost (3.2 resets the proxy's context per call, compiling a
    ``std::regex`` to parse the device name), out of reach from here.

    ``xgboost.core._LIB`` and ``make_jcargs`` are XGBoost's internals (the wrapper's own way in), so
    tests/serving/test_fast_path.py checks the answers against ``inplace_predict`` bit for bit.

    XGBoost's result buffer belongs to the calling thread and the booster until that thread's next
    prediction, so every result is copied out before this returns.
    """

    def __init__(self, booster: Any) -> None:
        from xgboost import core

        self.booster = booster  # keeps the C handle alive as long as this predictor
        self.n_features = int(booster.num_features())
        self._handle = booster.handle
        self._lib = core._LIB
        self._check_call = core._check_call
        self._predict = core._LIB.XGBoosterPredictFromDense
        # exactly the config inplace_predict passes with its defaults
        self._config = core.make_jcargs(
            type=0,
            training=False,
            iteration_begin=0,
            iteration_end=0,
            missing=np.nan,
            strict_shape=False,
            cache_id=0,
        )
        self._local = threading.local()

    def _thread_state(self) -> _ThreadState:
        state = getattr(self._local, "state", None)
        if state is None:
            state = _ThreadState(self._lib, self._check_call, self.n_features)
            self._local.state = state
        return state

    def predict(self, features: np.ndarray) -> np.ndarray:
        """P(fraud) per row of ``features`` (n, n_features), as float64."""
        rows = np.ascontiguousarray(features, dtype="float64")
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got shape {rows.shape}")
        n = rows.shape[0]
        if n == 0:
            return np.empty(0, dtype="float64")
        state = self._thread_state()
        interface = json.dumps(rows.__array_interface__).encode()
        self._check_call(self._predict(self._handle, interface, self._config, state.proxy, *state.out_refs))
        size = 1  # n for a binary model (its output shape is [n]); a product of dims, without numpy's overhead
        for dim in range(state.out_dims.value):
            size *= state.out_shape[dim]
        return np.ctypeslib.as_array(state.out_values, shape=(size,)).astype("float64")

    def predict_row(self, values: Sequence[float | None]) -> float:
        """P(fraud) for one row given as ``n_features`` numbers (None or NaN: missing)."""
        state = self._thread_state()
        state.row[0] = values  # numpy turns None into NaN, as the slow path's array does
        self._check_call(self._predict(self._handle, state.row_interface, self._config, state.proxy, *state.out_refs))
        return state.out_values[0]  # a C float widened to a Python float: what float32 -> float64 gives


class _ThreadState:
    """One thread's proxy matrix, one-row buffer and output slots; the proxy is freed with it."""

    def __init__(self, lib: Any, check_call: Callable[[int], None], n_features: int) -> None:
        from xgboost.core import c_bst_ulong

        self.proxy = ctypes.c_void_p()
        check_call(lib.XGProxyDMatrixCreate(ctypes.byref(self.proxy)))
        weakref.finalize(self, lib.XGDMatrixFree, ctypes.c_void_p(self.proxy.value))
        self.row = np.zeros((1, n_features), dtype="float64")
        self.row_interface = json.dumps(self.row.__array_interface__).encode()
        self.out_shape = ctypes.POINTER(c_bst_ulong)()
        self.out_dims = c_bst_ulong()
        self.out_values = ctypes.POINTER(ctypes.c_float)()
        self.out_refs = (ctypes.byref(self.out_shape), ctypes.byref(self.out_dims), ctypes.byref(self.out_values))


@dataclass(frozen=True)
class ModelHandle:
    """One loaded model version: the XGBoost booster (its own format, never unpickled) and its threshold."""

    version: int
    booster: Any
    threshold: float
    loaded_at: float = 0.0
    predictor: InplacePredictor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "predictor", InplacePredictor(self.booster))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """P(fraud) for rows of :data:`MODEL_FEATURES`: ``booster.inplace_predict`` (bit for bit), as float64."""
        return self.predictor.predict(features)

    def predict_row(self, values: Sequence[float | None]) -> float:
        """P(fraud) for one row of :data:`MODEL_FEATURES` (None: missing), as :meth:`predict` gives it."""
        return self.predictor.predict_row(values)


@dataclass(frozen=True)
class Deployment:
    champion: ModelHandle
    challenger: ModelHandle | None

    @property
    def versions(self) -> tuple[int, int | None]:
        return self.champion.version, self.challenger.version if self.challenger else None


class ModelManager:
    """Loads the champion and challenger named by the registry's aliases and follows them, or, given
    ``pinned_version``, that one version for the primary alias's role, alone and for good.

    Pinned (Kubernetes pins every Deployment it rolls out, so a promotion reaches pods only by a rollout):
    the aliases are never read; the version is loaded once, with no challenger beside it (A/B between
    pinned versions is two Deployments, the champion's and the canary's). A pinned version that does not
    exist, or that the registry refuses, leaves the server not ready with the reason; one that does not
    exist (yet) is looked for again on each tick, a refused one never.

    ``refused`` maps each version the registry refused to load (:class:`ModelRefused`) to the reason.
    A refused version is logged once and never read again; while the alias names it, the model that
    was serving keeps serving (a refused challenger is left out), and a server with nothing loaded yet
    says why it is not ready.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        poll_seconds: float,
        on_swap: Callable[[Deployment], None] | None = None,
        on_refused: Callable[[int, str], None] | None = None,
        extra_work: Callable[[], None] | None = None,
        primary_alias: str = CHAMPION,
        pinned_version: int | None = None,
    ) -> None:
        self.registry = registry
        self.primary_alias = primary_alias
        self.pinned_version = pinned_version
        self.poll_seconds = poll_seconds
        self.deployment: Deployment | None = None
        self.last_error: str | None = "loading the champion"
        self.swaps = 0
        self.polls = 0  # watcher ticks done, refresh attempted in each
        self.refused: dict[int, str] = {}
        self._on_swap = on_swap
        self._on_refused = on_refused
        self._extra_work = extra_work
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresh_lock = threading.Lock()

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="model-alias-watcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as error:  # keep serving what is loaded; say why nothing new loaded
                self.last_error = f"could not load from the registry: {type(error).__name__}: {error}"
                _log.exception("model refresh failed")
            if self._extra_work is not None:
                try:
                    self._extra_work()
                except Exception as error:  # reported by readiness; retried on the next tick
                    _log.warning("watcher side task failed: %s: %s", type(error).__name__, error)
            self.polls += 1
            self._stop.wait(self.poll_seconds)

    # ---- loading -------------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Follow the aliases once (or load the pinned version, once); True when the deployment changed."""
        with self._refresh_lock:
            if self.pinned_version is not None:
                return self._load_pinned(self.pinned_version)
            aliases = self.registry.aliases()
            champion = aliases.get(self.primary_alias)  # the model this server answers with
            # A champion server keeps the challenger beside it (A/B, shadow); a challenger server serves alone.
            challenger = aliases.get(CHALLENGER) if self.primary_alias == CHAMPION else None
            if challenger == champion or challenger in self.refused:
                challenger = None
            current = self.deployment
            if champion is None:
                alias = self.primary_alias
                if current is None:
                    self.last_error = f"no version of model {self.registry.model_name!r} has the alias {alias!r}"
                else:  # the alias was removed: keep answering with what is loaded
                    _log.warning("alias %s is gone; still serving version %s", alias, current.champion.version)
                return False
            if champion in self.refused:
                self._keep_serving(champion)
                return False
            if current is not None and current.versions == (champion, challenger):
                return False
            loaded = {}
            if current is not None:
                loaded = {h.version: h for h in (current.champion, current.challenger) if h is not None}
            try:
                champion_handle = self._handle(champion, loaded)
            except ModelRefused as refusal:
                self._refuse(champion, refusal)
                self._keep_serving(champion)
                return False
            challenger_handle = None
            if challenger is not None:
                try:
                    challenger_handle = self._handle(challenger, loaded)
                except ModelRefused as refusal:
                    self._refuse(challenger, refusal)
                if current is not None and current.versions == (champion, None) and challenger_handle is None:
                    return False
            self._install(Deployment(champion_handle, challenger_handle))
            return True

    def _install(self, deployment: Deployment) -> None:
        self.deployment = deployment  # the one reference requests read: the swap is this line
        self.last_error = None
        self.swaps += 1
        _log.info(
            "serving %s: %s v%s%s, challenger v%s",
            self.registry.model_name,
            self.primary_alias,
            deployment.champion.version,
            " (pinned)" if self.pinned_version is not None else "",
            deployment.challenger.version if deployment.challenger else None,
        )
        if self._on_swap is not None:
            self._on_swap(deployment)

    def _load_pinned(self, version: int) -> bool:
        """Load the pinned version unless it is loaded or was refused; readiness says why it is not."""
        if self.deployment is not None or version in self.refused:
            return False
        what = f"the pinned {self.primary_alias} ({self.registry.model_name} version {version})"
        try:
            handle = self._handle(version, {})
        except ModelRefused as refusal:
            self._refuse(version, refusal)
            self.last_error = f"{what} was refused: {self.refused[version]}"
            return False
        except Exception as error:
            # MLflow's "no such version" (error code RESOURCE_DOES_NOT_EXIST), told apart without importing MLflow
            if getattr(error, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                self.last_error = f"{what} does not exist in the registry"
                return False
            raise
        self._install(Deployment(handle, None))
        return True

    def _refuse(self, version: int, refusal: ModelRefused) -> None:
        reason = str(refusal)
        self.refused[version] = reason
        _log.warning("refused to load %s version %s: %s", self.registry.model_name, version, reason)
        if self._on_refused is not None:
            self._on_refused(version, reason)

    def _keep_serving(self, refused: int) -> None:
        """The primary alias names a refused version: what is loaded keeps serving, or readiness says why."""
        if self.deployment is None:
            self.last_error = (
                f"the {self.primary_alias} ({self.registry.model_name} version {refused}) was refused:"
                f" {self.refused[refused]}"
            )

    def _handle(self, version: int, loaded: dict[int, ModelHandle]) -> ModelHandle:
        existing = loaded.get(version)
        if existing is not None:
            return existing
        booster = self.registry.load_booster(version)
        # A request scores one row or a few: one thread. XGBoost's default (every core) starts OpenMP
        # workers per call that contend with the server's own threads; on 2 cores that made a one-row
        # prediction ~240 us instead of tens.
        booster.set_param({"nthread": 1})
        threshold = self.registry.threshold(version)
        handle = ModelHandle(version, booster, threshold, time.time())
        warm_up(handle)
        return handle


def warm_up(handle: ModelHandle) -> None:
    """One prediction, so the first request does not pay for XGBoost's lazy set-up."""
    handle.predict(np.zeros((1, len(MODEL_FEATURES)), dtype="float64"))
