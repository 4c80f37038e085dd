"""The embedded MLflow store survives several processes creating it at once (two sweeps on one output root)."""

from __future__ import annotations

import multiprocessing as mp

import pytest


def _start_run(root: str, name: str, barrier) -> str:
    from bench.tracking import Tracker

    barrier.wait()  # every process touches the fresh store at the same moment
    t = Tracker(True, None, "race", root)
    return t.start(name)


@pytest.mark.parametrize("n", [3])
def test_concurrent_first_touch_of_the_sqlite_store(tmp_path, n):
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(n)
        with ctx.Pool(n) as pool:
            ids = pool.starmap(_start_run, [(str(tmp_path), f"r{i}", barrier) for i in range(n)])
    assert len(set(ids)) == n and all(ids)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("race")
    assert len(client.search_runs([exp.experiment_id])) == n
