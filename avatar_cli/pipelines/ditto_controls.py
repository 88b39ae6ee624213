"""Ditto's render controls, a mixin of :class:`~avatar_cli.pipelines.ditto.DittoPipeline` (moved from
``pipelines/ditto.py``): ``--emotion``, ``--blink``, ``--pose-offset``, ``--pose-gain``, ``--mouth-gain``,
``--motion-overlap`` and ``--controls`` resolved against Ditto's cfg (DITTO notes sec. 8), and the
:class:`~avatar_cli.motion.stitch.MotionStitch` that applies them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..motion.controls import parse_blink, parse_emotion_option, read_controls
from ..motion.stitch import ANGLE_KEYS, LIP_KP, MotionStitch, _kp_mask
from ..options import RenderOptions
from .ditto_stream import STREAM_OVERLAP

if TYPE_CHECKING:
    from .ditto import SourceState


@dataclass
class DittoControls:
    """The controls of one render, resolved against the cfg (:meth:`DittoPipeline.controls`).

    Attributes:
        emotion: the condition's emotion: an (m, 8) table (``--emotion``) or the cfg's ``emo``.
        hold_last: per-frame emotion rows hold their last row past the table's end (a FILE).
        overlap: the DiT windows' overlap (``overlap_v2``).
        delta_eye_open_n: the blink gaps (-1 when there is no blink template).
        overall_ctrl: MotionStitch's controls for every frame (the cfg's, plus ``--pose-offset``).
        use_d_keys: MotionStitch's driven keys and gains (``--pose-gain``, ``--mouth-gain``).
        per_frame: frame -> controls (``--controls``).
    """

    emotion: object
    hold_last: bool
    overlap: int
    delta_eye_open_n: object
    overall_ctrl: dict
    use_d_keys: object
    per_frame: dict


class DittoControlsMixin:
    """The controls of a render for :class:`DittoPipeline` (which supplies ``config`` and ``warn``)."""

    def controls(self, options: RenderOptions, stream: bool = False, quiet: bool = False) -> DittoControls:
        """Resolve the ``--model ditto`` controls of ``options`` against the cfg (DITTO notes sec. 8, CLI mapping).

        - ``--emotion``: the condition's 8 emotion entries (an (m, 8) table; the cfg's ``emo`` without it).
        - ``--blink``: ``delta_eye_open_n`` (auto 0, never -1, N); without the cfg's blink template
          (``delta_eye_arr``, e.g. random weights) there are no blinks and a note says so.
        - ``--pose-offset p,y,r``: degrees ADDED to ``overall_ctrl_info``'s ``delta_pitch/yaw/roll`` (the released
          cfg already has ``delta_pitch: 2``); zero components are left out.
        - ``--pose-gain p,y,r``: gains of ``use_d_keys`` for the angles: the driving angle's logits are
          ``source + (generated - d0) * gain`` (linear in logit space, not exactly in degrees; 0 = the
          source's pose, 1 = as generated).
        - ``--mouth-gain G``: the exp gain of ``use_d_keys`` becomes a (1, 63) vector, G on the 18 values of
          the lip keypoints (6, 12, 14, 17, 19, 20), 1 elsewhere: the lips' expression is
          ``exp_s + (exp_d - exp_d0) * G`` (only lips and eyes are driven; the rest is the source's).
        - ``--motion-overlap``: ``overlap_v2`` (70 for ``stream`` when not given, Ditto's online cfg).
        - ``--controls FILE``: MotionStitch's per-frame ``ctrl_info`` (its keys win over the overall ones).
        """
        cfg = self.config
        emotion, hold = cfg.emo, False
        table = parse_emotion_option(options.emotion)
        if table is not None:
            emotion, hold = table, len(table) > 1
        overlap = options.motion_overlap or (STREAM_OVERLAP if stream else cfg.overlap_v2)
        eye_n = cfg.delta_eye_open_n
        if options.blink is not None:
            eye_n = parse_blink(options.blink)
            if cfg.delta_eye_arr is None and not quiet:
                self.warn("note: --blink needs the cfg's blink template (delta_eye_arr); these weights have none, "
                          "so the eyes follow the generated motion")
        if cfg.delta_eye_arr is None:
            eye_n = -1
        overall = dict(cfg.overall_ctrl_info or {})
        for k, v in zip(ANGLE_KEYS, options.pose_offset or ()):
            if v:
                overall[f"delta_{k}"] = float(overall.get(f"delta_{k}", 0)) + float(v)
        keys = cfg.use_d_keys if cfg.use_d_keys is not None else ("exp", "pitch", "yaw", "roll", "t")
        if options.pose_gain is not None or options.mouth_gain != 1:
            gains = dict(keys) if isinstance(keys, dict) else {k: 1.0 for k in keys}
            for k, g in zip(ANGLE_KEYS, options.pose_gain or ()):
                if k in gains:
                    gains[k] = gains[k] * float(g)
            if "exp" in gains and options.mouth_gain != 1:
                lip = _kp_mask(LIP_KP)
                gains["exp"] = gains["exp"] * (1 + lip * np.float32(options.mouth_gain - 1))
            keys = gains
        return DittoControls(emotion, hold, overlap, eye_n, overall, keys, read_controls(options.controls))

    def stitcher(self, source: SourceState, num_frames: int, options: RenderOptions,
                 controls: DittoControls | None = None) -> MotionStitch:
        """MotionStitch for ``num_frames`` frames (-1: a stream) of ``source`` with the options' controls."""
        cfg, ctl = self.config, controls or self.controls(options)
        return MotionStitch(source.motion, num_frames=num_frames, delta_eye_arr=cfg.delta_eye_arr,
                            delta_eye_open_n=ctl.delta_eye_open_n, fade_type=cfg.fade_type,
                            overall_ctrl=ctl.overall_ctrl, use_d_keys=ctl.use_d_keys, seed=options.seed)
