"""A real redis-server for the tests (`load_tests/redis_server.py`): a test
fails, rather than skips, when redis-server is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from load_tests.redis_server import RedisServer as _RedisServer
from load_tests.redis_server import free_port

__all__ = ["RedisServer", "free_port"]


class RedisServer(_RedisServer):
    def __init__(self, folder: Path) -> None:
        try:
            super().__init__(folder)
        except RuntimeError:
            pytest.fail("redis-server is missing: ./dev test installs it")
