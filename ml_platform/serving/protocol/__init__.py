"""The server's faces, one module per protocol (in the manner of KServe's ``protocol/rest/``).

Each module builds its routes over the one :class:`~ml_platform.serving.server.ModelServer`
(``router(server)``) and, where a request is common enough to be worth it, a fast handler answered
in the ASGI layer before FastAPI's routing (``fast_routes(server)``; see
:mod:`ml_platform.serving.middleware`):

- :mod:`.predict`: ``POST /predict`` and ``GET /health``, the platform's own shapes;
- :mod:`.mlflow`: ``POST /invocations`` and ``GET /ping``, MLflow's scoring protocol, read by
  :mod:`.mlflow_parser` (the project's own parser: nothing of MLflow's pyfunc is loaded);
- :mod:`.v2`: the Open Inference Protocol v2 (KServe, Triton clients), with :mod:`.v2_binary` for its
  binary tensor data extension;
- :mod:`.admin`: ``GET /metrics`` and ``/admin/routing``;
- :mod:`.common`: JSON bodies and answers shared by all of them.
"""
