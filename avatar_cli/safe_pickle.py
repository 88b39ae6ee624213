"""Restricted reading of Ditto's cfg pickle (``ditto_cfg/v0.4_hubert_cfg_pytorch.pkl``) and its config.

A pickle can run any code when loaded, so the cfg is read with an unpickler that resolves only the globals a
dict of builtin values and numpy arrays needs (numpy's own array/dtype/scalar reconstructors); any other
global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) is refused before anything is called.

:class:`DittoConfig` gathers what the tool needs from the pickle, following Ditto's ``core/atomic_components/
cfg.py:parse_cfg`` and the option defaults of ``stream_pipeline_offline.py:StreamSDK.setup``
(antgroup/ditto-talkinghead @ e9191cf); DITTO notes section 3.7. It converts to JSON plus a safetensors file
of its arrays for ``avatar weights convert --from ditto``.
"""

from __future__ import annotations

import _compat_pickle
import dataclasses
import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from avatar_cli.errors import WeightsError

#: (module, name) pairs the cfg unpickler resolves. numpy 1.x pickles name ``numpy.core``, numpy 2.x
#: ``numpy._core``; both are read with the installed numpy.
ALLOWED_GLOBALS = frozenset(
    {
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "complex"),
        ("builtins", "bytearray"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles: encode(str, "latin1")
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }
)


class _Refused(pickle.UnpicklingError):
    pass


def _numpy_global(module: str, name: str):
    import _codecs
    import builtins

    if module == "builtins":
        return getattr(builtins, name)
    if module == "_codecs":
        return getattr(_codecs, name)
    if module == "numpy":
        return getattr(np, name)
    sub = module.split(".", 2)[-1]  # multiarray | numeric
    try:
        core = __import__(f"numpy._core.{sub}", fromlist=[name])
    except ImportError:  # numpy < 2
        core = __import__(f"numpy.core.{sub}", fromlist=[name])
    return getattr(core, name)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        # Python-2-compatible names (protocols 0-2 write __builtin__.set), mapped as pickle's fix_imports does;
        # the allowlist applies to the mapped name
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in ALLOWED_GLOBALS:
            return _numpy_global(module, name)
        raise _Refused(f"global '{module}.{name}' is not allowed")

    def persistent_load(self, pid):
        raise _Refused("persistent ids are not allowed")


def restricted_load(data: bytes | io.BufferedIOBase, name: str = "pickle") -> Any:
    """Unpickle ``data`` admitting only builtin containers/numbers/strings and numpy arrays, dtypes and scalars.

    Args:
        data: the pickle bytes or a binary file object.
        name: what to call the data in an error (e.g. the file path).

    Raises:
        WeightsError: a disallowed global (a pickle that would run code) or an unreadable pickle; the message
            is one line naming the global.
    """
    f = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        return _RestrictedUnpickler(f).load()
    except _Refused as e:
        raise WeightsError(f"refusing to load {name}: {e} (only plain data and numpy arrays are read)") from None
    except Exception as e:  # truncated or corrupt: EOFError, ValueError, TypeError, ...
        raise WeightsError(f"cannot read {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def load_pickle_file(path: str | Path) -> Any:
    """:func:`restricted_load` of a file. Raises WeightsError (also for a missing file)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"cannot read {path}: {e.strerror or e}") from None
    return restricted_load(data, str(path))


_ARRAY_FIELDS = ("delta_eye_arr", "v_min_max_for_clip")


@dataclasses.dataclass
class DittoConfig:
    """What the tool takes from Ditto's cfg pickle; defaults are Ditto's code defaults (``StreamSDK.setup``).

    Attributes:
        base_cfg: per-sub-model dicts (``model_path`` relative to the weights folder, ``device``, ...).
        audio2motion_cfg: ``motion_feat_dim`` (265), ``audio_feat_dim`` (1103), ``seq_frames`` (80), ``use_*``,
            ``w2f_type``, ...
        default_kwargs: the pickle's run options as read (arrays included), for reference.
        delta_eye_arr: (15, 63) float32 blink template, or None (no blinks).
        v_min_max_for_clip: (4, 265) float32 per-dim clip range of the generated motion (rows 0, 1), or None.
        overall_ctrl_info: controls for every frame (e.g. ``{"delta_pitch": 2}``).
        emo: emotion in any form :func:`avatar_cli.motion.condition.parse_emotion` accepts (4 = neutral).
    """

    base_cfg: dict = dataclasses.field(default_factory=dict)
    audio2motion_cfg: dict = dataclasses.field(default_factory=dict)
    default_kwargs: dict = dataclasses.field(default_factory=dict)
    delta_eye_arr: np.ndarray | None = None
    v_min_max_for_clip: np.ndarray | None = None
    overall_ctrl_info: dict = dataclasses.field(default_factory=dict)
    sampling_timesteps: int = 50
    overlap_v2: int = 10
    fade_type: str = ""
    fade_out_keys: tuple = ("exp",)
    fix_kp_cond: int = 0
    fix_kp_cond_dim: tuple[int, int] | None = None
    emo: Any = 4
    delta_eye_open_n: Any = 0
    smo_k_d: int = 3
    online_mode: bool = False
    crop_scale: float = 2.3
    crop_vx_ratio: float = 0.0
    crop_vy_ratio: float = -0.125
    crop_flag_do_rot: bool = True
    max_size: int = 1920
    flag_stitching: bool = True
    relative_d: bool = True
    use_d_keys: Any = None
    drive_eye: bool | None = None

    @classmethod
    def from_dict(cls, cfg: dict) -> "DittoConfig":
        """Build from the unpickled cfg dict (keys ``base_cfg``, ``audio2motion_cfg``, ``default_kwargs``).

        Raises:
            WeightsError: not a dict, a required part missing, or an array of the wrong shape.
        """
        if not isinstance(cfg, dict):
            raise WeightsError(f"Ditto cfg is a {type(cfg).__name__}, expected a dict")
        missing = [k for k in ("base_cfg", "audio2motion_cfg", "default_kwargs") if not isinstance(cfg.get(k), dict)]
        if missing:
            raise WeightsError(f"Ditto cfg lacks {', '.join(missing)}")
        kw = dict(cfg["default_kwargs"])
        out = cls(base_cfg=cfg["base_cfg"], audio2motion_cfg=cfg["audio2motion_cfg"], default_kwargs=kw)
        for f in dataclasses.fields(cls):
            if f.name in ("base_cfg", "audio2motion_cfg", "default_kwargs") or f.name not in kw:
                continue
            v = kw[f.name]
            if f.name in _ARRAY_FIELDS:
                v = None if v is None else np.asarray(v, dtype=np.float32)
            elif f.name in ("fix_kp_cond_dim", "fade_out_keys") and v is not None:
                v = tuple(v)
            elif f.name == "overall_ctrl_info":
                v = dict(v or {})
            setattr(out, f.name, v)
        out._check()
        return out

    def _check(self) -> None:
        if self.delta_eye_arr is not None and (self.delta_eye_arr.ndim != 2 or self.delta_eye_arr.shape[1] != 63):
            raise WeightsError(f"Ditto cfg delta_eye_arr has shape {self.delta_eye_arr.shape}, expected (15, 63)")
        if self.v_min_max_for_clip is not None and (
            self.v_min_max_for_clip.ndim != 2 or self.v_min_max_for_clip.shape[0] < 2
            or self.v_min_max_for_clip.shape[1] != 265
        ):
            raise WeightsError(f"Ditto cfg v_min_max_for_clip has shape {self.v_min_max_for_clip.shape}, expected (4, 265)")

    @classmethod
    def from_pickle(cls, path: str | Path) -> "DittoConfig":
        """Read ``v0.4_hubert_cfg_pytorch.pkl`` with :func:`load_pickle_file`. Raises WeightsError."""
        return cls.from_dict(load_pickle_file(path))

    def arrays(self) -> dict[str, np.ndarray]:
        """The array fields that are set, float32 (for a safetensors file)."""
        return {k: np.ascontiguousarray(getattr(self, k), dtype=np.float32) for k in _ARRAY_FIELDS
                if getattr(self, k) is not None}

    def to_json(self) -> str:
        """JSON of everything but the arrays (which :meth:`arrays` gives); ``default_kwargs`` keeps its JSON-able
        entries only (arrays are replaced by their shape)."""

        def plain(v):
            if isinstance(v, np.ndarray):
                return {"__ndarray_shape__": list(v.shape)}
            if isinstance(v, np.generic):
                return v.item()
            if isinstance(v, dict):
                return {str(k): plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple, set, frozenset)):
                return [plain(x) for x in v]
            if v is None or isinstance(v, (bool, int, float, str)):
                return v
            return repr(v)

        d = {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in _ARRAY_FIELDS}
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, arrays: dict[str, np.ndarray] | None = None) -> "DittoConfig":
        """Inverse of :meth:`to_json` (+ :meth:`arrays`). Raises WeightsError on bad JSON."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise WeightsError(f"bad Ditto config JSON: {e}") from None
        names = {f.name for f in dataclasses.fields(cls)}
        out = cls(**{k: v for k, v in d.items() if k in names and k not in _ARRAY_FIELDS})
        if out.fix_kp_cond_dim is not None:
            out.fix_kp_cond_dim = tuple(out.fix_kp_cond_dim)
        out.fade_out_keys = tuple(out.fade_out_keys)
        for k, v in (arrays or {}).items():
            if k in _ARRAY_FIELDS:
                setattr(out, k, np.asarray(v, dtype=np.float32))
        out._check()
        return out

    def save(self, folder: str | Path) -> None:
        """Write ``ditto_cfg.json`` and (if any array is set) ``ditto_cfg.safetensors`` into ``folder``."""
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "ditto_cfg.json").write_text(self.to_json() + "\n")
        arrays = self.arrays()
        if arrays:
            save_file(arrays, str(folder / "ditto_cfg.safetensors"))

    @classmethod
    def load(cls, folder: str | Path) -> "DittoConfig":
        """Read what :meth:`save` wrote. Raises WeightsError if ``ditto_cfg.json`` is missing."""
        from safetensors.numpy import load_file

        folder = Path(folder)
        try:
            text = (folder / "ditto_cfg.json").read_text()
        except OSError:
            raise WeightsError(f"{folder / 'ditto_cfg.json'} not found (run avatar weights convert --from ditto)") from None
        st = folder / "ditto_cfg.safetensors"
        return cls.from_json(text, load_file(str(st)) if st.is_file() else None)
