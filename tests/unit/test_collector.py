"""The collector settings of the project's processes (campaigns/collector.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from campaigns import collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    (gc.enable if enabled else gc.disable)()


def test_a_service_freezes_its_start_up_heap_and_collects_young_objects_less_often(
    restored_collector: None,
) -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    before = gc.get_freeze_count()
    Node()  # a cycle that is garbage already: collected, not frozen
    collector.for_service()
    assert gc.get_freeze_count() > before
    assert gc.get_threshold() == collector.SERVICE_THRESHOLDS
    assert gc.isenabled()
    assert not any(isinstance(o, Node) for o in gc.get_objects())
    # cycles made after start-up are still collected
    Node()
    assert gc.collect() >= 1


@pytest.mark.parametrize("was_on", [True, False])
def test_paused_restores_the_collector_as_it_was(restored_collector: None, was_on: bool) -> None:
    (gc.enable if was_on else gc.disable)()
    seen: list[bool] = []

    def fail_inside() -> None:
        with collector.paused():
            seen.append(gc.isenabled())
            raise RuntimeError("the block fails")

    with pytest.raises(RuntimeError):
        fail_inside()
    assert seen == [False]
    assert gc.isenabled() is was_on
