import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

from infra import attach_journal_on_failure


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    attach_journal_on_failure(
        item, outcome.get_result(), {"redis": ["redis-server", "redis-sentinel"]}
    )
