"""The demo shop's database serves as the victim app's in the experiment tests."""

from __future__ import annotations

import asyncio

import pytest

from dbchaos.cli.init import opt_in_target
from dbchaos.targets import Target
from tests.lab.conftest import empty_db, shop_db

__all__ = ["empty_db", "shop_db", "victim_db"]


@pytest.fixture
def victim_db(shop_db: str) -> str:
    """The shop's database, opted in to dbchaos faults."""
    asyncio.run(opt_in_target(Target("victim", shop_db), "the experiment tests"))
    return shop_db
