"""Progress from the first second (issue 23): the events of a render of each family, the time left
from the first measured step, the CLI's display, the notes and the times reported."""

import json
import logging
import warnings

import numpy as np
import pytest

from avatar_cli.cli import main
from avatar_cli.progress import STAGES, CountedDenoiser, Progress
from tests.conftest import ffmpeg


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_time_left_from_the_first_measured_step_and_partial_until_a_stage_ahead_has_a_pace():
    clock = FakeClock()
    events = []
    progress = Progress(events.append, clock=clock)
    progress.stage("audio features")
    assert events[-1].seconds_left is None
    progress.expect("frames", 100, "frames")
    clock.now += 2.0
    progress.stage("motion", 40, "evaluations")
    clock.now += 3.0  # 2 evaluations in 3 s: 1.5 s each, 38 to go
    progress.advance(2)
    event = events[-1]
    assert event.stage == "motion" and (event.done, event.total, event.unit) == (2, 40, "evaluations")
    assert event.seconds_left == pytest.approx(1.5 * 38) and event.partial  # the frames' pace is not known yet
    assert event.elapsed_s == pytest.approx(5.0)
    clock.now += 57.0
    progress.advance(38)
    progress.stage("frames")  # the declared total is kept
    clock.now += 4.0
    progress.advance(8)
    progress.frames(8, 100)
    event = events[-1]
    assert (event.done, event.total, event.unit) == (8, 100, "frames") and (event.frames_done, event.frames_total) == (8, 100)
    assert event.seconds_left == pytest.approx(0.5 * 92) and not event.partial


def test_a_kept_calibration_gives_the_time_left_before_anything_is_measured():
    clock = FakeClock()
    progress = Progress(clock=clock)
    progress.stage("models")
    clock.now += 10.0
    progress.expect_seconds(60.0)  # e.g. --preview's expected_wall_s, from now
    clock.now += 15.0
    progress.stage("motion", 10, "evaluations")
    assert progress.seconds_left() == (pytest.approx(45.0), False)
    progress.expect("frames", 50, "frames")
    clock.now += 1.0
    progress.advance(1)  # measured 9 s of motion left, the frames unknown: the calibration's 44 s is larger
    assert progress.seconds_left() == (pytest.approx(44.0), False)


def test_counted_denoiser_advances_by_the_evaluations_each_call_makes():
    class Guided:
        evaluations = 0

        def __call__(self, x, t):
            self.evaluations += 2  # CFG: a batch of two
            return x

    progress = Progress()
    progress.stage("sampling", 10, "evaluations")
    counted = CountedDenoiser(Guided(), progress)
    for t in range(3):
        counted(np.zeros(1), t)
    assert progress.current.done == 6 == counted.evaluations


def _wav(tmp_path, test_data, seconds):
    speech = tmp_path / "s.wav"
    ffmpeg("-i", str(test_data / "speech_espeak_48k.wav"), "-t", str(seconds), "-ar", "16000", str(speech))
    return speech


@pytest.mark.parametrize("model,options,stage", [
    ("ditto", {"num_inference_steps": 3}, "motion"),
    ("osa-lcm", {"size": 64}, "sampling"),
    ("hallo", {"size": 64, "num_inference_steps": 2, "face_box": (90, 35, 50, 55), "face_embedding": "none"},
     "sampling"),
    ("echomimic-acc", {"size": 64, "num_inference_steps": 3, "face_box": (90, 35, 50, 55)}, "sampling"),
])
def test_progress_events_of_a_tiny_render_of_each_family(tmp_path, test_data, model, options, stage):
    """Stages in order, the totals right (evaluations = the render's count, frames = the video's),
    and a time left that is there before the first chunk of frames is complete."""
    from avatar_cli.options import RenderOptions, prepare_job
    from avatar_cli.pipelines import load_pipeline

    pipe = load_pipeline(model, random_weights=True, arch="tiny", device="cpu")
    pipe.warn = lambda message: None
    job = prepare_job(test_data / "astronaut.png", _wav(tmp_path, test_data, 0.7), tmp_path / "o.mp4",
                      RenderOptions(model=model, **options))
    events = []
    chunks = []
    result = pipe.render_job(job, on_progress=lambda done, total: chunks.append((done, total, len(events))),
                             progress=Progress(events.append))
    order = list(dict.fromkeys(e.stage for e in events))
    assert order == [s for s in STAGES if s in order], order  # the stages' order
    assert order[0] == "portrait" and order[-1] == "writing" and stage in order
    sampled = [e for e in events if e.stage == stage]
    assert sampled[-1].done == sampled[-1].total == result.evaluations > 0
    assert [e.done for e in sampled if e.done] == sorted(e.done for e in sampled if e.done)  # never backwards
    assert events[-1].frames_done == events[-1].frames_total == result.frames
    first_timed = next(i for i, e in enumerate(events) if e.seconds_left is not None)
    timed = events[first_timed]
    assert timed.done < timed.total and timed.stage == ("audio features" if model == "ditto" else stage)
    assert first_timed < chunks[0][2]  # before the first chunk of frames was complete
    if model == "ditto":  # HuBERT windows, then DiT evaluations, then frames
        audio = [e for e in events if e.stage == "audio features"]
        assert audio[-1].done == audio[-1].total == -(-result.frames // 5)  # a window gives 5 frames
    if model in ("ditto", "echomimic-acc"):  # the frames are their own stage, counted per frame
        framed = [e for e in events if e.stage == "frames"]
        assert framed[-1].done == framed[-1].total == result.frames
        # while sampling, the frames' pace is not measured yet: the time left is a lower bound
        assert all(e.partial for e in sampled if e.seconds_left is not None)
        assert not any(e.partial for e in framed)


def test_json_tells_load_render_and_total_time_and_quiet_hides_the_libraries_warnings(tmp_path, test_data,
                                                                                      monkeypatch, capfd):
    """-q: nothing on stderr although the render warns as numpy and transformers would; without it the
    Python warning is one note. --json: stdout is the JSON alone, with load_s, wall_s, total_s."""
    from avatar_cli.pipelines.unet import UNetPipeline

    prepare = UNetPipeline.prepare

    def warning_prepare(self, job, stats):
        np.array([np.nan]).astype(np.uint8)  # numpy: "invalid value encountered in cast"
        warnings.warn("some deprecation a user cannot act on", FutureWarning)
        logging.getLogger("transformers.modeling_utils").warning("Some weights were not initialized")
        return prepare(self, job, stats)

    monkeypatch.setattr(UNetPipeline, "prepare", warning_prepare)
    speech = _wav(tmp_path, test_data, 0.5)
    base = ["render", str(test_data / "astronaut.png"), str(speech), "--random-weights", "--arch", "tiny",
            "--size", "64", "--device", "cpu", "--json"]
    capfd.readouterr()
    assert main([*base, "-o", str(tmp_path / "a.mp4"), "-q"]) == 0
    out, err = capfd.readouterr()
    assert err == ""
    result = json.loads(out)  # the JSON alone
    assert result["load_s"] > 0 and result["wall_s"] > 0
    assert result["total_s"] >= result["load_s"] + result["wall_s"]
    assert result["rtf"] == pytest.approx(result["wall_s"] / result["duration_s"], rel=1e-3)  # RTF: the render only
    assert main([*base, "-o", str(tmp_path / "b.mp4")]) == 0
    out, err = capfd.readouterr()
    json.loads(out)
    notes = err.splitlines()
    assert any(line.startswith("avatar: note: FutureWarning: some deprecation") for line in notes), notes
    assert any(line.startswith("avatar: note: RuntimeWarning: invalid value") for line in notes), notes


def test_the_display_shows_stages_units_frames_and_time_left(tmp_path, test_data, monkeypatch):
    """On a terminal: the display gets the stages from 'inputs' on, and its time-left column shows
    a time once the first evaluation is measured."""
    import sys

    from avatar_cli.cli import render as cli

    seen = []
    real = cli.progress

    class Recording(real):
        def __enter__(self):
            tracker = super().__enter__()
            forward = tracker.on_event

            def on_event(event):
                forward(event)
                task = self.bar.tasks[0]
                left = [c for c in self.bar.columns if type(c).__name__ == "TimeLeft"][0].render(task)
                seen.append((event.stage, task.fields["units"], task.fields["frames"], str(left)))

            tracker.on_event = on_event
            return tracker

    monkeypatch.setattr(cli, "progress", Recording)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    speech = _wav(tmp_path, test_data, 0.7)
    assert main(["render", str(test_data / "astronaut.png"), str(speech), "--random-weights", "--arch", "tiny",
                 "--size", "64", "--device", "cpu", "--model", "hallo", "--steps", "2", "--face-box", "90,35,50,55",
                 "--no-face-embedding", "-o", str(tmp_path / "a.mp4")]) == 0
    stages = list(dict.fromkeys(s for s, *_ in seen))
    assert stages[:2] == ["inputs", "models"] and stages[-1] == "writing"
    sampling = [row for row in seen if row[0] == "sampling"]
    assert sampling[0][1] == "0/8 evaluations" and sampling[-1][1] == "8/8 evaluations"  # 2 clips x 2 steps x CFG 2
    assert sampling[0][3] == "left -:--:--" and sampling[1][3].startswith("left 0:")
    assert seen[-1][2] == "frames 18/18"


def test_dry_run_draws_the_face_box_and_crop_writes_no_video_and_builds_no_model(tmp_path, test_data, monkeypatch,
                                                                                   capsys):
    from PIL import Image

    from avatar_cli import pipelines
    from avatar_cli.dry_run import CROP_COLOUR, FACE_COLOUR

    def no_model(*args, **kwargs):
        raise AssertionError("--dry-run built a model")

    monkeypatch.setattr(pipelines, "load_pipeline", no_model)
    monkeypatch.setenv("AVATAR_HOME", str(tmp_path / "home"))
    speech = _wav(tmp_path, test_data, 0.7)
    out = tmp_path / "talk.mp4"
    # a wide portrait, so that the square frame (--fit crop) is a crop of it
    wide = tmp_path / "wide.png"
    Image.open(test_data / "astronaut.png").convert("RGB").resize((384, 256)).save(wide)
    assert main(["render", str(wide), str(speech), "--dry-run", "--model", "hallo", "--random-weights", "--arch",
                 "tiny", "--size", "64", "--face-box", "150,40,60,70", "--json", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    png = tmp_path / "talk.dry-run.png"
    assert report["dry_run"] is True and report["image"] == str(png) and "wrote" in captured.err
    assert (report["model"], report["method"], report["size"], report["num_inference_steps"]) == ("hallo", "hallo",
                                                                                                   "64", 40)
    assert report["frames"] == 18 and report["face_box"] == [150, 40, 60, 70] and report["face_source"] == "--face-box"
    assert report["crop"] == [[64, 0], [320, 0], [320, 256], [64, 256]]  # the centred square of --fit crop
    assert report["expected_wall_s"] is None and "--preview" in report["expected"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == ["s.wav", "talk.dry-run.png", "wide.png"]
    drawn = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert drawn.shape == (256, 384, 3)
    assert (drawn[100, 150] == FACE_COLOUR).all() and (drawn[100, 210] == FACE_COLOUR).all()  # the box's sides
    assert (drawn[110, 180] == FACE_COLOUR).all() and not (drawn[100, 180] == FACE_COLOUR).all()  # bottom, inside
    assert (drawn[200, 64] == CROP_COLOUR).all() and (drawn[200, 320] == CROP_COLOUR).all()  # the crop's sides
    original = np.asarray(Image.open(wide).convert("RGB")).astype(int)
    assert (drawn[200, 100] == original[200, 100]).all()  # elsewhere the portrait as it is


def test_dry_run_fails_in_one_line_for_weights_that_are_not_installed(tmp_path, test_data, monkeypatch, capsys):
    monkeypatch.setenv("AVATAR_HOME", str(tmp_path / "home"))
    speech = _wav(tmp_path, test_data, 0.3)
    assert main(["render", str(test_data / "astronaut.png"), str(speech), "--dry-run", "--model", "hallo",
                 "-o", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model hallo needs weights" in err[0], err
    assert not (tmp_path / "x.dry-run.png").exists()
