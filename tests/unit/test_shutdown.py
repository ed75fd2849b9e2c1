"""``exit_without_teardown``: the process ends with the status asked for, after what a normal exit does first
(threading's hooks shut an executor's idle workers down, other non-daemon threads finish, exit handlers run,
the streams are flushed), and nothing after it runs. Each case is a process of its own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ml_platform.shutdown import exit_code

SCRIPT = """
import atexit, concurrent.futures, threading, time
from ml_platform.shutdown import exit_without_teardown
atexit.register(lambda: open({marker!r}, "w").write("ran"))
threading.Thread(target=lambda: (time.sleep(0.2), print("thread done"))).start()
executor = concurrent.futures.ThreadPoolExecutor(1)  # an idle worker thread, as MLflow's artifact uploads leave
executor.submit(print, "task done").result()
print("buffered", end="")
exit_without_teardown({code})
print("never printed")
"""


@pytest.mark.parametrize("code", [0, 3])
def test_the_process_ends_with_its_code_after_threads_handlers_and_streams(tmp_path, code):
    marker = tmp_path / "handler.txt"
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(marker=str(marker), code=code)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == code, completed.stderr
    assert sorted(completed.stdout.replace("buffered", "buffered\n").split()) == [
        "buffered", "done", "done", "task", "thread",
    ]  # fmt: skip
    assert completed.stdout.startswith("task done\n") and "never printed" not in completed.stdout
    assert marker.read_text() == "ran"


def test_exit_codes_are_what_sys_exit_would_give(capsys):
    assert [exit_code(None), exit_code(0), exit_code(2)] == [0, 0, 2]
    assert exit_code("no such pipeline") == 1
    assert capsys.readouterr().err == "no such pipeline\n"
