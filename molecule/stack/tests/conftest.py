import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))

from infra import APP_JOURNALS, attach_journal_on_failure

# Quoted: the journal helper passes them through a shell.
JOURNALS = {
    "lb": ["haproxy"],
    "app": APP_JOURNALS,
    "redis": ["redis-server", "redis-sentinel"],
    "sandbox": ["'grimbots-sandbox@*'", "postgresql@15-main"],
}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    attach_journal_on_failure(item, outcome.get_result(), JOURNALS)
