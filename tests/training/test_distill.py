"""The trainings end to end at tiny scale: synthetic talking videos -> ``avatar data prepare`` ->
a tiny teacher -> OSA-LCM and FADA students that must get measurably closer to the teacher's
25-step output than the teacher's own 1- / 6-step output; checkpoints, ``--resume``, data parallel
with ``accelerate launch``, and the student rendering through ``avatar render --weights``.

Closeness is measured on held-out clips (a video not trained on) with fixed noises, as the mean
squared latent difference to the teacher's 25-step DDIM solution with 3-way multi-CFG (6.5, 2.5)
from t = 999 (trailing spacing: the same start as the students' one-step and PeRFlow samplers).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from avatar_cli.cli import main
from avatar_cli.models.bundle import AvatarModels
from avatar_cli.sampling.guidance import GuidedDenoiser
from avatar_cli.sampling.methods import METHODS, sample
from avatar_cli.training.conditioning import Conditioner
from avatar_cli.training.data import ClipDataset
from avatar_cli.training.fada import FADAConfig
from avatar_cli.training.osa_lcm import LCMConfig, LCMStep
from avatar_cli.training.recipes import distill_fada, distill_osa_lcm, train_teacher
from avatar_cli.training.trainer import TrainConfig, checkpoints

from ..conftest import probe
from .synthetic import make_video

CLIP = 8          # frames per training clip
TEACHER_STEPS = 300
STUDENT_STEPS = 100


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """Five synthetic videos -> a training set (4 videos) and a held-out set (1), through the CLI."""
    root = tmp_path_factory.mktemp("synthetic")
    videos = [make_video(root / f"talk{i}.mp4", 4.0, seed=i) for i in range(5)]
    common = ["--random-weights", "--arch", "tiny", "--size", "64", "--device", "cpu", "-q"]
    assert main(["data", "prepare", *map(str, videos[:4]), "-o", str(root / "data"), *common]) == 0
    assert main(["data", "prepare", str(videos[4]), "-o", str(root / "heldout"), *common]) == 0
    return root


@pytest.fixture(scope="session")
def teacher(synthetic):
    """A tiny teacher trained for a few hundred steps on the synthetic set (its weights folder)."""
    out = synthetic / "teacher"
    summary = train_teacher(AvatarModels.from_preset("tiny"), synthetic / "data",
                            TrainConfig(out, max_steps=TEACHER_STEPS, learning_rate=1e-3, checkpoint_every=0,
                                        progress=False), clip_frames=CLIP)
    assert summary["steps"] == TEACHER_STEPS
    return out / "weights"


def test_teacher_training_loss_falls(teacher):
    """The session's teacher (TEACHER_STEPS steps at lr 1e-3): the denoising loss of its last fifth of
    steps is well below that of its first fifth (each a mean over 60 steps of random t)."""
    rows = [json.loads(line) for line in (teacher.parent / "metrics.jsonl").read_text().splitlines()]
    losses = [r["denoise"] for r in rows]
    assert len(losses) == TEACHER_STEPS
    fifth = TEACHER_STEPS // 5
    first, last = sum(losses[:fifth]) / fifth, sum(losses[-fifth:]) / fifth
    assert last < 0.7 * first, (first, last)


def test_prepare_writes_index_and_shards(synthetic):
    lines = [json.loads(line) for line in (synthetic / "data" / "index.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and {line["quality"] for line in lines} == {"high"}
    assert all(line["frames"] == 100 for line in lines)          # 4 s at 25 fps
    from safetensors.torch import load_file
    shard = load_file(synthetic / "data" / lines[0]["shard"])
    assert tuple(shard["latents"].shape) == (100, 4, 8, 8)        # 64 px -> 8 x 8 latents
    assert shard["audio"].shape[0] == 100
    # resumable: a second run skips what is there; a bad video is reported and skipped (exit 1)
    bad = synthetic / "broken.mp4"
    bad.write_bytes(b"not a video")
    code = main(["data", "prepare", str(synthetic / "talk0.mp4"), str(bad), "-o", str(synthetic / "data"),
                 "--random-weights", "--arch", "tiny", "--size", "64", "--device", "cpu", "-q"])
    assert code == 1
    assert len((synthetic / "data" / "index.jsonl").read_text().splitlines()) == 4


class _HeldOut:
    """Fixed held-out clips, noises and the teacher's 25-step references."""

    def __init__(self, root, teacher_dir, n=6):
        self.teacher = AvatarModels.from_pretrained(teacher_dir)
        self.conditioner = Conditioner(self.teacher, torch.device("cpu"), torch.float32)
        data = ClipDataset(root / "heldout", CLIP, self.teacher.denoising_unet.config.num_motion_frames)
        self.cases = []
        for i in range(n):
            example = data.sample(torch.Generator().manual_seed(1000 + i))
            cond = self.conditioner(example)
            null = self.conditioner.null(cond)
            noise = torch.randn(example["latents"].shape, generator=torch.Generator().manual_seed(i))
            reference = self.run(self.teacher.denoising_unet, "teacher", 25, "multi-cfg", (6.5, 2.5), cond, null, noise,
                                 spacing="trailing")
            self.cases.append((cond, null, noise, reference))

    def run(self, unet, method, steps, rule, scales, cond, null, noise, spacing=None):
        config = dict(self.teacher.scheduler_config)
        if spacing:
            config["timestep_spacing"] = spacing
        scheduler = METHODS[method].make_scheduler(config)
        METHODS[method].set_timesteps(scheduler, steps)
        with torch.no_grad():
            return sample(GuidedDenoiser(unet, cond, rule, scales, null), noise.clone(), scheduler,
                          torch.Generator().manual_seed(0))

    def mse(self, unet, method, steps, rule, scales=(), spacing=None) -> float:
        errors = [float(((self.run(unet, method, steps, rule, scales, c, n, x, spacing) - ref) ** 2).mean())
                  for c, n, x, ref in self.cases]
        return sum(errors) / len(errors)


@pytest.fixture(scope="session")
def held_out(synthetic, teacher):
    return _HeldOut(synthetic, teacher)


def test_osa_lcm_student_is_closer_to_the_teacher_than_the_teachers_own_one_step(synthetic, teacher, held_out):
    out = synthetic / "adv-lcm"
    summary = distill_osa_lcm(teacher, synthetic / "data",
                              TrainConfig(out, max_steps=STUDENT_STEPS, learning_rate=1e-4, disc_learning_rate=1e-3,
                                          lr_decay_at=0.5, lr_decay=0.5, checkpoint_every=50, progress=False),
                              stage="adv-lcm", lcm=LCMConfig(skip=100), clip_frames=CLIP)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STUDENT_STEPS + 1))
    for key in ("distance", "adversarial", "motion", "disc_loss", "disc_accuracy", "disc_noise_max", "lr", "disc_lr"):
        assert key in rows[-1]
    assert rows[0]["disc_noise_max"] == 500 and rows[-1]["disc_noise_max"] < 110   # eq. 6: falls to 100
    # the paper's schedule shape: the first half at the rate, the second at half of it (3e-6 -> 1.5e-6)
    rates = [r["lr"] for r in rows]
    assert rates[0] == pytest.approx(1e-4) and rates[-1] == pytest.approx(5e-5)
    assert abs(sum(r == pytest.approx(1e-4) for r in rates) - STUDENT_STEPS // 2) <= 1
    student = AvatarModels.from_pretrained(out / "weights")
    assert student.settings.default_method == "osa-lcm"
    # only the temporal modules trained
    base = held_out.teacher.denoising_unet.state_dict()
    changed = {k for k, v in student.denoising_unet.state_dict().items() if not torch.equal(v, base[k])}
    assert changed and all(".motion_modules." in k for k in changed)
    teacher_one_step = held_out.mse(held_out.teacher.denoising_unet, "osa-lcm", 1, "none")
    student_one_step = held_out.mse(student.denoising_unet, "osa-lcm", 1, "none")
    print(f"\nOSA-LCM (Adv-LCM, {STUDENT_STEPS} steps): 1-step MSE to teacher-25: "
          f"teacher {teacher_one_step:.4f}, student {student_one_step:.4f}")
    assert student_one_step < 0.8 * teacher_one_step
    assert summary["replicas_identical"]

    # stage 2, EFT, from the Adv-LCM student: clip n noised to t >= 800 predicts clip n+1
    eft = distill_osa_lcm(teacher, synthetic / "data",
                          TrainConfig(synthetic / "eft", max_steps=3, learning_rate=1e-5, checkpoint_every=0,
                                      progress=False),
                          stage="eft", init=out / "weights", clip_frames=CLIP)
    assert eft["last"]["t"] >= 800 and (synthetic / "eft" / "weights" / "denoising_unet").is_dir()


def test_fada_student_is_closer_to_the_teacher_than_the_teachers_own_six_steps(synthetic, teacher, held_out,
                                                                               test_data):
    out = synthetic / "fada"
    distill_fada(teacher, synthetic / "data",
                 TrainConfig(out, max_steps=STUDENT_STEPS, learning_rate=1e-5, checkpoint_every=0, progress=False),
                 fada=FADAConfig(solver_steps=4), clip_frames=CLIP)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("teacher_loss", "gt_loss", "R", "W", "cfg_audio", "cfg_ref", "window", "samples_per_s"):
        assert key in rows[-1]
    assert all(4.5 <= r["cfg_audio"] <= 8.5 and 1.5 <= r["cfg_ref"] <= 3.0 for r in rows)
    assert {r["window"] for r in rows} == {1.0, 2.0, 3.0, 4.0}
    student = AvatarModels.from_pretrained(out / "weights")
    assert student.settings.default_method == "fada" and student.denoising_unet.config.cfg_tokens == 4
    t = held_out.teacher.denoising_unet
    # the teacher's own 6 steps: DDIM with multi-CFG (NFE 18), and PeRFlow at the student's cost (NFE 6)
    teacher_ddim = held_out.mse(t, "teacher", 6, "multi-cfg", (6.5, 2.5))
    teacher_perflow = held_out.mse(t, "fada", 6, "none")
    student_six = held_out.mse(student.denoising_unet, "fada", 6, "cfg-tokens", (6.5, 2.5))
    print(f"\nFADA ({STUDENT_STEPS} steps): 6-step MSE to teacher-25: teacher DDIM-6 multi-CFG {teacher_ddim:.4f}, "
          f"teacher PeRFlow-6 {teacher_perflow:.4f}, student {student_six:.4f}")
    assert student_six < 0.9 * teacher_perflow
    assert student_six < teacher_ddim
    # and the student renders through the command line with its CFG tokens (NFE 6)
    video = synthetic / "fada.mp4"
    assert main(["render", str(test_data / "astronaut.png"), str(synthetic / "talk4.mp4"), "--weights",
                 str(out / "weights"), "--model", "fada", "--size", "64", "-o", str(video), "--overwrite", "-q",
                 "--device", "cpu"]) == 0
    assert probe(video)["frames"] == 100


def test_distilled_student_renders_with_avatar_render(synthetic, teacher, test_data, tmp_path):
    weights = synthetic / "adv-lcm" / "weights"
    if not weights.is_dir():  # run alone (or before the distillation test): distil a student of its own
        distill_osa_lcm(teacher, synthetic / "data",
                        TrainConfig(tmp_path / "student", max_steps=2, learning_rate=1e-4, checkpoint_every=0,
                                    progress=False), stage="adv-lcm", lcm=LCMConfig(skip=100), clip_frames=CLIP)
        weights = tmp_path / "student" / "weights"
    out = tmp_path / "talk.mp4"
    code = main(["render", str(test_data / "astronaut.png"), str(synthetic / "talk4.mp4"), "--weights", str(weights),
                 "--size", "64", "-o", str(out), "-q", "--device", "cpu"])
    assert code == 0
    info = probe(out)
    assert (info["width"], info["height"], info["fps"]) == (64, 64, 25.0)
    assert info["frames"] == 100 and info["audio_codec"] == "aac"


def test_interrupt_and_resume_give_the_same_next_loss(synthetic, teacher, monkeypatch):
    def config(out, resume=False):
        return TrainConfig(out, max_steps=4, learning_rate=1e-4, disc_learning_rate=1e-3, checkpoint_every=2,
                           resume=resume, progress=False)

    run = lambda out, resume=False: distill_osa_lcm(teacher, synthetic / "data", config(out, resume),  # noqa: E731
                                                     lcm=LCMConfig(skip=100), clip_frames=CLIP)
    straight = synthetic / "straight"
    run(straight)
    expected = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]

    original = LCMStep.generator_step

    def interrupted(self, student, example, generator, step):
        if step == 2:
            raise KeyboardInterrupt
        return original(self, student, example, generator, step)

    broken = synthetic / "broken-run"
    monkeypatch.setattr(LCMStep, "generator_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(broken)
    monkeypatch.setattr(LCMStep, "generator_step", original)
    assert [p.name for p in checkpoints(broken)] == ["step-2"]
    assert (broken / "checkpoints" / "step-2" / "weights" / "denoising_unet").is_dir()
    assert not (broken / "weights").exists()

    summary = run(broken, resume=True)
    assert summary["resumed_from"] == 2
    resumed = [json.loads(line) for line in (broken / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for want, got in zip(expected[2:], resumed[2:]):
        for key in ("loss", "distance", "motion", "disc_loss"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    a = AvatarModels.from_pretrained(straight / "weights").denoising_unet.state_dict()
    b = AvatarModels.from_pretrained(broken / "weights").denoising_unet.state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)
    # a run folder is not overwritten by accident
    assert main(["distill", "osa-lcm", "--teacher", str(teacher), "--data", str(synthetic / "data"),
                 "-o", str(broken), "--cpu", "-q"]) == 2


def test_train_teacher_command_with_bf16_and_gradient_checkpointing(synthetic):
    out = synthetic / "teacher-cli"
    # a process of its own: accelerate keeps one mixed precision per process (the other tests use "no")
    done = subprocess.run([sys.executable, "-m", "avatar_cli", "train", "teacher", "--arch", "tiny",
                           "--data", str(synthetic / "data"), "-o", str(out), "--max-steps", "2",
                           "--clip-frames", str(CLIP), "--mixed-precision", "bf16", "--gradient-checkpointing",
                           "--checkpoint-every", "1", "--keep-checkpoints", "1", "--json", "-q"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["last"]["lr"] == 1e-5
    assert [p.name for p in checkpoints(out)] == ["step-2"]                   # older ones deleted
    assert AvatarModels.from_pretrained(out / "weights").settings.default_method == "teacher"
    # bad options: one line, exit 2
    assert main(["train", "teacher", "--data", str(synthetic / "data"), "-o", str(synthetic / "x"),
                 "--drop", "1.5"]) == 2
    assert main(["distill", "fada", "--teacher", str(synthetic / "nowhere"), "--data", str(synthetic / "data"),
                 "-o", str(synthetic / "y")]) == 2


def test_processes_draw_different_examples():
    from avatar_cli.training.trainer import _example_seed
    seeds = {_example_seed(0, step, micro, rank) for step in range(50) for micro in range(2) for rank in range(4)}
    assert len(seeds) == 50 * 2 * 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", [
    ["distill", "osa-lcm", "--teacher", "{teacher}", "--skip", "100"],
    ["distill", "osa-lcm", "--teacher", "{teacher}", "--stage", "eft", "--init-weights", "{teacher}"],
    ["distill", "fada", "--teacher", "{teacher}", "--solver-steps", "1"],
    ["train", "teacher", "--init-weights", "{teacher}"],
])
def test_accelerate_launch_two_processes_end_with_identical_weights(synthetic, teacher, command):
    out = synthetic / f"ddp-{'-'.join(command[1:2] + command[5:6])}"
    command = [str(teacher) if a == "{teacher}" else a for a in command]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # torchrun-style launch of 2 processes; on a machine without CUDA accelerate runs them as
    # multi-CPU data parallel over gloo ('accelerate launch --cpu' alone would need MPI)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "avatar_cli", *command,
           "--data", str(synthetic / "data"), "-o", str(out), "--max-steps", "3", "--lr", "1e-3",
           "--clip-frames", str(CLIP), "--cpu", "--json", "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1                                  # one report, from rank 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and len(summary["replica_checksums"]) == 2
    assert summary["replicas_identical"]
    assert summary["steps"] == 3
    assert AvatarModels.from_pretrained(out / "weights").denoising_unet is not None
