"""The champion alias moves while 4 threads send requests: no request fails, answers switch version."""

from __future__ import annotations

import threading
import time
import uuid

from ml_platform.registry import CHAMPION, PREVIOUS
from tests.support.servers import copy_model, make_config, serve

FEATURES = [420.0, 2.25, 1.0, 10.0, 1.0, 35.0, 35.0, 12.0, 12.0]


def test_hot_swap_under_load(settings, registry, champion_version, tmp_path):
    swap_model = copy_model(settings, registry, f"serving_swap_{uuid.uuid4().hex[:6]}", versions=2)
    swap_model.set_alias(CHAMPION, 1)
    config = make_config(settings, tmp_path, model_name=swap_model.model_name, feast=None, poll_seconds=0.05)
    with serve(config) as running:
        stop = threading.Event()
        results: list[list[tuple[int, int | None]]] = [[] for _ in range(4)]
        errors: list[BaseException] = []

        def send(index: int) -> None:
            try:
                with running.client() as client:
                    while not stop.is_set():
                        answer = client.post("/predict", json={"features": FEATURES})
                        version = answer.json().get("model_version") if answer.status_code == 200 else None
                        results[index].append((answer.status_code, version))
            except BaseException as error:  # a dropped connection counts as a failed request
                errors.append(error)

        def wait_for_answers(version: int, count: int) -> None:
            """Until every thread has ``count`` answers from ``version``: by count, not by time, so a busy
            machine (two cores shared with other tests) only makes it slower. A minute at most."""
            deadline = time.monotonic() + 60
            while min(sum(v == version for _, v in list(answers)) for answers in results) < count:
                assert not errors, errors
                assert time.monotonic() < deadline, f"fewer than {count} answers from v{version} in each thread"
                time.sleep(0.02)

        threads = [threading.Thread(target=send, args=(index,)) for index in range(4)]
        for thread in threads:
            thread.start()
        wait_for_answers(1, 30)
        promotion = swap_model.promote(2, promoted_at="2026-03-15T00:00:00Z")
        swapped_at = time.monotonic()
        with running.client() as client:
            while client.get("/health").json()["model_version"] != 2:
                # polled every 0.05 s: a moment on an idle machine, 30 s for two busy cores
                assert time.monotonic() - swapped_at < 30, "the server never picked up the new champion"
                time.sleep(0.02)
        wait_for_answers(2, 30)
        stop.set()
        for thread in threads:
            thread.join(30)
        with running.client() as client:
            routing = client.get("/admin/routing").json()

    assert promotion.changed and swap_model.version_for_alias(PREVIOUS) == 1
    assert not errors, errors
    answers = [answer for per_thread in results for answer in per_thread]
    assert len(answers) > 100
    assert {status for status, _ in answers} == {200}, "some requests failed during the swap"
    assert {version for _, version in answers} == {1, 2}
    for per_thread in results:
        versions = [version for _, version in per_thread]
        first_new = versions.index(2)
        assert set(versions[first_new:]) == {2}, "an answer from the old model came after the new one"
        assert versions[-1] == 2
    assert routing["champion_version"] == 2
    assert running.server.manager.swaps == 2  # the first load, then the promotion
