"""Errors a user can act on. The CLI prints ``str(error)`` as one line and exits with ``exit_code``."""


class AvatarError(Exception):
    """Failed work (exit code 1): the message names the problem and the fix."""

    exit_code = 1


class InputError(AvatarError):
    """Bad input or options (exit code 2, a usage error)."""

    exit_code = 2


class WeightsError(AvatarError):
    """Model weights are missing, incomplete or unreadable (exit code 1)."""


class Cancelled(AvatarError):
    """The user stopped the command (Ctrl-C, SIGTERM): exit code 130 (128 + SIGINT), as shells report it. The
    CLI prints ``avatar: <message>`` (no "error:"): what was kept and what was not."""

    exit_code = 130
