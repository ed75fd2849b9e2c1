"""The model server: FastAPI on uvicorn, one predictor behind three protocols.

Public API: :func:`create_app`, :class:`ServerConfig`; run it with
``python -m ml_platform.serving --host 127.0.0.1 --port 8080``. The server writes its prediction log
through :mod:`ml_platform.predictions`, where readers find it too.

The names are imported on first use, so ``import ml_platform.serving.<module>`` (batch scoring, for
one) does not pay for FastAPI.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ml_platform.serving.app import create_app
    from ml_platform.serving.config import ServerConfig

_EXPORTS = {
    "create_app": "ml_platform.serving.app",
    "ServerConfig": "ml_platform.serving.config",
}

__all__ = ["ServerConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ml_platform.serving' has no attribute {name!r}")
