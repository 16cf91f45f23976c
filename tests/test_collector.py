"""The collector set for serving (serve.py: ``YOUNG_GENERATION``), and as it was after."""

from __future__ import annotations

import gc

import pytest

from proxy.config import Config, load_config
from proxy.server import serve as serving
from proxy.server.serve import YOUNG_GENERATION, collector_for_serving


def test_the_young_generation_is_widened_while_serving_and_restored_after() -> None:
    before = gc.get_threshold()
    assert before[0] != YOUNG_GENERATION  # the interpreter's own, or the contrast is moot
    with collector_for_serving():
        assert gc.get_threshold() == (YOUNG_GENERATION, *before[1:])
    assert gc.get_threshold() == before


async def test_serve_runs_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, ...]] = []

    async def fake_serve(config: Config, load: object) -> int:
        seen.append(gc.get_threshold())
        return 0

    monkeypatch.setattr(serving, "_serve", fake_serve)
    config = load_config(None, {"DAP_CLIENT_ID": "id", "DAP_CLIENT_SECRET": "secret"}, {})
    assert await serving.serve(config) == 0
    assert seen and seen[0][0] == YOUNG_GENERATION
    assert gc.get_threshold()[0] != YOUNG_GENERATION
