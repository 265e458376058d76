"""Exit codes (api.md) and the one error every subcommand raises to end with a one-line message."""

from __future__ import annotations

__all__ = ["EXIT_OK", "EXIT_PROBLEM", "EXIT_USAGE", "CliError"]

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_PROBLEM) -> None:
        super().__init__(message)
        self.code = code
