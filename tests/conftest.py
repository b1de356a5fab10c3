import pytest

from livetomo.daemon.pipeline import RunCollector
from livetomo.daemon.testing import make_run_engine


@pytest.fixture
def RE():
    return make_run_engine()


@pytest.fixture
def docs(RE):
    """Every document of the runs in a test, each validated against event-model's schemas."""
    collector = RunCollector(validate=True)
    RE.subscribe(collector)
    return collector
