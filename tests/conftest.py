"""Fixtures shared by the unit tests."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType

import pytest

from tests.redis_support import RedisServer


@pytest.fixture(
    params=["native.table_py", "native.table"], ids=["pure", "native"], scope="session"
)
def table_module(request: pytest.FixtureRequest) -> ModuleType:
    """Each implementation of the key-group table, the compiled one included.

    The compiled module is imported by name, never through ``native.load``, so
    a missing build fails here instead of silently testing the twin twice.
    """
    return importlib.import_module(request.param)


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this test's own, on a free port."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


# Modules that run gRPC servers inside the test process. gRPC's core keeps
# threads after a server stops, and a process forked while they run (the
# replay's bytewax workers are forked) was seen to spin forever in the
# child: these tests run after every test that forks.
IN_PROCESS_GRPC = {"test_api", "test_api_edges", "test_metrics", "test_redis"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def runs_grpc_in_process(item: pytest.Item) -> bool:
        module = getattr(item, "module", None)
        name = getattr(module, "__name__", "")
        return name.rsplit(".", 1)[-1] in IN_PROCESS_GRPC

    items.sort(key=runs_grpc_in_process)  # a stable sort: the order stays else
