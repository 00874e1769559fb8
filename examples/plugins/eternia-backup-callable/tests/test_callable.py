"""The callable source against eternia-backup's conformance kit.

The application is a module written for each test (a unique name, so that
``sys.modules`` never hands one test another's): its state object lives in a
JSON file beside it, read by ``snapshot()`` and replaced whole by ``restore()``.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest

from eternia_backup.testing import SourceConformance

APP = '''\
import json, os, pathlib
STATE = pathlib.Path(__file__).with_name("state.json")

def snapshot():
    return json.loads(STATE.read_text())

def restore(data):
    tmp = STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, STATE)
'''


def make_app(directory: Path) -> str:
    """Write an application module into ``directory``; returns its module name."""
    directory.mkdir(parents=True, exist_ok=True)
    module = f"kitapp_{uuid.uuid4().hex[:8]}"
    (directory / f"{module}.py").write_text(APP)
    (directory / "state.json").write_text(json.dumps(
        {"items": {f"sku-{i}": {"count": i, "total": i * 3} for i in range(50)}, "version": 1}))
    return module


class TestCallableSource(SourceConformance):
    @pytest.fixture
    def source_section(self, tmp_path):
        app = tmp_path / "app"
        module = make_app(app)
        return {"type": "callable", "name": "inventory", "target": f"{module}:snapshot",
                "restore": f"{module}:restore", "python_path": [str(app)]}

    def _state_file(self, section) -> Path:
        return Path(section["python_path"][0]) / "state.json"

    def capture_state(self, section):
        return json.loads(self._state_file(section).read_text())

    def restored_state(self, section, directory):
        return json.loads((directory / section["name"] / "snapshot.json").read_text())

    _lock = threading.Lock()

    def mutate_state(self, section):
        with self._lock:
            state = self.capture_state(section)
            state["items"].pop("sku-3", None)
            state["items"]["sku-new"] = {"count": 1, "total": 3}
            state["version"] += 1
            tmp = self._state_file(section).with_suffix(".mut")
            tmp.write_text(json.dumps(state))
            tmp.replace(self._state_file(section))

    def assert_consistent(self, section, restored):
        assert all(v["total"] == 3 * v["count"] for v in restored["items"].values())
