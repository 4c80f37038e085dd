"""Where `bench sweep` runs its tasks: here, one after another (``local``), on a Ray cluster (``ray``), or as SLURM
jobs through submitit (``submitit``; its local executor runs them as processes of this machine).

A task is one (method, dataset, seed, fold) with its resolved overrides, as plain data: the worker resolves the
config again and calls `bench.runner.run`, so the run folder, its checkpoints, tables and MLflow run are the same
whichever launcher ran it, and the leaderboard reads them alike. The sweep (bench.results.sweep) decides what to
skip before anything is sent; a task resumes its folder when one is there. Ray and submitit are optional extras
(``pip install 'physeg-bench[ray]'`` / ``[slurm]``); the per-task resources come from the ``launcher:`` block of the
config (bench.config.LauncherConfig), which changes no result (it is not in the config hash).
"""

from __future__ import annotations

import logging
import os
import shutil
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

LAUNCHERS = ("local", "ray", "submitit")
EXTRAS = {"ray": ("ray", "ray"), "submitit": ("submitit", "slurm")}  # launcher -> (module, extra)
# what a worker on another machine needs from this environment (a local Ray cluster inherits it anyway)
FORWARDED_ENV = ("BENCH_DATA_ROOT", "BENCH_CARD_PATH", "BENCH_CACHE_DIR", "MLFLOW_TRACKING_URI",
                 "MLFLOW_DISABLE_TELEMETRY", "HF_HUB_OFFLINE", "CELLPOSE_LOCAL_MODELS_PATH")


@dataclass
class Task:
    """One run of a sweep, as plain data (pickled to Ray or submitit)."""

    key: str  # method/dataset/seed[/fold]
    method: str
    dataset: str
    seed: int
    overrides: list[str] = field(default_factory=list)
    overlay: list[str] = field(default_factory=list)
    data_root: str | None = None
    run_dir: str = ""
    cpus: int | None = None
    gpus: float | str = "auto"  # "auto": resolved by the launcher (where the tasks run, for Ray)
    memory_gb: float | None = None


def execute(task: Task | dict, progress: bool = False) -> dict:
    """Run one task in this process (the worker side of every launcher): resume its folder when it holds the same
    run, else start it. Returns {"key", "outcome": ran | resumed | failed, "error", "run_dir"}."""
    from .config import resolve_config
    from .runner import CONFIG_FILE, run

    task = Task(**task) if isinstance(task, dict) else task
    if task.cpus:
        import torch

        torch.set_num_threads(task.cpus)
    try:
        cfg = resolve_config(task.method, task.dataset, overlay=task.overlay or None, overrides=task.overrides,
                             seed=task.seed)
        resume = (cfg.run_dir() / CONFIG_FILE).exists()  # the sweep checked it is this run's folder
        run(cfg, resume=resume, data_root=task.data_root, progress=progress)
        return {"key": task.key, "outcome": "resumed" if resume else "ran", "error": None, "run_dir": task.run_dir}
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one broken combination must not stop the sweep
        log.error("%s failed: %s", task.key, exc)
        tb = traceback.format_exc(limit=-3)
        return {"key": task.key, "outcome": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": tb,
                "run_dir": task.run_dir}


def check_available(name: str) -> None:
    """A one-line install hint when the engine of a launcher is missing."""
    if name not in LAUNCHERS:
        from .config import ConfigError

        raise ConfigError(f"launcher {name!r}: choose one of {', '.join(LAUNCHERS)}")
    if name in EXTRAS:
        import importlib.util

        module, extra = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            from .config import ConfigError

            raise ConfigError(f"--launcher {name} needs {module}: pip install 'physeg-bench[{extra}]'")


def resolve_gpus(gpus, available: float | None = None) -> float:
    """GPUs per task: a number as given; "auto": 1 where there are GPUs (`available`: the cluster's count, e.g.
    Ray's; None: CUDA on this machine), else 0."""
    if gpus != "auto":
        return float(gpus)
    if available is None:
        import torch

        available = torch.cuda.device_count()
    return 1.0 if available > 0 else 0.0


def launch(name: str, tasks: list[Task], opts, *, output_root: str | Path, progress: bool = False,
           on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Run the tasks with launcher `name` (options: bench.config.LauncherConfig); results in task order."""
    check_available(name)
    if not tasks:
        return []
    runner = {"local": _local, "ray": _ray, "submitit": _submitit}[name]
    results = runner(tasks, opts, Path(output_root), progress)
    by_key = {r["key"]: r for r in results}
    out = [by_key.get(t.key) or {"key": t.key, "outcome": "failed", "error": "no result came back"} for t in tasks]
    for r in out:
        if on_result:
            on_result(r)
    return out


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C in a local sweep: which task it stopped in and how many had finished."""

    def __init__(self, key: str, done: int) -> None:
        super().__init__(key)
        self.key, self.done = key, done


def _local(tasks, opts, output_root, progress):
    results = []
    for i, t in enumerate(tasks):
        try:
            results.append(execute(t, progress=progress))
        except KeyboardInterrupt:
            raise SweepInterrupted(t.key, i) from None
    return results


PATH_ENV = {"BENCH_DATA_ROOT", "BENCH_CARD_PATH", "BENCH_CACHE_DIR"}


def _env() -> dict[str, str]:
    """The forwarded variables, paths made absolute (a worker starts in another folder)."""
    out = {}
    for k in FORWARDED_ENV:
        if k in os.environ:
            v = os.environ[k]
            if k in PATH_ENV:
                v = os.pathsep.join(str(Path(p).expanduser().resolve()) if p else p for p in v.split(os.pathsep))
            out[k] = v
    return out


def _ray(tasks, opts, output_root, progress):
    import ray

    ro = opts.ray
    started = False
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": True, **ro.init}
        runtime_env = dict(kwargs.pop("runtime_env", None) or {})
        runtime_env["env_vars"] = {**_env(), **(runtime_env.get("env_vars") or {})}
        address = ro.address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, runtime_env=runtime_env, **kwargs)
        started = True
        log.info("ray: %s", "connected to " + address if address else "started a local cluster")
    try:
        refs = {}
        cluster_gpus = ray.cluster_resources().get("GPU", 0)  # "auto": the cluster's GPUs, not the driver's
        for t in tasks:
            options = {"num_cpus": t.cpus or 1, "num_gpus": resolve_gpus(t.gpus, cluster_gpus), "max_retries": 0}
            if t.memory_gb:
                options["memory"] = int(t.memory_gb * 2**30)
            refs[ray.remote(execute).options(**options).remote(asdict(t))] = t
        results = []
        pending = list(refs)
        while pending:
            try:
                done, pending = ray.wait(pending, num_returns=1)
            except KeyboardInterrupt:  # stop the tasks still running; their folders resume next time
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise
            for ref in done:
                t = refs[ref]
                try:
                    results.append(ray.get(ref))
                except Exception as exc:  # the worker died (out of memory, node lost)
                    results.append({"key": t.key, "outcome": "failed", "error": f"ray: {type(exc).__name__}: {exc}",
                                    "run_dir": t.run_dir})
                log.info("%s: %s", t.key, results[-1]["outcome"])
        return results
    finally:
        if started:
            ray.shutdown()


def _submitit(tasks, opts, output_root, progress):
    import submitit

    so = opts.submitit
    cluster = so.cluster or ("slurm" if shutil.which("sbatch") else "local")
    folder = Path(so.folder or output_root / ".submitit") / "%j"
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params: dict = {"timeout_min": so.timeout_min, "name": "bench-sweep"}
    if cluster != "debug":
        import math

        cpus = max(t.cpus or 1 for t in tasks)
        # "auto" on SLURM would read the login node: a job asks for GPUs only when launcher.gpus says how many
        gpus = max(0.0 if t.gpus == "auto" and cluster == "slurm" else resolve_gpus(t.gpus) for t in tasks)
        params.update(cpus_per_task=cpus, tasks_per_node=1, nodes=1)
        if gpus:
            params["gpus_per_node"] = math.ceil(gpus)
        mem = max((t.memory_gb or 0) for t in tasks)
        if mem:
            params["mem_gb"] = mem
    if cluster == "slurm":
        params["slurm_array_parallelism"] = so.array_parallelism
        if so.partition:
            params["slurm_partition"] = so.partition
        params.update({f"slurm_{k}": v for k, v in so.slurm.items()})
    ex.update_parameters(**params)
    env = _env()
    with ex.batch():  # one job array on SLURM
        jobs = [(ex.submit(_with_env, asdict(t), env), t) for t in tasks]
    results = []
    for i, (job, t) in enumerate(jobs):
        try:
            results.append(job.result())
        except KeyboardInterrupt:  # cancel the jobs still queued or running (SLURM: scancel)
            for other, _ in jobs[i:]:
                try:
                    other.cancel(check=False)
                except Exception as exc:  # a job that already ended
                    log.warning("could not cancel job %s: %s", other.job_id, exc)
            raise
        except Exception as exc:  # the job failed outside execute (killed, out of time, node failure)
            results.append({"key": t.key, "outcome": "failed", "error": f"submitit job {job.job_id}: "
                            f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}",
                            "run_dir": t.run_dir})
        log.info("%s (job %s): %s", t.key, job.job_id, results[-1]["outcome"])
    return results


def _with_env(task: dict, env: dict[str, str]) -> dict:
    """A SLURM job starts from the user's login environment: the sweep's data root and stores replace it."""
    os.environ.update(env)
    return execute(task)
