"""LivePortrait's renderer networks, as Ditto (antgroup/ditto-talkinghead) uses them.

Re-implemented from KwaiVGI/LivePortrait (MIT) / Ditto (Apache-2.0) ``core/models/modules/*``; each
module's ``state_dict()`` has exactly the keys and shapes of the released ``.pth`` files, so they
load with ``load_state_dict(strict=True)``. All widths are constructor arguments (defaults: the
released configs).
"""

from .appearance import AppearanceFeatureExtractor
from .keypoints import bins_to_degrees, rotation_matrix, transform_keypoint
from .motion_extractor import MotionExtractor
from .spade_decoder import SPADEDecoder
from .stitching import StitchingNetwork, stitch
from .warping import DenseMotionNetwork, WarpingNetwork

__all__ = [
    "AppearanceFeatureExtractor", "MotionExtractor", "WarpingNetwork", "DenseMotionNetwork",
    "SPADEDecoder", "StitchingNetwork", "stitch", "bins_to_degrees", "rotation_matrix",
    "transform_keypoint",
]
