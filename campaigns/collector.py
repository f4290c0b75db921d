"""Python's cyclic garbage collector, set for the project's processes.

A collection walks every tracked object of its generation; a full one walks all of them,
the loaded libraries' included. Python starts one each time allocations outnumber
deallocations by 700, which suits small scripts, not these processes:

- a worker (`campaign worker`) allocates fast (rows, events, folds) and holds a large,
  stable heap of modules and caches. `for_service()` moves everything alive at start-up
  out of the collector's sight (`gc.freeze`) and lets the young generation grow to 20,000
  allocations. In one run of bench/ingest_bench.py a worker spent 2.70 s of its 22.3
  CPU-s collecting with Python's defaults, 0.36 s of 20.9 CPU-s so set; the applier
  alone (bench/apply_bench.py, three pairs back to back) went from 179-202 to 135-157
  CPU µs per event. The ingester showed no such gain (its CPU per event and ack latency
  moved within the noise), so it keeps the defaults.
- a command (`campaign ...`) loads the modules it needs with the collector off and
  freezes them (`loading()`), as a service freezes its start-up heap;
- an import makes millions of short-lived objects (a workbook's cells, the phone memo)
  and no cycles that matter: `paused()` turns the collector off for its duration. What
  survives the block (the memo, modules imported on the way such as pandas) then goes
  straight to the oldest generation: turned back on, the collector would otherwise walk
  it all at the next allocation (one collection of 80 ms at the end of a 100,000-row
  .xlsx import).

Reference counting still frees every object that is not part of a cycle at once; only
cyclic garbage waits longer for a collection.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

SERVICE_THRESHOLDS = (20_000, 10, 10)


def for_service() -> None:
    """Set the collector for a long-running process, once its modules are loaded (call it
    at the entry point, not from library code: it changes the whole process)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVICE_THRESHOLDS)


@contextmanager
def paused() -> Iterator[None]:
    """The collector off for the block, then back as it was (on, or off if it was off).

    The objects made in the block that are still alive are not walked at the end: they
    move to the oldest generation, as a collection would have moved them after walking
    them. In a process that froze its heap (`for_service`, `loading`) they are frozen with
    it instead: the move to the oldest generation goes through the permanent one, and
    would thaw that heap."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        else:
            gc.freeze()
        if enabled:
            gc.enable()


@contextmanager
def loading() -> Iterator[None]:
    """For a command-line process, around the loading of the command's modules: the
    collector off meanwhile, then everything loaded frozen (`campaigns.cli.run`). Loading
    makes hundreds of thousands of objects that live as long as the process; with the
    collector on, `campaign import` spent 112 ms of its start-up in 254 collections
    walking them. Call it at the entry point only: it changes the whole process."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
