"""``python -m ml_platform.serving``: run the model server with uvicorn.

Settings come from the environment (``ML_PLATFORM_HOME`` and friends, ``ML_PLATFORM_SERVING_*``);
flags override them. Binds 127.0.0.1 unless ``--host`` says otherwise. SIGTERM or Ctrl-C shut it down
gracefully: stop accepting, finish the requests in flight, write the prediction log.
"""

from __future__ import annotations

import argparse
import logging
import sys

SWITCH_INTERVAL_SECONDS = 0.0005  # how long the serving thread waits for the GIL at most (see main)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ml_platform.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    parser.add_argument("--model-name", help="registered model to serve (default: the settings' model)")
    parser.add_argument("--challenger-weight", type=float, help="share of traffic for the challenger, 0..1")
    parser.add_argument("--mode", choices=("split", "shadow"), help="split traffic or shadow the challenger")
    parser.add_argument("--no-sticky", action="store_true", help="route at random even when a customer id is given")
    parser.add_argument("--no-feast", action="store_true", help="serve without the feature store")
    parser.add_argument("--poll-seconds", type=float, help="how often to check the registry's aliases")
    parser.add_argument("--log-dir", help="where to write the prediction log")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.add_argument("--access-log", action="store_true", help="log every request (off by default)")
    parser.add_argument(
        "--graceful-timeout", type=float, default=30.0, help="seconds to wait for requests in flight on shutdown"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ml_platform.settings import Settings

    settings = Settings.from_env()
    settings.apply_environment()  # telemetry off, caches inside the state directory
    settings.prepare()

    import uvicorn

    from ml_platform.serving import ServerConfig, create_app

    overrides: dict[str, object] = {}
    if args.model_name:
        overrides["model_name"] = args.model_name
    if args.challenger_weight is not None:
        overrides["challenger_weight"] = args.challenger_weight
    if args.mode:
        overrides["mode"] = args.mode
    if args.no_sticky:
        overrides["sticky"] = False
    if args.no_feast:
        overrides["feast"] = None
    if args.poll_seconds is not None:
        overrides["poll_seconds"] = args.poll_seconds
    if args.log_dir:
        overrides["log_dir"] = args.log_dir
    config = ServerConfig.from_settings(settings, **overrides)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The prediction log's writer thread turns the journal into parquet every few seconds, mostly in Python
    # holding the GIL; the event loop waiting on it would get the GIL back only after the interpreter's
    # switch interval (5 ms by default), each time: the p99 of every request in flight then. At 0.5 ms
    # the loop waits a tenth of that; the writer, a background thread, is none the worse.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
