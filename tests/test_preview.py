"""``--preview``: each family's fast settings, the calibration's arithmetic, the choice of the fastest
candidate, the calibration kept between runs, and the CLI end to end with random tiny weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import avatar_cli.preview as preview
from avatar_cli.bench import synthetic_portrait, synthetic_speech
from avatar_cli.cli import main
from avatar_cli.options import RenderJob, RenderOptions
from avatar_cli.pipelines.base import Pipeline
from avatar_cli.pipelines.ditto import DittoPipeline
from avatar_cli.pipelines.unet import UNetPipeline
from tests.conftest import probe


def test_unet_preview_settings_keep_what_the_user_set(tmp_path):
    opts, said = UNetPipeline.preview_options(RenderOptions(model="hallo"), frozenset(), weights=None)
    assert (opts.size, opts.decoder, opts.steps) == (256, "taesd", 10) and "10 DDIM steps" in said
    kept, _ = UNetPipeline.preview_options(RenderOptions(model="hallo", size=384, num_inference_steps=20),
                                           frozenset({"size", "num_inference_steps"}), weights=None)
    assert (kept.size, kept.steps, kept.decoder) == (384, 20, "taesd")
    # installed weights without TAESD beside them or in the cache: the VAE stays
    (tmp_path / "w").mkdir()
    monkey = RenderOptions(model="osa-lcm")
    no_taesd, _ = UNetPipeline.preview_options(monkey, frozenset(), weights=tmp_path / "w")
    assert no_taesd.decoder == "vae" and no_taesd.steps == 1  # LCM's one step is not touched
    (tmp_path / "w" / "taesd").mkdir()
    with_taesd, _ = UNetPipeline.preview_options(monkey, frozenset(), weights=tmp_path / "w")
    assert with_taesd.decoder == "taesd"


def test_ditto_preview_takes_five_dit_steps_unless_given():
    opts, said = DittoPipeline.preview_options(RenderOptions(model="ditto"))
    assert opts.steps == 5 and said == "5 DiT steps"
    kept, _ = DittoPipeline.preview_options(RenderOptions(model="ditto", num_inference_steps=8),
                                            frozenset({"num_inference_steps"}))
    assert kept.steps == 8


class Clocked(Pipeline):
    """A family whose stages cost known seconds: 0.5 s per denoiser evaluation, 0.1 s per frame
    decoded, 2 s of per-portrait work in prepare; the calibration must extrapolate exactly."""

    family = "unet"
    stages = ("reference", "audio", "sampling", "decode", "write")

    def __init__(self):
        import torch

        super().__init__(torch.device("cpu"), torch.float32)
        self.probes = []

    def prepare(self, job, stats):
        stats.stages["reference"] += 2.0
        return {}

    def generate(self, image, waveform, options=None, *, on_progress=None, stats=None, **inputs):
        frames = int(round(waveform.shape[0] / 16000 * options.fps))
        self.probes.append((options.steps, frames))
        stats.evaluations += options.sampling.nfe(options.steps)
        stats.stages["sampling"] += 0.5 * options.sampling.nfe(options.steps)
        stats.stages["decode"] += 0.1 * frames
        yield np.zeros((frames, 8, 8, 3), np.uint8)


def test_calibration_extrapolates_per_evaluation_time_to_the_real_steps():
    pipe = Clocked()
    opts = RenderOptions(model="hallo", num_inference_steps=10, fps=25, clip_frames=16)  # CFG: 2 branches
    job = RenderJob(np.zeros((64, 64, 3), np.uint8), np.zeros(16000, np.float32), Path("-"), Path("-"), opts)
    got = pipe.calibrate(job, opts)
    assert pipe.probes == [(1, 16)]  # one clip, at the method's fewest steps
    clips_per_second = 25 / 16
    expected = 0.5 * (10 * 2) * clips_per_second + 0.1 * 25  # sampling + decode per video second
    assert got["seconds_per_video_second"] == pytest.approx(expected)
    assert got["per_evaluation_s"] == pytest.approx(0.5) and got["once_s"] == pytest.approx(2.0)


class Candidate:
    def __init__(self, rtf, loads):
        self.rtf, self.loads = rtf, loads
        self.device = "cpu"

    def calibrate(self, job, options):
        return {"seconds_per_video_second": self.rtf, "once_s": 1.0, "per_evaluation_s": 0.1, "probe_wall_s": 0.2}


def test_the_fastest_candidate_wins_and_the_calibration_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("AVATAR_HOME", str(tmp_path))
    rtfs = {"ditto": 3.0, "hallo": 40.0}
    loads = []

    def load(model):
        loads.append(model)
        return Candidate(rtfs[model], loads)

    def job_for(options):
        return RenderJob(np.zeros((64, 64, 3), np.uint8), np.zeros(32000, np.float32), Path("-"), Path("-"), options)

    plan = preview.plan_preview(["hallo", "ditto"], job_for, load, RenderOptions())
    assert plan.chosen.model == "ditto" and plan.job.options.model == "ditto" and plan.job.options.steps == 5
    assert [c.model for c in plan.candidates] == ["ditto", "hallo"] and not plan.chosen.cached
    assert plan.expected_wall_s() == pytest.approx(1.0 + 3.0 * 2.0)  # once + RTF x 2 s of speech
    assert loads == ["hallo", "ditto"]  # both measured; the winner's pipeline kept, not loaded again
    assert "fastest here; hallo 40 s per video second" in preview.describe_plan(plan)
    # the next preview reads the kept calibration: only the winner is loaded
    loads.clear()
    again = preview.plan_preview(["hallo", "ditto"], job_for, load, RenderOptions())
    assert again.chosen.model == "ditto" and again.chosen.cached and loads == ["ditto"]
    assert len(json.loads(preview.cache_path().read_text())) == 2
    loads.clear()
    preview.plan_preview(["hallo", "ditto"], job_for, load, RenderOptions(), recalibrate=True)
    assert loads == ["hallo", "ditto"]


def test_cli_preview_renders_and_reports_the_expected_time(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AVATAR_HOME", str(tmp_path / "home"))
    synthetic_portrait(tmp_path / "face.png", 128)
    synthetic_speech(tmp_path / "speech.wav", 0.32)
    args = ["render", str(tmp_path / "face.png"), str(tmp_path / "speech.wav"), "--random-weights", "--arch", "tiny",
            "--size", "64", "--clip-frames", "4", "--device", "cpu", "--preview", "--json", "--overwrite",
            "-o", str(tmp_path / "out.mp4")]
    assert main(args) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    plan = result["preview"]
    assert plan["model"] == "osa-lcm" and plan["size"] == 64 and plan["decoder"] == "taesd"  # --size kept
    assert plan["expected_rtf"] > 0 and not plan["cached"]
    assert "--preview: osa-lcm with TAESD decoder" in out.err and "per video second" in out.err
    info = probe(tmp_path / "out.mp4")
    assert (info["frames"], info["width"], info["audio_streams"]) == (8, 64, 1)
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["preview"]["cached"]


def test_cli_preview_refuses_what_it_cannot_do(tmp_path, capsys):
    synthetic_portrait(tmp_path / "face.png", 64)
    synthetic_speech(tmp_path / "speech.wav", 0.2)
    base = ["render", str(tmp_path / "face.png"), str(tmp_path / "speech.wav"), "--random-weights"]
    assert main([*base, "--recalibrate"]) == 2
    assert "--recalibrate applies to --preview" in capsys.readouterr().err
    assert main([*base, "--preview", "--stream", "-o", str(tmp_path / "s.mp4")]) == 2
    assert "--preview does not apply to --stream" in capsys.readouterr().err
    assert not (tmp_path / "s.mp4").exists()


def test_ditto_calibration_counts_windows_not_frames(tmp_path):
    from avatar_cli.media.image import load_source

    pipe = DittoPipeline.from_preset("tiny", device="cpu", seed=0)
    pipe.warn = lambda message: None
    image = load_source(synthetic_portrait(tmp_path / "p.png", 128))
    opts = RenderOptions(model="ditto", num_inference_steps=4)
    job = RenderJob(image, np.zeros(16000, np.float32), Path("-"), Path("-"), opts, face_box=(32, 32, 64, 64))
    got = pipe.calibrate(job, opts)
    window = pipe.models.dit.null_cond_embed.shape[1]
    overlap = pipe.controls(opts, quiet=True).overlap
    assert pipe.sampling_units_per_second(opts) == pytest.approx(25 / (window - overlap))
    # the probe sampled one window at 1 step (2 guided evaluations); the estimate is for 4 steps
    assert got["per_evaluation_s"] > 0 and got["once_s"] > 0
    assert got["seconds_per_video_second"] > got["per_evaluation_s"] * 8 * 25 / (window - overlap)


def test_echomimic_calibration_counts_context_windows(tmp_path):
    """EchoMimic denoises the whole video over 12-frame windows overlapping by 3: 25 / 9 windows per
    video second; the probe's prepare() crops the portrait (its "image" goes to generate)."""
    from avatar_cli.media.image import load_portrait
    from avatar_cli.pipelines import load_pipeline

    pipe = load_pipeline("echomimic-acc", random_weights=True, arch="tiny", device="cpu")
    pipe.warn = lambda message: None
    opts = RenderOptions(model="echomimic-acc", size=64)
    image = load_portrait(synthetic_portrait(tmp_path / "p.png", 64), 64, "crop")
    job = RenderJob(image, np.zeros(16000, np.float32), Path("-"), Path("-"), opts, face_box=(16, 12, 32, 40))
    got = pipe.calibrate(job, opts)
    assert pipe.sampling_units_per_second(opts) == pytest.approx(25 / 9)
    assert got["per_evaluation_s"] > 0
    assert got["seconds_per_video_second"] >= got["per_evaluation_s"] * 6 * 25 / 9  # 6 steps a window
