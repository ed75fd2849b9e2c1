"""``import_feast``: Feast is loaded without typeguard's import-time instrumentation, and typeguard is left
as it was for everyone else. Each case runs in a fresh interpreter, since an import happens once a process."""

from __future__ import annotations

import json
import subprocess
import sys

from ml_platform.settings import REPO_ROOT

PROBE = """
import json, sys
{load}
import feast.entity, feast.feature_view, typeguard, typeguard._decorators

@typeguard.typechecked
def doubled(value: int) -> int:
    return 2 * value

try:
    doubled("x")
    checked = False
except typeguard.TypeCheckError:
    checked = True
print(json.dumps({{
    "view_instrumented": "typeguard" in feast.feature_view.FeatureView.__init__.__code__.co_names,
    "entity_instrumented": "typeguard" in feast.entity.Entity.__init__.__code__.co_names,
    "typechecked_restored": typeguard.typechecked is typeguard._decorators.typechecked,
    "later_functions_checked": checked,
}}))
"""


def probe(load: str, directory) -> dict[str, bool]:
    script = directory / "probe.py"  # a file: typeguard instruments a function from its source
    script.write_text(PROBE.format(load=load))
    completed = subprocess.run([sys.executable, script], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_feast_loads_unchanged_by_typeguard_and_typeguard_works_afterwards(tmp_path):
    assert probe("from ml_platform.features.store import import_feast; import_feast()", tmp_path) == {
        "view_instrumented": False,
        "entity_instrumented": False,
        "typechecked_restored": True,
        "later_functions_checked": True,
    }


def test_a_plain_import_is_instrumented_which_is_what_import_feast_spares(tmp_path):
    assert probe("import feast", tmp_path) == {
        "view_instrumented": True,
        "entity_instrumented": True,
        "typechecked_restored": True,
        "later_functions_checked": True,
    }
