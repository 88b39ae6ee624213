"""Ditto's motion path between its networks: conditions, DiT windowing, motion stitching, HuBERT windows.

Plain numpy re-implementations of antgroup/ditto-talkinghead's ``core/atomic_components`` numerics (no
network code here): :mod:`.condition`, :mod:`.windows`, :mod:`.stitch`, :mod:`.hubert_windows`.
"""

from avatar_cli.motion.condition import (
    COND_DIM,
    EMOTION_LABELS,
    MOTION_DIM,
    AudioConditions,
    emotion_vector,
    motion_to_vector,
    parse_emotion,
    vector_to_motion,
)
from avatar_cli.motion.hubert_windows import (
    OnnxHubert,
    StreamChunker,
    offline_features,
    silence_features,
    stream_windows,
)
from avatar_cli.motion.stitch import MotionStitch, blink_schedule, fade_schedule
from avatar_cli.motion.windows import OnlineMotion, offline_motion

__all__ = [
    "COND_DIM", "EMOTION_LABELS", "MOTION_DIM", "AudioConditions", "MotionStitch", "OnlineMotion", "OnnxHubert",
    "StreamChunker", "blink_schedule", "emotion_vector", "fade_schedule", "motion_to_vector", "offline_features",
    "offline_motion", "parse_emotion", "silence_features", "stream_windows", "vector_to_motion",
]
