"""Errors that carry a hint for the user (shown by the CLI as ``error:`` and ``hint:``)."""

from __future__ import annotations

from typing import IO, Any

import click

from gpufleet.i18n import _


class GpufleetError(click.ClickException):
    """A user-facing error: what is wrong, and the exact command or setting that fixes it."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(_("error: {message}", message=self.format_message()), file=file, err=True)
        if self.hint:
            click.echo(_("hint: {hint}", hint=self.hint), file=file, err=True)


class ConfigError(GpufleetError):
    """A config file or environment variable is wrong; the message names the key and the file."""
