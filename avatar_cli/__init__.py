"""avatar-cli: one portrait + one speech recording -> a lip-synced talking-head video.

    from avatar_cli import AvatarPipeline, RenderOptions
    pipe = AvatarPipeline.from_preset("tiny")        # random weights; or .from_pretrained(DIR)
    pipe.render("portrait.png", "speech.wav", "out.mp4", RenderOptions(size=64))
"""

__version__ = "0.1.0"

__all__ = ["AvatarPipeline", "RenderOptions", "RenderResult", "__version__"]


def __getattr__(name: str):
    # torch and diffusers load only when the pipeline is used, so `avatar --help` answers at once.
    if name == "AvatarPipeline":
        from .pipeline import AvatarPipeline

        return AvatarPipeline
    if name in ("RenderOptions", "RenderResult"):
        from . import options

        return getattr(options, name)
    raise AttributeError(f"module 'avatar_cli' has no attribute {name!r}")
