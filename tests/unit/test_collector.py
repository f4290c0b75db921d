"""The collector settings of the project's processes (campaigns/collector.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from campaigns import collector


class Node:
    """A reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


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


class _Kept:
    """A tracked object made inside the paused block and kept alive after it."""


def test_what_survives_a_pause_goes_to_the_oldest_generation_unwalked(
    restored_collector: None,
) -> None:
    """Turned back on, the collector must not walk everything the block made (an import's
    memo, the modules it loaded) at the next allocation: it finds them old already."""
    gc.enable()
    with collector.paused():
        kept = [_Kept() for _ in range(5_000)]
    assert gc.get_count()[0] < 700  # no collection is due at the next allocation
    assert any(o is kept[0] for o in gc.get_objects(generation=2))
    assert not any(o is kept[0] for o in gc.get_objects(generation=0))
    assert gc.isenabled()


def test_in_a_process_with_a_frozen_heap_what_survives_a_pause_is_frozen_with_it(
    restored_collector: None,
) -> None:
    collector.for_service()
    frozen = gc.get_freeze_count()
    with collector.paused():
        kept = _Kept()
    assert gc.get_freeze_count() > frozen  # frozen, not thawed
    assert not any(o is kept for o in gc.get_objects())  # out of every generation
    assert gc.isenabled()


def test_a_command_loads_its_modules_with_the_collector_off_then_freezes_them(
    restored_collector: None,
) -> None:
    gc.enable()
    seen: list[bool] = []
    with collector.loading():
        seen.append(gc.isenabled())
        kept = [_Kept() for _ in range(1_000)]
    assert seen == [False]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(kept)
    assert not any(o is kept[0] for o in gc.get_objects())


def test_a_cycle_made_in_a_pause_is_still_collected_once_dropped(
    restored_collector: None,
) -> None:
    with collector.paused():
        node = Node()
    del node
    gc.collect()
    assert not any(isinstance(o, Node) for o in gc.get_objects())
