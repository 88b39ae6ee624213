"""The shared key-report machinery of every conversion: what was loaded, missing (kept initialised)
or unexpected (fatal) per component; reading a checkpoint; AnimateDiff motion-module names; loading
networks built on the meta device by assignment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InputError, WeightsError


@dataclass
class ComponentReport:
    """Keys of one converted component: loaded, missing (kept initialised), unexpected (fatal)."""

    name: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        groups: dict[str, int] = {}
        for key in self.missing:
            group = next((g for g in (".audio_modules.", ".motion_modules.", ".cfg_modules.", "cfg_embedding")
                          if g in key), "other")
            groups[group.strip(".")] = groups.get(group.strip("."), 0) + 1
        return {"name": self.name, "loaded": self.loaded, "missing": len(self.missing), "missing_groups": groups,
                "unexpected": self.unexpected[:20]}


@dataclass
class ConversionReport:
    """What a conversion wrote: ``output``, keys per component, counts of input keys deliberately
    left out (``ignored``), and ``notes`` (other facts: files linked or copied, the cfg's arrays)."""

    output: str
    components: list[ComponentReport]
    ignored: dict[str, int]
    notes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"output": self.output, "components": [c.summary() for c in self.components], "ignored": self.ignored}
        if self.notes:
            out["notes"] = self.notes
        return out


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file or a torch ``.ckpt``/``.pth``/``.pt`` (weights only, ``state_dict``
    unwrapped). Raises InputError for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist; check the path")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decoder error means "not a checkpoint we can read"
        raise InputError(f"cannot read checkpoint {path}: {str(err).splitlines()[0][:200]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"checkpoint {path} holds no state dict")
    return state


def convert_motion_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AnimateDiff's original motion-module keys -> our (diffusers') temporal-attention keys.

    diffusers' ``convert_animatediff_checkpoint_to_diffusers`` renames the weights and drops the
    position tables (``pos_encoder.pe``), which diffusers recomputes. A file may carry its own
    tables (Hallo's does); AnimateDiff keeps one per attention block, diffusers one per transformer
    block, so the first block's table is kept and the second must equal it.

    Raises:
        WeightsError: the two attention blocks of a module carry different position tables.
    """
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    converted = convert_animatediff_checkpoint_to_diffusers(state)
    for key, value in state.items():
        if key.endswith("attention_blocks.0.pos_encoder.pe"):
            twin = state.get(key.replace("attention_blocks.0", "attention_blocks.1"))
            if twin is not None and not twin.is_meta and not torch.equal(twin, value):
                raise WeightsError(f"{key}: the two attention blocks carry different position tables")
            converted[key.replace(".temporal_transformer", "").replace("attention_blocks.0.pos_encoder.pe",
                                                                         "pos_embed.pe")] = value
    return converted


def _unconsumed(keys: list[str], state: dict[str, torch.Tensor], converted: dict[str, torch.Tensor]) -> list[str]:
    """Input keys a diffusers converter left out (it skips names it does not know, silently):
    the converted tensors are the inputs or views of them, so compare their storages."""
    used = {t.untyped_storage().data_ptr() for t in converted.values() if t.numel()}
    return [k for k in keys if state[k].numel() and state[k].untyped_storage().data_ptr() not in used]


def _load(module: torch.nn.Module, state: dict[str, torch.Tensor], name: str, assign: bool = False) -> ComponentReport:
    result = module.load_state_dict(state, strict=False, assign=assign)
    report = ComponentReport(name, loaded=len(state) - len(result.unexpected_keys),
                             missing=list(result.missing_keys), unexpected=list(result.unexpected_keys))
    if report.unexpected:
        raise WeightsError(f"{name}: {len(report.unexpected)} unexpected key(s), e.g. {report.unexpected[0]}; "
                           f"the checkpoint does not match the {name} architecture")
    return report


def _fill_meta(models, parts: dict[str, dict[str, torch.Tensor]]) -> list[ComponentReport]:
    """Load each network's state (``parts``: network name -> state dict) into ``models`` built on the
    meta device, by assignment; every parameter must come from the file.

    Raises:
        WeightsError: a shape that differs, or a missing key (one line naming the first)."""
    reports = []
    for name, part in parts.items():
        module = getattr(models, name)
        try:
            report = _load(module, part, name, assign=True)
        except RuntimeError as err:  # a shape that differs
            lines = str(err).splitlines()
            raise WeightsError(f"{name}: {(lines[1] if len(lines) > 1 else lines[0]).strip()} "
                               f"(is --arch or --config right?)") from None
        left = [k for k, v in module.state_dict().items() if v.is_meta]
        if report.missing or left:
            raise WeightsError(f"{name}: {len(report.missing or left)} missing key(s), e.g. {(report.missing or left)[0]}")
        reports.append(report)
    return reports
