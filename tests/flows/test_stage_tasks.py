"""A round's stages run as Prefect tasks without Prefect walking their arguments."""

import time

from prefect import flow


def test_a_stage_passes_a_large_collection_through_untouched_and_quickly(prefect_server):
    from matforge.flows.campaign import stage_task

    results = [{"id": i, "value": [float(i), 1.0, 2.0]} for i in range(100_000)]

    def count(rows, scale):
        return len(rows) * scale, rows is results

    @flow
    def one_stage():
        started = time.perf_counter()
        value = stage_task("count", count, results, 2, round=0)
        return value, time.perf_counter() - started

    (n, same), seconds = one_stage()
    assert (n, same) == (200_000, True)  # the very list, not a copy
    # Prefect walked every element of an unquoted list: 13.8 s for this one, beside other work
    assert seconds < 3.0
