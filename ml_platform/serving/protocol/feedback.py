"""``POST /feedback``: ground truth for answers already given (a chargeback, an analyst's verdict).

The body is ``{"labels": [{"request_id" | "transaction_id", "label", "labelled_at"?}, ...]}``: each row
names the request it judges (the request id the answer carried; a transaction's id when the request
sent it as its request id), the label (``1``/``0``, ``true``/``false`` or ``"fraud"``/``"legit"``) and
when it was given (ISO 8601, UTC when no offset; absent: now). The rows are appended to the label
store the server is configured with (``labels_dir``: the monitoring directory's, which
``live_performance`` reads), where the latest label of a request wins.

All or nothing: a row that breaks the rules (:func:`ml_platform.monitoring.labels.validate_labels`)
refuses the whole body with a 422 naming every bad row (``labels[3].label: ...``); more rows than the
server's ``max_batch_rows`` is a 413, as for ``/predict``. It is a scoring route: behind the scoring token.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ml_platform.monitoring.labels import LabelImport, LabelStore, LabelValidationError
from ml_platform.serving.protocol.common import json_object, json_response
from ml_platform.serving.schemas import ApiError
from ml_platform.serving.server import ModelServer

_log = logging.getLogger(__name__)

FEEDBACK_PATH = "/feedback"


def router(server: ModelServer) -> APIRouter:
    routes = APIRouter()
    labels_dir = server.config.labels_dir
    store = LabelStore(labels_dir) if labels_dir is not None else None
    max_rows = server.config.max_batch_rows

    @routes.post(FEEDBACK_PATH)
    async def feedback(request: Request):
        payload = json_object(await request.body())
        rows = payload.get("labels")
        if not isinstance(rows, list):
            shown = "nothing" if rows is None else type(rows).__name__
            raise ApiError(422, f"labels: expected a list of label rows, got {shown}", "labels")
        if not rows:
            raise ApiError(422, f"labels: expected 1 to {max_rows} label rows, got none", "labels")
        if len(rows) > max_rows:
            raise ApiError(413, f"labels: at most {max_rows} rows per request, got {len(rows)}", "labels")
        if store is None:
            raise ApiError(503, "labels: this server has no label store configured (labels_dir)", None)
        try:
            result = await run_in_threadpool(store.import_labels, rows)
        except LabelValidationError as error:
            raise _refusal(error) from None
        except OSError as error:
            _log.exception("label store write failed")
            raise ApiError(503, f"label store unavailable: {type(error).__name__}: {error}", None) from error
        return json_response(_counts(result))

    return routes


def _counts(result: LabelImport) -> dict[str, int]:
    return {
        "rows": result.rows,
        "requests": result.requests,
        "new": result.new,
        "changed": result.changed,
        "positives": result.positives,
    }


def _refusal(error: LabelValidationError) -> ApiError:
    """A 422 naming each bad row by its place in the body (``labels[3].label``); the field is the first's."""
    paths = []
    for problem in error.problems:
        path = "labels" if problem.index is None else f"labels[{problem.index}]"
        if problem.column:
            path += f".{problem.column}"
        paths.append((path, problem.reason))
    named = "; ".join(f"{path}: {reason}" for path, reason in paths)
    more = error.refused - len(error.problems)
    head = f"labels: {error.bad_rows} of {error.rows} rows refused, none written" if error.bad_rows else "labels"
    message = f"{head}: {named}" + (f"; and {more} more" if more > 0 else "")
    return ApiError(422, message, paths[0][0] if paths else "labels")
