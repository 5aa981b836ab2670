"""Error types the kit raises for bad input; each names the offending file or item and the problem."""

from __future__ import annotations

from pathlib import Path


class DrsfError(Exception):
    """Base class for errors caused by the user's input (data, config, runs); the CLI prints them
    as one line without a traceback (set DRSF_TRACEBACK=1 to see it)."""


class DataError(DrsfError, ValueError):
    """A problem with one file or item of a dataset: ``path`` names it, ``problem`` says what is wrong."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(DrsfError, ValueError):
    """A bad configuration: unknown key, unknown name, missing folder."""


class NonFiniteLossError(DrsfError, FloatingPointError):
    """Training produced a NaN or infinite loss; the message names the step and the loss term."""


class RunInUseError(ConfigError):
    """Another live process is writing into the run folder; the message names its pid and host."""


class DiskFullError(DrsfError, OSError):
    """A write found no space left: the message names the folder, the bytes it needed and the bytes free.

    Writes are atomic (``drsf_kit.utils.io``), so the file it was writing keeps its previous content.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no space left on the device"
