"""avatar-cli: one portrait + one speech recording -> a lip-synced talking-head video.

    from avatar_cli import load_pipeline, LoadOptions, RenderOptions
    pipe = load_pipeline("hallo", weights="hallo-weights/")    # or random_weights=True, arch="tiny"
    pipe = LoadOptions(random_weights=True, arch="tiny", device="cpu").load("ditto")  # the same, as one object
    pipe.render("portrait.png", "speech.wav", "out.mp4", RenderOptions(model="hallo"))

Each model family is a :class:`Pipeline` (``avatar_cli/pipelines/``): ``UNetPipeline`` (the
EMO/Hallo-style dual U-Net: OSA-LCM, FADA, teacher, Hallo, EchoMimic) and ``DittoPipeline`` (Ditto's
motion-space engine).
"""

__version__ = "0.1.0"

__all__ = ["Pipeline", "UNetPipeline", "DittoPipeline", "load_pipeline", "LoadOptions", "RenderOptions",
           "RenderResult", "__version__"]


def __dir__() -> list[str]:
    # the lazy names below are part of the API: dir(avatar_cli) lists them
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str):
    # torch and diffusers load only when a pipeline is used, so `avatar --help` answers at once.
    if name in ("Pipeline", "load_pipeline"):
        from . import pipelines

        return getattr(pipelines, name)
    if name == "UNetPipeline":
        from .pipelines.unet import UNetPipeline

        return UNetPipeline
    if name == "DittoPipeline":
        from .pipelines.ditto import DittoPipeline

        return DittoPipeline
    if name == "LoadOptions":
        from .load_options import LoadOptions

        return LoadOptions
    if name in ("RenderOptions", "RenderResult"):
        from . import options

        return getattr(options, name)
    raise AttributeError(f"module 'avatar_cli' has no attribute {name!r}")
