"""`drsf eval`: registered from the training package, which owns run folders and checkpoints."""

from drsf_kit.train.cli import add_eval_parser as add_parser  # noqa: F401
