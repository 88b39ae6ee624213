"""Configs: a network's constructor arguments as a JSON-able dict; a preset is only a named config.

A *bundle config* maps each network of a model family to its constructor arguments, e.g. the
U-Net family's ``{"vae": {...}, "reference_net": {...}, "denoising_unet": {...}, ...}``
(``models/presets.py``) or Ditto's ``{"appearance": {...}, ..., "dit": {...}}`` (``models/ditto.py``).
``full`` and ``tiny`` are two such dicts kept under a name.

A *config file* (``avatar weights convert --config FILE``) is JSON of the same shape, read by
:func:`resolve_config`: either complete, or ``{"base": "tiny", "<network>": {<the arguments that
differ>}}``, a named config with some arguments replaced (dicts merge key by key, anything else is
replaced whole). This is diffusers' ``ConfigMixin`` idea (``config.json`` holds the constructor
arguments, ``from_config`` builds random weights) for bundles of several networks.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from pathlib import Path

from ..errors import InputError


def merge_config(base: Mapping, overrides: Mapping) -> dict:
    """A deep copy of ``base`` with ``overrides`` applied: a dict value merges into the dict it
    replaces, key by key (recursively); any other value (a list of channel widths, a number)
    replaces the old one whole. Neither argument is changed."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_file(path: str | Path) -> dict:
    """The JSON object in ``path`` (a bundle config or a ``{"base": ...}`` override of one).

    Raises:
        InputError: the file is absent, not JSON, or not a JSON object (one line naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} does not exist; give a JSON file of network -> constructor arguments")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"config file {path} is not readable JSON: {str(err).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise InputError(f"config file {path} holds a JSON {type(config).__name__}, not an object of "
                         f"network -> constructor arguments")
    return config


def resolve_config(spec: "str | Path | Mapping", named: Callable[[str], dict], networks: tuple[str, ...],
                   default_base: str | None = None, what: str = "config") -> dict:
    """The complete bundle config that ``spec`` names.

    Args:
        spec: a preset name (``"full"``, ``"tiny"``), a path to a JSON config file (a string ending in
            ``.json`` or a ``Path``), or a config dict. A file's or dict's ``"base"`` entry names the
            preset it starts from (``default_base`` where absent; with neither, it must be complete).
        named: preset name -> a fresh complete config (raises ``KeyError`` for unknown names).
        networks: the network names a config may hold (other top-level keys are refused, ``"base"``
            and ``"settings"`` aside).
        what: how messages name the config (e.g. ``"Ditto config"``).

    Raises:
        InputError: an unknown preset name, an unreadable file, or a network name not in ``networks``.
    """
    if isinstance(spec, str) and not spec.endswith(".json"):
        try:
            return named(spec)
        except KeyError as err:
            raise InputError(str(err.args[0]) if err.args else f"unknown {what} {spec!r}") from None
    source = str(spec) if not isinstance(spec, Mapping) else "the given config"
    config = dict(spec) if isinstance(spec, Mapping) else read_config_file(spec)
    unknown = [k for k in config if k not in (*networks, "base", "settings")]
    if unknown:
        raise InputError(f"{source}: unknown network {unknown[0]!r} in the {what}; expected some of "
                         f"{', '.join(networks)} (and optionally \"base\": a preset name)")
    base = config.pop("base", default_base)
    if base is None:
        return copy.deepcopy(config)
    if not isinstance(base, str):
        raise InputError(f"{source}: \"base\" must be a preset name such as \"tiny\"")
    try:
        start = named(base)
    except KeyError as err:
        raise InputError(f"{source}: {err.args[0] if err.args else f'unknown preset {base!r}'}") from None
    return merge_config(start, config)
