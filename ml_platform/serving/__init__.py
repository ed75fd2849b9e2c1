"""The model server: FastAPI on uvicorn, one predictor behind three protocols.

Public API: :func:`create_app`, :class:`ServerConfig`, :func:`read_prediction_log` (and
:class:`PredictionLogger`, :data:`LOG_COLUMNS`); run it with
``python -m ml_platform.serving --host 127.0.0.1 --port 8080``.

The names are imported on first use, so ``import ml_platform.serving.<module>`` (batch scoring, for
one) does not pay for FastAPI.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ml_platform.serving.app import create_app
    from ml_platform.serving.config import ServerConfig
    from ml_platform.serving.prediction_log import LOG_COLUMNS, PredictionLogger, read_prediction_log

_EXPORTS = {
    "create_app": "ml_platform.serving.app",
    "ServerConfig": "ml_platform.serving.config",
    "LOG_COLUMNS": "ml_platform.serving.prediction_log",
    "PredictionLogger": "ml_platform.serving.prediction_log",
    "read_prediction_log": "ml_platform.serving.prediction_log",
}

__all__ = ["LOG_COLUMNS", "PredictionLogger", "ServerConfig", "create_app", "read_prediction_log"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ml_platform.serving' has no attribute {name!r}")
