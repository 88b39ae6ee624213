"""``python -m avatar_cli`` = the ``avatar`` command."""

from .cli import entry

entry()
