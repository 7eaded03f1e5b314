"""Training metrics: always to a JSONL file; to TensorBoard, W&B and MLflow when they are installed."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class MetricsSink(Protocol):
    """Where :class:`MetricsLogger` sends metrics."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record the finite ``metrics`` of training ``step``."""
        ...

    def close(self) -> None:
        """Flush and release the sink."""
        ...


class JsonlSink:
    """One JSON object per line: ``{"step": 3, "time": …, "reward/mean": 0.4, …}``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one line and flush it, so the file is current even if training crashes."""
        record = {"step": step, "time": time.time(), **metrics}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class TensorBoardSink:
    """Scalars in ``log_dir`` via ``torch.utils.tensorboard`` or ``tensorboardX`` (``ImportError`` without both)."""

    def __init__(self, log_dir: Path) -> None:
        import importlib

        try:
            module = importlib.import_module("torch.utils.tensorboard")
        except ImportError:
            module = importlib.import_module("tensorboardX")
        self._writer = module.SummaryWriter(log_dir=str(log_dir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Write each metric as a scalar at ``step`` and flush."""
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        """Close the event file."""
        self._writer.close()


class WandbSink:
    """A Weights & Biases run in project ``$WANDB_PROJECT`` (``ImportError`` without wandb)."""

    def __init__(self, run_name: str, config: dict[str, Any]) -> None:
        import wandb  # type: ignore[import-not-found,unused-ignore]

        self._run = wandb.init(project=os.environ.get("WANDB_PROJECT", "agent-lightning"), name=run_name, config=config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Log the metrics to the run at ``step``."""
        self._run.log(metrics, step=step)

    def close(self) -> None:
        """Finish the run."""
        self._run.finish()


class MlflowSink:
    """An MLflow run at ``$MLFLOW_TRACKING_URI``; ``ImportError`` without mlflow."""

    def __init__(self, run_name: str) -> None:
        import mlflow  # type: ignore[import-not-found,unused-ignore]

        self._mlflow = mlflow
        mlflow.start_run(run_name=run_name)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Log the metrics at ``step`` (``/`` in names becomes ``_``, which MLflow requires)."""
        self._mlflow.log_metrics({k.replace("/", "_"): v for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        """End the run."""
        self._mlflow.end_run()


class MetricsLogger:
    """Fan metrics out to every available sink.

    TensorBoard is used when ``torch.utils.tensorboard`` or ``tensorboardX``
    imports; W&B when ``wandb`` is installed and ``WANDB_PROJECT`` is set;
    MLflow when ``mlflow`` is installed and ``MLFLOW_TRACKING_URI`` is set.
    """

    def __init__(
        self,
        run_dir: Path | str,
        *,
        run_name: str | None = None,
        config: dict[str, Any] | None = None,
        tensorboard: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self.sinks: list[MetricsSink] = [JsonlSink(self.jsonl_path)]
        self.history: list[dict[str, float]] = []
        name = run_name or self.run_dir.name
        optional: list[tuple[bool, Any]] = [
            (tensorboard, lambda: TensorBoardSink(self.run_dir / "tensorboard")),
            (bool(os.environ.get("WANDB_PROJECT")), lambda: WandbSink(name, config or {})),
            (bool(os.environ.get("MLFLOW_TRACKING_URI")), lambda: MlflowSink(name)),
        ]
        for wanted, make in optional:
            if not wanted:
                continue
            try:
                self.sinks.append(make())
            except ImportError:
                pass
            except Exception as exc:  # a metrics service must not stop training
                logger.warning("metrics sink unavailable: %s", exc)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Record finite numeric metrics for ``step``; other values are dropped with a debug note."""
        clean = {}
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                logger.debug("metric %s=%r is not a finite number; not logged", key, value)
                continue
            clean[key] = float(value)
        self.history.append({"step": float(step), **clean})
        for sink in self.sinks:
            sink.log(step, clean)

    def close(self) -> None:
        """Close every sink; a sink that fails to close is logged, not raised."""
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                logger.warning("closing metrics sink failed: %s", exc)
