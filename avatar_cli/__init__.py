"""avatar-cli: one portrait + one speech recording -> a lip-synced talking-head video.

    from avatar_cli import AvatarPipeline, RenderOptions
    pipe = AvatarPipeline.from_preset("tiny")        # random weights; or .from_pretrained(DIR)
    pipe.render("portrait.png", "speech.wav", "out.mp4", RenderOptions(size=64))
"""

__version__ = "0.1.0"

from .pipeline import AvatarPipeline, RenderOptions, RenderResult  # noqa: E402

__all__ = ["AvatarPipeline", "RenderOptions", "RenderResult", "__version__"]
