"""MLflow tracking, offline by default.

With no tracking URI set (config ``tracking.uri`` or ``$MLFLOW_TRACKING_URI``) runs go to an embedded store:
``sqlite:///<output_root>/mlflow.db`` with artifacts in ``<output_root>/mlartifacts``; browse it with
``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``. A URI that cannot work (a remote server that does
not answer or is not MLflow, a scheme MLflow does not know) gives a warning and the local store instead, so a run is
never lost to the network or a typo. Telemetry is switched off.
"""

from __future__ import annotations

import logging
import os
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from .locks import file_lock

log = logging.getLogger(__name__)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


def local_store_uri(output_root: str | Path) -> str:
    return f"sqlite:///{Path(output_root).resolve() / 'mlflow.db'}"


# what MLflow's tracking store registry accepts (a path without a scheme is a file store)
KNOWN_SCHEMES = {"file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc"}


def _server_problem(uri: str, timeout: float = 3.0) -> str | None:
    """None when an MLflow tracking server answers at ``uri``; else what is wrong (no answer, not MLflow)."""
    probe = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(probe, timeout=timeout) as resp:
            body = resp.read(65536)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return None  # a server that wants credentials (MLFLOW_TRACKING_TOKEN / _USERNAME): let MLflow use them
        return f"answers HTTP {exc.code} on the MLflow REST API, so it is not an MLflow tracking server"
    except Exception as exc:
        return f"does not answer ({type(exc).__name__})"
    try:
        import json

        json.loads(body)
    except ValueError:
        return "answers, but not with MLflow's JSON: it is not an MLflow tracking server"
    return None


def choose_uri(configured: str | None, output_root: str | Path) -> str:
    """The tracking URI a run logs to: the configured one (or $MLFLOW_TRACKING_URI), unless it cannot work (a scheme
    MLflow does not know, a server that does not answer or is not MLflow): then the local store, with a warning."""
    from urllib.parse import urlparse

    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return local_store_uri(output_root)
    scheme = urlparse(uri).scheme.split("+")[0].lower()
    problem = None
    if len(scheme) > 1 and scheme not in KNOWN_SCHEMES:  # one letter: a Windows drive, i.e. a path
        problem = f"has a scheme MLflow does not know ({scheme!r}; known: {', '.join(sorted(KNOWN_SCHEMES))})"
    elif scheme in ("http", "https"):
        problem = _server_problem(uri)
    if problem:
        fallback = local_store_uri(output_root)
        warnings.warn(f"MLflow tracking URI {uri} {problem}; logging to the local store {fallback} instead")
        return fallback
    return uri


class Tracker:
    """Thin wrapper over one MLflow run; every call is a no-op when tracking is off."""

    def __init__(self, enabled: bool, uri: str | None, experiment: str, output_root: str | Path) -> None:
        self.enabled = enabled
        self.run_id: str | None = None
        self.uri = choose_uri(uri, output_root) if enabled else None
        self.experiment = experiment
        self.output_root = Path(output_root)
        self._client = None
        self.renamed: dict[str, str] = {}  # MLflow key -> the key of summary.json / history.csv

    @property
    def client(self):
        if self._client is None:
            import mlflow

            if self.uri.startswith("sqlite:"):
                # The first touch creates and migrates the tables; two processes doing it at once (two sweeps
                # sharing an output root) corrupt each other ("table ... already exists"), so serialise it.
                with file_lock(Path(self.uri.removeprefix("sqlite:///")).with_suffix(".db.lock")):
                    client = mlflow.MlflowClient(tracking_uri=self.uri)
                    client.search_experiments(max_results=1)
            else:
                client = mlflow.MlflowClient(tracking_uri=self.uri)
            self._client = client
        return self._client

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):  # keep artifacts beside the embedded store
            location = (self.output_root.resolve() / "mlartifacts" / self.experiment).as_uri()
        try:
            return self.client.create_experiment(self.experiment, artifact_location=location)
        except Exception:  # another process created it between our lookup and our insert
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def start(self, run_name: str, resume_run_id: str | None = None, tags: dict[str, str] | None = None,
              parent_run_id: str | None = None) -> str | None:
        if not self.enabled:
            return None
        if resume_run_id:
            try:
                self.client.get_run(resume_run_id)
                self.run_id = resume_run_id
                self.client.update_run(resume_run_id, status="RUNNING")
                return self.run_id
            except Exception:
                log.warning("MLflow run %s not found in %s; starting a new one", resume_run_id, self.uri)
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self._experiment_id(), run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.run_id:
            return
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k[:250], str(v)[:6000]) for k, v in params.items() if k[:250] not in existing]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.run_id:
            return
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(self._key(k), float(v), ts, step or 0) for k, v in metrics.items() if _is_number(v)]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def log_series(self, key: str, points: list[tuple[int, float]]) -> None:
        """One metric at several steps (e.g. the loss of every optimiser step of an epoch), in one batch."""
        if not self.run_id or not points:
            return
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(self._key(key), float(v), ts, int(s)) for s, v in points if _is_number(v)]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def _key(self, k: str) -> str:
        """The MLflow key of a summary/history key; every renamed one is remembered for `metric_keys.json`."""
        key = _metric_key(k)
        if key != k:
            self.renamed[key] = k
        return key

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.run_id:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not self.run_id or not Path(path).exists():
            return
        if Path(path).is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_model(self, net, name: str, example=None) -> None:
        """``net`` (a torch module) as an MLflow model in this run, with its input/output signature."""
        if not self.run_id:
            return
        import warnings

        import tempfile

        import mlflow.pytorch
        import torch

        signature = None
        if example is not None:  # shapes with free batch and spatial sizes (-1): any image size goes
            import numpy as np
            from mlflow.models import ModelSignature
            from mlflow.types import Schema, TensorSpec

            with torch.no_grad():
                out = net(example)
            free = lambda t: (-1, int(t.shape[1]), *[-1] * (t.ndim - 2))  # noqa: E731
            signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype("float32"), free(example))]),
                                       outputs=Schema([TensorSpec(np.dtype("float32"), free(out))]))
        import logging

        quiet = logging.getLogger("mlflow.pytorch")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # its notice on pickled models, at every run
        try:
            # saved locally, then logged as this run's artifact folder `name` (loadable as runs:/<id>/<name>):
            # no mlflow.start_run, which would set the process-wide tracking URI (and MLFLOW_TRACKING_URI) to
            # this run's store and leak it into every later run of the process
            with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
                warnings.simplefilter("ignore")
                # requirements stated, not inferred (inference re-imports the model in a subprocess: slow);
                # pickle, not torch.export's pt2: a pt2 graph is traced at one input size
                mlflow.pytorch.save_model(net, f"{tmp}/{name}", signature=signature, serialization_format="pickle",
                                          pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
                self.client.log_artifacts(self.run_id, f"{tmp}/{name}", name)
        finally:
            quiet.setLevel(level)

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id:
            if self.renamed:  # MLflow keys cannot hold '@': say how each maps back, next to the metrics
                keys = {**self._logged_key_map(), **self.renamed}  # `bench eval` adds to the run's map
                self.client.log_dict(self.run_id, {"mlflow_key_to_bench_key": dict(sorted(keys.items())),
                                                   "rule": "'@' is written '_at_'"}, KEY_MAP_FILE)
            self.client.set_terminated(self.run_id, status=status)


    def _logged_key_map(self) -> dict[str, str]:
        import json
        import tempfile

        import os

        if KEY_MAP_FILE not in {f.path for f in self.client.list_artifacts(self.run_id)}:
            return {}
        bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one small file: no progress bar in the log
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = self.client.download_artifacts(self.run_id, KEY_MAP_FILE, tmp)
                return json.loads(Path(path).read_text())["mlflow_key_to_bench_key"]
        except Exception:  # unreadable: start a new map
            return {}
        finally:
            if bar is None:
                os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
            else:
                os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


KEY_MAP_FILE = "metric_keys.json"


def _metric_key(k: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space / ; '@' is not among them
    return k.replace("@", "_at_")


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False
