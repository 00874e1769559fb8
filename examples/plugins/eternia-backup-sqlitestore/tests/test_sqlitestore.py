"""The sqlitestore target against eternia-backup's conformance kit."""

from __future__ import annotations

import pytest

from eternia_backup.testing import TargetConformance
from eternia_backup_sqlitestore import SqliteStoreTarget


class TestSqliteStoreTarget(TargetConformance):
    @pytest.fixture
    def target(self, tmp_path):
        return SqliteStoreTarget("kit", f"sqlitestore://{tmp_path}/not-yet/store.sqlite", {})
