"""What ``--model`` names: a set of weights of one model family, with the sampling method it is
made for (``--method`` overrides it where another method applies).

| --model | family | weights | default method |
|---|---|---|---|
| osa-lcm | unet | an OSA-LCM student (``avatar distill osa-lcm``) | osa-lcm (1 step) |
| fada | unet | a FADA student with CFG tokens (``avatar distill fada``) | fada (6 steps) |
| teacher | unet | the multi-step teacher (``avatar train teacher``) | teacher (DDIM 25) |
| hallo | unet | Hallo's public checkpoint (``avatar weights convert --from hallo``) | hallo (DDIM 40, CFG) |
| ditto | ditto | Ditto's public checkpoint (``avatar weights download ditto``) | ditto (DiT, 10 steps, CFG 2) |
| echomimic | unet | EchoMimic's public checkpoint (``avatar weights convert --from echomimic``) | echomimic (DDIM 30, CFG 2.5) |
| echomimic-acc | unet | EchoMimic's step-distilled checkpoint (``... --from echomimic --acc``) | echomimic-acc (6 steps) |

``adv-lcm`` and ``fada-balanced`` were ``--model`` names before models and methods were told
apart; they remain as shorthands (:data:`SHORTHANDS`) for ``--model osa-lcm --method adv-lcm``
and ``--model fada --method fada-balanced``.

Nothing here imports torch: options are checked against this table before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """One ``--model``.

    Attributes:
        name: the ``--model`` name.
        family: the pipeline family that runs it (``pipelines/``): "unet" or "ditto".
        default_method: the sampling method used without ``--method``.
        description: one line for help and reports.
        preset_family: the U-Net variant built for ``--random-weights`` ("osa-lcm" ours, "hallo",
            "echomimic").
        cfg_tokens: random weights get FADA's CFG-token layers.
        components: manifest components (``weights.toml``) that hold its public weights; () = none exist.
        converted: the folder under ``$AVATAR_HOME/converted/`` that ``avatar weights convert`` writes
            for it, rendered from without ``--weights``; None = used as downloaded.
        reads_download: the family also reads the downloaded component as it is (no conversion
            needed; Ditto).
        convert_from: the ``--from`` arguments of the conversion when they are not ``converted``
            (``"echomimic --acc"``).
        requires: import names of the packages it cannot render real weights without (keys of
            :data:`PACKAGES`); checked by :func:`check_packages` before any download or model load.
            Optional helpers with a fallback (MediaPipe, InsightFace, MTCNN) are not listed.
    """

    name: str
    family: str
    default_method: str
    description: str
    preset_family: str = "osa-lcm"
    cfg_tokens: bool = False
    components: tuple[str, ...] = ()
    converted: str | None = None
    reads_download: bool = False
    convert_from: str | None = None
    requires: tuple[str, ...] = ()


MODELS: dict[str, ModelSpec] = {m.name: m for m in (
    ModelSpec("osa-lcm", "unet", "osa-lcm", "OSA-LCM one-step student",
              components=("osa-lcm", "sd-vae-ft-mse", "wav2vec2-base-960h")),
    ModelSpec("fada", "unet", "fada", "FADA six-step student with CFG tokens", cfg_tokens=True,
              components=("fada", "sd-vae-ft-mse", "wav2vec2-base-960h")),
    ModelSpec("teacher", "unet", "teacher", "the multi-step teacher (DDIM, multi-CFG)"),
    ModelSpec("hallo", "unet", "hallo", "Hallo's public checkpoint (DDIM 40, CFG 3.5)", preset_family="hallo",
              components=("hallo",), converted="hallo"),
    ModelSpec("ditto", "ditto", "ditto", "Ditto: motion-space DiT + LivePortrait renderer", preset_family="ditto",
              components=("ditto",), converted="ditto", reads_download=True, requires=("onnxruntime",)),
    # EchoMimic's methods ("echomimic": DDIM 30 + CFG 2.5; "echomimic-acc": its 6-step pseudo-velocity
    # step) are sampling/methods.py entries; its VAE is the sd-vae-ft-mse component.
    ModelSpec("echomimic", "unet", "echomimic", "EchoMimic's public checkpoint (DDIM 30, CFG 2.5)",
              preset_family="echomimic", components=("echomimic", "sd-vae-ft-mse"), converted="echomimic"),
    ModelSpec("echomimic-acc", "unet", "echomimic-acc", "EchoMimic-acc: its step-distilled checkpoint (6 steps)",
              preset_family="echomimic", components=("echomimic-acc", "sd-vae-ft-mse"), converted="echomimic-acc",
              convert_from="echomimic --acc"),
)}

# `--model auto` (the default): the first of these that is installed; with none, DEFAULT_DOWNLOAD is
# downloaded on first use (the public model that renders real faces fastest).
AUTO_ORDER = ("osa-lcm", "fada", "ditto", "echomimic-acc", "hallo", "echomimic")
DEFAULT_DOWNLOAD = "ditto"

# Former --model names of sampling methods -> (model, method).
SHORTHANDS: dict[str, tuple[str, str]] = {"adv-lcm": ("osa-lcm", "adv-lcm"), "fada-balanced": ("fada", "fada-balanced")}

MODEL_CHOICES = ("auto", *MODELS, *SHORTHANDS)

# Import name -> the pip requirement that installs it (pyproject.toml's core dependencies).
# Ditto's HuBERT audio encoder and its face crop (InsightFace det_10g / 2d106det, landmark203) are ONNX
# files run by onnxruntime (onnxruntime-gpu provides the same module).
PACKAGES: dict[str, str] = {"onnxruntime": "onnxruntime>=1.16"}


def importable(module: str) -> bool:
    """Whether ``module`` can be imported here (found on the path; not imported)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_packages(model: str) -> list[str]:
    """The import names in ``MODELS[model].requires`` that are not importable here."""
    spec = MODELS.get(model)
    return [m for m in (spec.requires if spec else ()) if not importable(m)]


def check_packages(model: str, random_weights: bool = False) -> None:
    """Fail before any download or model load when ``model`` needs a package that is not installed.

    Random weights need none of them (a seeded stand-in replaces Ditto's HuBERT; the face box is given
    or centred).

    Raises:
        AvatarError: one line naming the package and the ``pip install`` command.
    """
    from ..errors import AvatarError

    missing = [] if random_weights else missing_packages(model)
    if missing:
        install = " ".join(f"'{PACKAGES.get(m, m)}'" for m in missing)
        raise AvatarError(f"--model {model} needs {', '.join(missing)}, which is not installed; "
                          f"install it with: pip install {install}")


def resolve_model(name: str, method: str | None = None) -> tuple[str, str | None, bool]:
    """(model, method, was_shorthand) for a ``--model`` value: a shorthand gives its model and
    method (an explicit ``method`` wins). Unknown names are returned unchanged (validation names them)."""
    if name in SHORTHANDS:
        model, implied = SHORTHANDS[name]
        return model, method or implied, True
    return name, method, False
