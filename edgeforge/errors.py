"""Errors that map to the CLI's exit codes (design.md): 2 bad input, 1 a check failed."""

from __future__ import annotations


class EdgeforgeError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 2


class BadInput(EdgeforgeError):
    """The user gave something we cannot use. The message names the file/field/value and what is accepted."""

    exit_code = 2


class CheckFailed(EdgeforgeError):
    """A parity, accuracy or latency check failed."""

    exit_code = 1


class NotAvailable(EdgeforgeError):
    """A command or toolchain is not available here (not built yet, or missing on this machine)."""

    exit_code = 2
