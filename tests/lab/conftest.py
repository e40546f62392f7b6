"""Fixtures shared by the lab tests."""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from replication import native_fuse
from replication.mount import FUSE_API_ENV, FUSE_APIS


@pytest.fixture(scope="module", params=FUSE_APIS)
def fuse_api(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test of a module that uses it runs once per libfuse API of the primary's
    mount (replication/mount.py: fuse_api_for), through the environment its mounts
    read. Module-scoped, so module-scoped mounts get it too."""
    api = request.param
    if api == "lowlevel" and not native_fuse.available():
        pytest.skip(f"the low-level API needs the C extension: {native_fuse.why_unavailable()}")
    before = os.environ.get(FUSE_API_ENV)
    os.environ[FUSE_API_ENV] = api
    try:
        yield api
    finally:
        if before is None:
            os.environ.pop(FUSE_API_ENV, None)
        else:
            os.environ[FUSE_API_ENV] = before
