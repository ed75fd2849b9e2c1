"""`ml-platform` run as a user runs it: a fresh process with its own environment, stdout and stderr pipes."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m runs.cli ARGS`` from the repository root with exactly ``env``; never raises on its exit status."""
    return subprocess.run(
        [sys.executable, "-m", "runs.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
