"""The training engine: configs in, run folders out.

``fit(cfg)`` trains one run (the CLI's `drsf train` calls it); ``evaluate_run(run_dir)`` scores a finished
run (`drsf eval`); ``load_run(run_dir)`` gives back ``(model, cfg)`` for analysis notebooks.
"""

from drsf_kit.train.engine import (  # noqa: F401
    LRFactor,
    RunLogger,
    StepResult,
    build_model_for,
    build_optimizer,
    build_scheduler,
    fit,
    train_one_epoch,
    train_step,
)
from drsf_kit.train.distributed import is_main_process  # noqa: F401
from drsf_kit.train.evaluate import evaluate_model, evaluate_run, load_run, write_run_tables  # noqa: F401

__all__ = [
    "fit", "train_one_epoch", "train_step", "evaluate_model", "evaluate_run", "load_run", "write_run_tables",
    "build_model_for", "build_optimizer", "build_scheduler", "LRFactor", "RunLogger", "StepResult",
    "is_main_process",
]
