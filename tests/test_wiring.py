"""Spies on what reaches the networks: each render option that sets a number or a region the networks
see, recorded at the network's or the sampler's boundary and compared with a value computed here by
hand from the option and the docs (never "the output changed").

The options go through the command line (``main(["render", ...])``); the pipelines are the real
random-weight ``tiny`` ones, built once per model and handed to the command by a caching
``load_pipeline``. Where the number is a guidance scale, the denoising U-Net (or Ditto's DiT) is
replaced by a stub whose prediction is a known constant per guidance branch, so the guided
prediction the sampler receives is a closed form of the scales (FADA eq. 9, CFG); everything else
(option parsing, defaults, the pipeline's clip loop, the method objects, the guidance rule) is the
production code.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import avatar_cli.pipelines as pipelines
from avatar_cli.bench import synthetic_portrait, synthetic_speech
from avatar_cli.cli import main
from avatar_cli.models.denoising_unet import DenoisingUNet3D
from avatar_cli.sampling.guidance import GuidedDenoiser

# the stub U-Net's prediction for batch element i: the guidance branches of GuidedDenoiser are
# (cond, no audio, neither) for multi-CFG and (null, cond) for CFG
BRANCH = (1.0, 0.3, -0.2)
FACE_BOX = (100, 60, 120, 140)  # x, y, w, h in the 320x240 portrait's pixels
_PIPES: dict = {}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wiring-media")
    square = synthetic_portrait(folder / "square.png", 320)
    Image.open(square).crop((0, 40, 320, 280)).save(folder / "portrait.png")  # 320 x 240
    synthetic_speech(folder / "speech.wav", 0.5)  # 13 frames at 25 fps: two clips of 8
    return folder


@pytest.fixture
def cached_pipelines(monkeypatch):
    """``load_pipeline`` as the command calls it, each random-weight pipeline built once per module."""
    real = pipelines.load_pipeline

    def load(model="osa-lcm", weights=None, random_weights=False, arch="full", device="auto", dtype="auto",
             compile=False, add_cfg_layers=False, method=None, note=lambda m: None):
        key = (model, random_weights, arch, str(device), str(dtype), method)
        if key not in _PIPES:
            _PIPES[key] = real(model, weights, random_weights, arch, device, dtype, compile, add_cfg_layers, method,
                               note)
        return _PIPES[key]

    monkeypatch.setattr(pipelines, "load_pipeline", load)


class Spy:
    """Records every denoising-U-Net call (timestep, batch, scales, latents) and every guided
    prediction; with ``stub`` the U-Net returns BRANCH[i] for batch element i instead of running."""

    def __init__(self, monkeypatch, stub: bool):
        self.calls, self.guided, self.clips = [], [], []
        forward, call = DenoisingUNet3D.forward, GuidedDenoiser.__call__
        spy = self

        def fake_forward(unet, sample, timestep, *args, **kwargs):
            spy.calls.append({"t": int(torch.as_tensor(timestep).reshape(-1)[0]), "batch": sample.shape[0],
                              "sample": sample.detach().float().clone(),
                              "guidance_scales": kwargs.get("guidance_scales"),
                              "region_scales": tuple(kwargs.get("region_scales", (1.0, 1.0, 1.0)))})
            if not stub:
                return forward(unet, sample, timestep, *args, **kwargs)
            values = torch.tensor(BRANCH[: sample.shape[0]], dtype=sample.dtype).view(-1, 1, 1, 1, 1)
            return values.expand_as(sample).clone()

        def guided(denoiser, latents, t):
            out = call(denoiser, latents, t)
            spy.guided.append((denoiser.rule, out.detach().float().clone()))
            return out

        monkeypatch.setattr(DenoisingUNet3D, "forward", fake_forward)
        monkeypatch.setattr(GuidedDenoiser, "__call__", guided)


@pytest.fixture
def render(media, tmp_path, capsys, cached_pipelines):
    def run(*args, image="portrait.png"):
        out = tmp_path / "talk.mp4"
        code = main(["render", str(media / image), str(media / "speech.wav"), "--random-weights", "--arch", "tiny",
                     "--size", "64", "--clip-frames", "8", "--device", "cpu", "-q", "-o", str(out), "--overwrite",
                     *map(str, args)])
        assert code == 0, capsys.readouterr().err
        return out
    return run


def _constant(tensor: torch.Tensor) -> float:
    """The value of a tensor that must be constant (asserted)."""
    value = float(tensor.flatten()[0])
    torch.testing.assert_close(tensor, torch.full_like(tensor, value), rtol=0, atol=1e-6)
    return value


# ------------------------------------------------------------------ U-Net family: guidance scales
@pytest.mark.parametrize("model, args, cfg_a, cfg_r", [
    ("teacher", [], 6.5, 2.5),                                             # the docs' defaults
    ("teacher", ["--guidance-audio", 4.5, "--guidance-ref", 1.5], 4.5, 1.5),
    ("teacher", ["--guidance-audio", 1.5, "--guidance-ref", 4.5], 1.5, 4.5),  # not swapped
    ("fada-balanced", ["--guidance-audio", 3, "--guidance-ref", 0.5], 3.0, 0.5),
])
def test_multi_cfg_combines_the_branches_with_the_options_scales(render, monkeypatch, model, args, cfg_a, cfg_r):
    spy = Spy(monkeypatch, stub=True)
    steps = 4 if model == "fada-balanced" else 2  # PeRFlow: one step per window at least
    render("--model", model, "--steps", steps, *args)
    eps_a, eps_r, eps_b = BRANCH
    expected = cfg_a * (eps_a - eps_r) + cfg_r * (eps_r - eps_b) + eps_b  # FADA eq. 9
    assert len(spy.guided) == 2 * steps  # two clips
    for rule, out in spy.guided:
        assert rule == "multi-cfg" and _constant(out) == pytest.approx(expected, abs=1e-5)
    assert all(c["batch"] == 3 for c in spy.calls)


@pytest.mark.parametrize("model, args, scale", [
    ("hallo", [], 3.5),
    ("hallo", ["--guidance-scale", 5.25], 5.25),
    ("echomimic", [], 2.5),
    ("echomimic", ["--guidance-scale", 1.75], 1.75),
])
def test_cfg_combines_the_branches_with_the_options_scale(render, monkeypatch, model, args, scale):
    spy = Spy(monkeypatch, stub=True)
    render("--model", model, "--steps", 1, "--face-box", ",".join(map(str, FACE_BOX)), "--no-face-embedding", *args)
    eps_u, eps_c = BRANCH[:2]
    expected = eps_u + scale * (eps_c - eps_u)  # classifier-free guidance
    assert spy.guided and all(rule == "cfg" for rule, _ in spy.guided)
    for _, out in spy.guided:
        assert _constant(out) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("args, scales", [([], (6.5, 2.0)), (["--guidance-audio", 4, "--guidance-ref", 1.25], (4.0, 1.25))])
def test_cfg_tokens_receive_the_options_scales(render, monkeypatch, args, scales):
    spy = Spy(monkeypatch, stub=True)
    render("--model", "fada", *args)
    assert len(spy.calls) == 2 * 6 and all(c["batch"] == 1 for c in spy.calls)
    assert {tuple(c["guidance_scales"]) for c in spy.calls} == {scales}


# ------------------------------------------------------------------ U-Net family: timesteps and starts
def _per_clip(spy, clips=2):
    n = len(spy.calls) // clips
    return [[c["t"] for c in spy.calls[i * n:(i + 1) * n]] for i in range(clips)]


def test_window_steps_set_the_perflow_timesteps(render, monkeypatch):
    spy = Spy(monkeypatch, stub=True)
    render("--model", "fada", "--window-steps", "3,1,1,1")
    # K = 4 windows [k/4, (k-1)/4] from t = 1; window 4 in 3 even steps, the others in 1; t -> int(1000 t)
    points = [1 - i / 12 for i in range(3)] + [0.75, 0.5, 0.25]
    expected = [int(1000 * p + 1e-9) for p in points]
    assert expected == [1000, 916, 833, 750, 500, 250]
    assert _per_clip(spy) == [expected, expected]


def _alphas_cumprod() -> np.ndarray:
    """SD1.5's scaled-linear schedule, written out: beta = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1 - betas)


@pytest.mark.parametrize("init, tau, first, second", [
    ("gaussian", 700, 999, 999),
    ("rolling", 700, 700, 700),
    ("combined-rolling", 700, 999, 700),
    ("combined-rolling", 420, 999, 420),
])
def test_init_and_start_timestep_reach_the_lcm_student(render, monkeypatch, init, tau, first, second):
    import avatar_cli.pipelines.unet as unet_module

    spy = Spy(monkeypatch, stub=True)
    noises = []
    initial = unet_module.initial_latents

    def record(mode, n, noise, *args, **kwargs):
        noises.append(noise.detach().clone())
        return initial(mode, n, noise, *args, **kwargs)

    monkeypatch.setattr(unet_module, "initial_latents", record)
    render("--model", "osa-lcm", "--init", init, "--start-timestep", tau)
    assert _per_clip(spy) == [[first], [second]]
    alphas = _alphas_cumprod()
    if first == 999:  # a gaussian start is the drawn noise itself
        torch.testing.assert_close(spy.calls[0]["sample"], noises[0], rtol=0, atol=0)
    if second == tau:
        # clip 1 starts from clip 0's result noised to tau: x = sqrt(a_tau) z_prev + sqrt(1 - a_tau) eps
        previous = _lcm_output(spy.calls[0], a_t=alphas[first])
        expected = math.sqrt(alphas[tau]) * previous + math.sqrt(1 - alphas[tau]) * noises[1].double()
        torch.testing.assert_close(spy.calls[1]["sample"].double(), expected, rtol=1e-4, atol=1e-4)
    else:
        torch.testing.assert_close(spy.calls[1]["sample"], noises[1], rtol=0, atol=0)


def _lcm_output(call, a_t: float) -> torch.Tensor:  # noqa: D401
    """One LCM step of the stub (eps = 1 everywhere) from ``call``'s latents at its t (eq. 1):
    x0 = (x - sqrt(1 - a) eps) / sqrt(a); f = c_skip x + c_out x0 with diffusers' LCM scalings
    (sigma_data 0.5, timestep_scaling 10)."""
    x, t = call["sample"].double(), call["t"]
    x0 = (x - math.sqrt(1 - a_t) * BRANCH[0]) / math.sqrt(a_t)
    scaled = 10.0 * t
    c_skip = 0.25 / (scaled ** 2 + 0.25)
    c_out = scaled / math.sqrt(scaled ** 2 + 0.25)
    return c_skip * x + c_out * x0


def test_start_timestep_cuts_the_ddim_schedule(render, monkeypatch):
    spy = Spy(monkeypatch, stub=True)
    render("--model", "teacher", "--steps", 4, "--init", "combined-rolling", "--start-timestep", 600)
    # SD1.5's DDIM, 'leading' spacing with steps_offset 1: 1000 // 4 = 250 -> 751, 501, 251, 1
    full = [751, 501, 251, 1]
    assert [c["t"] for c in spy.calls] == full + [t for t in full if t <= 600]


# ------------------------------------------------------------------ U-Net family: audio weights, face box
def test_audio_weights_reach_every_audio_attention_block(render, monkeypatch):
    from avatar_cli.models.audio_attention import AudioTransformerBlock

    seen = []
    forward = AudioTransformerBlock.forward

    def spy(block, hidden_states, audio_tokens, height, region_masks=None, region_scales=(1.0, 1.0, 1.0)):
        seen.append(tuple(region_scales))
        return forward(block, hidden_states, audio_tokens, height, region_masks, region_scales)

    monkeypatch.setattr(AudioTransformerBlock, "forward", spy)
    render("--model", "osa-lcm", "--audio-weights", "0.5,2,1.25")
    unet = next(p for k, p in _PIPES.items() if k[0] == "osa-lcm").models.denoising_unet
    blocks = sum(isinstance(m, AudioTransformerBlock) for m in unet.modules())
    assert blocks and len(seen) == 2 * blocks  # every block, both clips
    assert set(seen) == {(0.5, 2.0, 1.25)}  # (full, face, lip) in the docs' order: pose/background, face, lip


def test_audio_weights_scale_each_region_branch():
    """Inside the block: out(a, b, c) - out(0, 0, 0) = a B_full + b B_face + c B_lip, B_r measured
    with one region switched on at a time (with the feed-forward zeroed the block is linear in the
    weights), each branch its own region's masked attention."""
    from avatar_cli.models.audio_attention import REGIONS, AudioTransformerBlock

    torch.manual_seed(0)
    block = AudioTransformerBlock(32, 2, 16).eval()
    for name, p in block.named_parameters():
        with torch.no_grad():
            p.zero_() if name.startswith("ff.") else torch.nn.init.normal_(p, std=0.2)
    h = 4
    x, tokens = torch.randn(2, h * h, 32), torch.randn(2, 5, 16)
    masks = {r: (torch.rand(2, h * h) > 0.5).float() for r in REGIONS}
    with torch.no_grad():
        base = block(x, tokens, h, masks, (0.0, 0.0, 0.0))
        run = lambda s: block(x, tokens, h, masks, s) - base  # noqa: E731
        branches = [run(tuple(float(i == j) for j in range(3))) for i in range(3)]
        weights = (0.5, 2.0, 1.25)
        torch.testing.assert_close(run(weights), sum(w * b for w, b in zip(weights, branches)), rtol=1e-4, atol=1e-5)
        assert all(float(b.abs().max()) > 1e-3 for b in branches)
        # branch r is attention over the audio masked to region r (the mask's zero rows get only the zero-conv bias)
        for region, branch in zip(REGIONS, branches):
            normed = block.norm2(x + block.attn1(block.norm1(x)))
            out = block.audio_attn[region](normed, encoder_hidden_states=tokens) * masks[region][:, :, None]
            out = out.transpose(1, 2).reshape(2, 32, h, h)
            torch.testing.assert_close(branch, block.zero_conv[region](out).reshape(2, 32, h * h).transpose(1, 2),
                                       rtol=1e-4, atol=1e-5)


def test_face_box_reaches_the_hallo_face_conditions_in_frame_pixels(render, monkeypatch):
    from avatar_cli.pipelines.unet import UNetPipeline

    seen = []
    face_conditions = UNetPipeline.face_conditions

    def spy(pipe, image, opts, face_box=None, lip_box=None, side=None):
        seen.append((face_box, side))
        return face_conditions(pipe, image, opts, face_box, lip_box, side)

    monkeypatch.setattr(UNetPipeline, "face_conditions", spy)
    Spy(monkeypatch, stub=True)
    render("--model", "hallo", "--steps", 1, "--no-face-embedding", "--face-box", ",".join(map(str, FACE_BOX)))
    # 320x240 -> --fit crop: the centre 240x240 (40 px off the left), then x 64/240 to --size 64
    x, y, w, h = FACE_BOX
    s = 64 / 240
    assert len(seen) == 1 and seen[0][0] == pytest.approx(((x - 40) * s, y * s, w * s, h * s))
    assert seen[0][1] == 240  # the masks are drawn on the 240 px square in the file's pixels (docs/hallo.md)


def test_face_box_reaches_echomimics_face_rule_in_frame_pixels(render, monkeypatch):
    """--face-box with --model echomimic-acc: EchoMimic's face rule gets the box in frame pixels (the
    same mapping as Hallo's), and its face-locator mask is 1 at the box's centre and 0 in the crop's
    corner (mask = box dilated by 0.1, crop = box dilated by 0.5: the corner lies outside the mask)."""
    import avatar_cli.media.face as face_module

    seen = []
    rule = face_module.echomimic_face

    def spy(image, face_box=None, **kwargs):
        out = rule(image, face_box, **kwargs)
        seen.append((face_box, out))
        return out

    monkeypatch.setattr(face_module, "echomimic_face", spy)
    Spy(monkeypatch, stub=True)
    render("--model", "echomimic-acc", "--steps", 1, "--face-box", ",".join(map(str, FACE_BOX)))
    x, y, w, h = FACE_BOX
    s = 64 / 240  # 320x240 -> the centre 240x240 (40 px off the left) -> 64 px
    assert len(seen) == 1 and seen[0][0] == pytest.approx(((x - 40) * s, y * s, w * s, h * s))
    face = seen[0][1]
    assert face.source == "face-box option"
    mask = face.mask_image[0]
    assert float(mask[32, 32]) == 1.0 and float(mask[0, 0]) == 0.0


@pytest.fixture(scope="module")
def ditto():
    from avatar_cli.pipelines.ditto import DittoPipeline

    pipe = DittoPipeline.from_preset("tiny", device="cpu", seed=0)
    pipe.warn = lambda message: None
    return pipe


def _ditto_options(**values):
    """RenderOptions as ``avatar render --model ditto`` builds them from its option values."""
    from avatar_cli.render_options import build

    return build({"model": "ditto", **values})


def test_face_box_reaches_dittos_crop_in_portrait_pixels(ditto, media, tmp_path, monkeypatch):
    from avatar_cli.options import prepare_job
    from avatar_cli.pipelines.base import RenderStats
    from avatar_cli.pipelines.ditto import DittoPipeline

    seen = []
    source_state = DittoPipeline.source_state

    def spy(pipe, image, face_box=None):
        seen.append((image.shape, face_box))
        return source_state(pipe, image, face_box)

    monkeypatch.setattr(DittoPipeline, "source_state", spy)
    options = _ditto_options(face_box=",".join(map(str, FACE_BOX)))
    job = prepare_job(media / "portrait.png", media / "speech.wav", tmp_path / "talk.mp4", options)
    ditto.prepare(job, RenderStats.of(ditto))
    # Ditto renders at the portrait's own size: the box as given, on the 240x320 portrait
    assert [(shape, tuple(map(float, box))) for shape, box in seen] == [((240, 320, 3), tuple(map(float, FACE_BOX)))]


@pytest.mark.parametrize("values, scale", [({}, 2.0), ({"guidance_scale": 3.25}, 3.25), ({"guidance_scale": 1.0}, 1.0)])
def test_ditto_cfg_scale_reaches_the_window_sampler(ditto, media, monkeypatch, values, scale):
    """The DiT's two calls per step are stubbed (unconditional: 0.25, conditional: 1.0 everywhere);
    with one DDIM step the sampler's x0 is the guided prediction, unc + s (con - unc)."""
    import avatar_cli.pipelines.ditto as ditto_module
    from avatar_cli.media.image import load_source
    from avatar_cli.models.motion_dit import MotionDecoder
    from avatar_cli.pipelines.base import RenderStats

    def fake_forward(dit, x, cond_frame, cond, t, drop_cond=False):
        return torch.full_like(x, 0.25 if drop_cond else 1.0)

    results = []
    sampler = ditto_module.sample_motion_ddim

    def spy(denoise, x_T, noises, steps, *rest, **kwargs):
        out = sampler(denoise, x_T, noises, steps, *rest, **kwargs)
        results.append((steps, out.detach().clone()))
        return out

    source = ditto.source_state(load_source(media / "portrait.png"), FACE_BOX)
    monkeypatch.setattr(MotionDecoder, "forward", fake_forward)
    monkeypatch.setattr(ditto_module, "sample_motion_ddim", spy)
    features = np.random.default_rng(3).standard_normal((30, 1024)).astype(np.float32)
    stats = RenderStats.of(ditto)
    ditto.motion(features, source, _ditto_options(steps=1, **values), stats)
    assert len(results) == 1 and stats.evaluations == 2
    steps, x0 = results[0]
    assert steps == 1 and _constant(x0) == pytest.approx(0.25 + scale * (1.0 - 0.25), abs=1e-6)


# ------------------------------------------------------------------ avatar eval --face-box
def test_eval_face_box_sets_syncnet_python_crop_window(tmp_path, monkeypatch, capsys, test_data):
    """--face-box x,y,w,h: every frame is cut at syncnet_python's window for that box, computed here
    from crop_video's rule (s = max(w, h) / 2, pad = int(s (1 + 2 cs)), cs = 0.4)."""
    import avatar_cli.eval.face_track as face_track
    from avatar_cli.eval.syncnet import SyncNetV2
    from avatar_cli.media.video import VideoWriter
    from tests.eval.syncnet_inputs import random_state

    shapes = {k: tuple(v.shape) for k, v in SyncNetV2().state_dict().items()}
    checkpoint = tmp_path / "syncnet_v2.model"
    torch.save({k: torch.from_numpy(v) for k, v in random_state(shapes, 1).items()}, checkpoint)
    video = tmp_path / "talk.mp4"
    frames = np.random.default_rng(0).integers(0, 256, (8, 64, 96, 3), dtype=np.uint8)
    with VideoWriter(video, (96, 64), 25, audio_path=test_data / "speech_espeak.wav") as writer:
        writer.write(frames)
    windows = []
    crop = face_track.crop_bgr
    monkeypatch.setattr(face_track, "crop_bgr", lambda frame, window: (windows.append(np.asarray(window)),
                                                                        crop(frame, window))[1])
    for var in ("AVATAR_HOME", "AVATAR_WEIGHTS_DIR", "HF_HUB_CACHE"):
        monkeypatch.setenv(var, str(tmp_path / var))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    x, y, w, h = 30, 10, 24, 36
    assert main(["eval", str(video), "--syncnet", str(checkpoint), "--face-box", f"{x},{y},{w},{h}", "--json", "-q",
                 "--device", "cpu"]) == 0, capsys.readouterr().err
    s = max(w, h) / 2
    pad = int(s * 1.8)
    cy, cx = y + h / 2 + pad, x + w / 2 + pad
    expected = [pad, int(cy - s), int(cy + s * 1.8), int(cx - s * 1.4), int(cx + s * 1.4)]
    assert len(windows) == 8 and all(list(win) == expected for win in windows)
