"""One exception hierarchy for every user-facing failure.

The CLI turns an `EdbcError` into one line `Error: <where>: <what>` and the
exit code of its class; anything else escaping is a bug in edbc and keeps its
traceback.
"""

from __future__ import annotations

# Exit codes, documented in the README. 2 is click's own code for bad usage.
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_VERIFY = 4
EXIT_ARTIFACT = 5
EXIT_LIMIT = 6
EXIT_WEIGHTS = 7
EXIT_DISTRIBUTED = 8
EXIT_WORSE_POLICY = 9
EXIT_NATIVE = 10
EXIT_INTERRUPTED = 130


class EdbcError(Exception):
    """Base class: a failure the user can act on.

    `path`, `line` and `column` (1-based) say where in which file; they are
    optional because not every error belongs to a file.
    """

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, *, path: str | None = None,
                 line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.column = column

    def where(self) -> str:
        parts = [str(self.path)] if self.path is not None else []
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)

    def __str__(self) -> str:
        where = self.where()
        return f"{where}: {self.message}" if where else self.message


class UsageError(EdbcError):
    """Options that do not fit together (e.g. `--device cuda` without CUDA)."""

    exit_code = EXIT_USAGE


class InputError(EdbcError):
    """A file the user gave is missing or malformed."""

    exit_code = EXIT_INPUT


class SpecError(InputError):
    """A model spec is malformed: syntax, unknown op/parameter/input, shape mismatch."""


class DataError(InputError):
    """A data file (trees, sequences, lattices, typed DAGs) is malformed."""


class MappingError(InputError):
    """A weight mapping file is malformed, or names a parameter the model lacks."""


class VerificationError(EdbcError):
    """An IR verifier failed, or batched results differ from the reference."""

    exit_code = EXIT_VERIFY


class ArtifactError(EdbcError):
    """A plan or policy file is corrupt, truncated, of an unknown version or for another model."""

    exit_code = EXIT_ARTIFACT


class WeightsError(EdbcError):
    """Weights do not fit the model: a tensor missing, extra, mis-shaped, not floating point or
    not finite."""

    exit_code = EXIT_WEIGHTS


class LimitError(EdbcError):
    """The request exceeds a documented limit (graph too large for a policy, memory)."""

    exit_code = EXIT_LIMIT


class DistributedError(EdbcError):
    """A process of a multi-process job (`--nproc`, torchrun) died, lost contact with the others, or
    was given other inputs than they were."""

    exit_code = EXIT_DISTRIBUTED


class WorsePolicyError(EdbcError):
    """A trained batching policy needs more batches on the held-out graphs than the best heuristic,
    so `train-policy` does not write it (unless `--allow-worse`)."""

    exit_code = EXIT_WORSE_POLICY


class NativeError(EdbcError):
    """The native core (C++) is not built, was built from other sources, or cannot be built here."""

    exit_code = EXIT_NATIVE


class EdbcWarning(UserWarning):
    """Something the user should know that does not stop the work; the CLI prints it once as one
    line `Warning: ...` on stderr."""


class PolicyWarning(EdbcWarning):
    """The model's own batching policy does not fit its spec, so another policy batches instead."""


def error_class(exit_code: int) -> type[EdbcError]:
    """The class of an exit code (the most general one: `InputError` for 3), for an error that crossed
    a process boundary as its message and code."""
    pending = [EdbcError]
    while pending:
        cls = pending.pop(0)
        if cls.exit_code == exit_code:
            return cls
        pending.extend(cls.__subclasses__())
    return EdbcError


def quoted(text: str, width: int = 60) -> str:
    """Text the user wrote, as an error message shows it: control characters escaped (a NUL byte
    must not reach the terminal), clipped to `width` characters."""
    shown = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text[:width + 1])
    return shown if len(text) <= width else shown[:width] + "..."
