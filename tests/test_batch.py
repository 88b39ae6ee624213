"""`avatar batch`: jobs files, ledger and --resume, shards, failures, interruption."""

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from avatar_cli import UNetPipeline, RenderOptions
from avatar_cli import batch as batchmod
from avatar_cli.cli import main
from avatar_cli.models.bundle import AvatarModels
from tests.conftest import ffmpeg, probe, wait_until_writing

TINY = ["--random-weights", "--arch", "tiny", "--size", "64"]


@pytest.fixture()
def media(tmp_path, test_data):
    """Short speech files and an output folder in a scratch folder."""
    for name, seconds in (("one.wav", 0.6), ("two.wav", 0.9)):
        ffmpeg("-i", str(test_data / "speech_espeak.wav"), "-t", str(seconds), str(tmp_path / name))
    (tmp_path / "out").mkdir()
    return tmp_path


def _write_jobs(folder: Path, rows: list[str], header="image,audio,output,seed", name="jobs.csv") -> Path:
    path = folder / name
    path.write_text("\n".join(([header] if header else []) + rows) + "\n")
    return path


def _results(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_csv_jobs_render_with_per_job_options_and_report(media, test_data, capsys):
    img = test_data / "astronaut.png"
    jobs = _write_jobs(media, [f"{img},one.wav,out/a.mp4,1", f"{img},two.wav,out/b.mp4,",
                               f"{test_data / 'cat_chelsea.png'},one.wav,out/c.mp4,3"])
    assert main(["batch", str(jobs), "--json", *TINY]) == 0
    captured = capsys.readouterr()
    results = _results(captured.out)
    assert [r["status"] for r in results] == ["ok", "ok", "ok"] and [r["job"] for r in results] == [0, 1, 2]
    assert probe(media / "out" / "a.mp4")["frames"] == 15 and probe(media / "out" / "b.mp4")["frames"] == 23
    assert "[2/3] ok" in captured.err and "3 ok, 0 failed" in captured.err
    ledger = [json.loads(line) for line in (media / "jobs.ledger.jsonl").read_text().splitlines()]
    assert [e["job"] for e in ledger] == [0, 1, 2] and all(len(e["sha256"]) == 64 for e in ledger)
    # the seed column is used: same job, other seed -> other video
    again = _write_jobs(media, [f"{img},one.wav,out/d.mp4,1", f"{img},one.wav,out/e.mp4,2"], name="again.csv")
    assert main(["batch", str(again), "--quiet", *TINY]) == 0
    assert (media / "out" / "d.mp4").read_bytes() == (media / "out" / "a.mp4").read_bytes()
    assert (media / "out" / "e.mp4").read_bytes() != (media / "out" / "a.mp4").read_bytes()


def test_jsonl_and_headerless_stdin(media, test_data, monkeypatch, capsys):
    img = str(test_data / "astronaut.png")
    jsonl = media / "jobs.jsonl"
    jsonl.write_text(json.dumps({"image": img, "audio": "one.wav", "output": "out/j.mp4", "seed": 5}) + "\n")
    assert main(["batch", str(jsonl), "--quiet", *TINY]) == 0 and (media / "out" / "j.mp4").is_file()
    monkeypatch.chdir(media)
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{img},one.wav,out/s.mp4\n"))  # as `find -printf` makes it
    assert main(["batch", "-", "--quiet", *TINY]) == 0
    assert (media / "out" / "s.mp4").is_file() and (media / "stdin.ledger.jsonl").is_file()


def test_a_bad_job_fails_alone_and_fail_fast_stops(media, test_data, capsys):
    img = test_data / "astronaut.png"
    rows = [f"{img},missing.wav,out/a.mp4,", f"{media / 'one.wav'},one.wav,out/b.mp4,", f"{img},one.wav,out/c.mp4,"]
    jobs = _write_jobs(media, rows)
    assert main(["batch", str(jobs), "--json", "--quiet", *TINY]) == 1
    results = _results(capsys.readouterr().out)
    assert [r["status"] for r in results] == ["failed", "failed", "ok"]
    assert "row 2" in results[0]["error"] and "does not exist" in results[0]["error"]
    assert "not an image" in results[1]["error"]
    assert sorted(p.name for p in (media / "out").iterdir()) == ["c.mp4"]  # nothing half-written
    assert main(["batch", str(jobs), "--json", "--quiet", "--fail-fast", "--overwrite", *TINY]) == 1
    assert [r["status"] for r in _results(capsys.readouterr().out)] == ["failed"]


def test_resume_skips_finished_and_redoes_missing_or_altered(media, test_data, capsys):
    img = test_data / "astronaut.png"
    jobs = _write_jobs(media, [f"{img},one.wav,out/{n}.mp4," for n in "abc"])
    assert main(["batch", str(jobs), "--quiet", *TINY]) == 0
    (media / "out" / "b.mp4").unlink()
    data = bytearray((media / "out" / "c.mp4").read_bytes())  # altered after the run
    data[-10] ^= 0xFF
    (media / "out" / "c.mp4").write_bytes(bytes(data))
    assert main(["batch", str(jobs), "--resume", "--json", "--quiet", *TINY]) == 0
    assert [r["status"] for r in _results(capsys.readouterr().out)] == ["skipped", "ok", "ok"]
    assert main(["batch", str(jobs), "--quiet", *TINY]) == 2  # outputs exist: refused without --resume/--overwrite
    assert "--resume or --overwrite" in capsys.readouterr().err


def test_shards_split_the_jobs_without_overlap(media, test_data, capsys):
    img = test_data / "astronaut.png"
    jobs = _write_jobs(media, [f"{img},one.wav,out/{n}.mp4," for n in "abcde"])
    done = []
    for shard in ("0/2", "1/2"):
        assert main(["batch", str(jobs), "--shard", shard, "--json", "--quiet", *TINY]) == 0
        done.append([r["job"] for r in _results(capsys.readouterr().out)])
    assert done == [[0, 2, 4], [1, 3]]
    assert main(["batch", str(jobs), "--shard", "2/2", *TINY]) == 2


def test_the_models_load_once_and_a_portrait_is_encoded_once(media, test_data):
    img = test_data / "astronaut.png"
    jobs = batchmod.read_jobs(_write_jobs(media, [f"{img},one.wav,out/{n}.mp4," for n in "ab"]
                                          + [f"{test_data / 'cat_chelsea.png'},one.wav,out/c.mp4,"]))
    pipe = UNetPipeline.from_preset("tiny", device="cpu", dtype="float32")
    results = batchmod.run(pipe, jobs, RenderOptions(size=64), batchmod.Ledger(media / "l.jsonl"))
    assert [r.status for r in results] == ["ok"] * 3
    clips = 1  # 0.6 s = 15 frames = one clip per job
    assert pipe.reference_net_calls == 2 + 3 * clips  # two portraits, motion features once per clip


@pytest.mark.parametrize("content,words", [
    (None, "does not exist"), ("", "is empty"), ("picture,sound,video\na,b,c", "lacks the column"),
    ("image,audio,output\n{img},,out/a.mp4", "row 2, column audio: missing"),
    ("image,audio,output\n{img},one.wav,out/a.mp4\n{img},two.wav,out/a.mp4", "row 3, column output"),
    ("image,audio,output\n{img},one.wav,nowhere/a.mp4", "row 2, column output: folder"),
    ("image,audio,output,seed\n{img},one.wav,out/a.mp4,x", "column seed"),
    ("image,audio,output,colour\n{img},one.wav,out/a.mp4,red", "unknown column"),
    ("image,audio,output,separate_vocals\n{img},one.wav,out/a.mp4,maybe", "column separate_vocals"),
    ("image,audio,output,init\n{img},one.wav,out/a.mp4,sideways", "row 2, column init: --init must be"),
    ("image,audio,output,size\n{img},one.wav,out/a.mp4,100", "row 2, column size: --size"),
])
def test_bad_jobs_files_are_usage_errors_naming_row_and_column(media, test_data, capsys, content, words):
    path = media / "jobs.csv"
    if content is not None:
        path.write_text(content.format(img=test_data / "astronaut.png"))
    assert main(["batch", str(path), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert list((media / "out").iterdir()) == []


def test_truncated_weights_fail_with_a_clear_message(tmp_path, media, test_data, capsys):
    AvatarModels.from_preset("tiny").save_pretrained(tmp_path / "w")
    blob = tmp_path / "w" / "denoising_unet" / "diffusion_pytorch_model.safetensors"
    blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])
    jobs = _write_jobs(media, [f"{test_data / 'astronaut.png'},one.wav,out/a.mp4,"])
    assert main(["batch", str(jobs), "--weights", str(tmp_path / "w"), "--size", "64"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load weights" in err[0] and "Traceback" not in err[0]


def _avatar(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "avatar_cli", *args], **kwargs)


def test_interrupt_during_the_second_job_then_resume(media, test_data):
    long = media / "long.wav"
    ffmpeg("-stream_loop", "14", "-i", str(test_data / "speech_espeak.wav"), str(long))  # 15 x 4 s each
    img = test_data / "astronaut.png"
    jobs = _write_jobs(media, [f"{img},one.wav,out/first.mp4,", f"{img},long.wav,out/second.mp4,",
                               f"{img},long.wav,out/third.mp4,"])
    proc = _avatar("batch", str(jobs), *TINY, "--quiet", stderr=subprocess.PIPE, text=True)
    ledger = media / "jobs.ledger.jsonl"
    wait_until_writing(proc, media / "out", "second.mp4", ready=ledger.is_file)  # job 1 done, job 2 writing
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert sorted(p.name for p in (media / "out").iterdir()) == ["first.mp4"]  # no temporary or partial file
    assert [json.loads(line)["job"] for line in ledger.read_text().splitlines()] == [0]
    first = (media / "out" / "first.mp4").stat().st_mtime_ns
    shutil.copyfile(media / "one.wav", long)  # the unfinished jobs need not be long any more (saves minutes)
    done = _avatar("batch", str(jobs), *TINY, "--quiet", "--resume", "--json", stdout=subprocess.PIPE, text=True)
    out, _ = done.communicate(timeout=600)
    assert done.returncode == 0
    assert [r["status"] for r in _results(out)] == ["skipped", "ok", "ok"]
    assert (media / "out" / "first.mp4").stat().st_mtime_ns == first  # not rendered again


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGINT]], ids=["sigterm", "ctrl-c-twice"])
def test_sigterm_and_a_second_ctrl_c_exit_130_leaving_no_partial_file(media, test_data, signals):
    """SIGTERM cleans up like Ctrl-C; a second Ctrl-C exits at once, its temporary output removed too."""
    long = media / "long.wav"
    ffmpeg("-stream_loop", "24", "-i", str(test_data / "speech_espeak.wav"), str(long))  # 25 x 4 s
    jobs = _write_jobs(media, [f"{test_data / 'astronaut.png'},long.wav,out/a.mp4,"])
    proc = _avatar("batch", str(jobs), *TINY, "--quiet", stderr=subprocess.PIPE, text=True)
    wait_until_writing(proc, media / "out", "a.mp4")
    for sig in signals:
        proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert list((media / "out").iterdir()) == []  # neither the output nor its temporary file


def test_an_unexpected_error_fails_one_job_and_the_others_render(media, test_data, monkeypatch, capsys):
    img = test_data / "astronaut.png"
    jobs = _write_jobs(media, [f"{img},one.wav,out/a.mp4,", f"{img},two.wav,out/b.mp4,"])
    real = UNetPipeline.render_job

    def flaky(self, job, *args, **kwargs):
        if job.output.name == "a.mp4":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details")
        return real(self, job, *args, **kwargs)

    monkeypatch.setattr(UNetPipeline, "render_job", flaky)
    assert main(["batch", str(jobs), "--json", *TINY]) == 1
    results = _results(capsys.readouterr().out)
    assert [r["status"] for r in results] == ["failed", "ok"]
    assert results[0]["error"].endswith("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert sorted(p.name for p in (media / "out").iterdir()) == ["b.mp4"]


def test_headerless_rows_with_a_missing_first_image_fail_that_job_only(media, test_data, monkeypatch, capsys):
    img = test_data / "astronaut.png"
    monkeypatch.chdir(media)
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(f"missing.png,one.wav,out/a.mp4\n{img},one.wav,out/b.mp4\n"))
    assert main(["batch", "-", "--json", *TINY]) == 1
    results = _results(capsys.readouterr().out)
    assert [r["status"] for r in results] == ["failed", "ok"] and "missing.png" in results[0]["error"]


def test_devices_from_stdin_keep_every_column(media, test_data, monkeypatch):
    img = test_data / "astronaut.png"
    monkeypatch.chdir(media)
    import io

    rows = [{"image": str(img), "audio": "one.wav", "output": "out/a.mp4", "size": 128, "seed": 3},
            {"image": str(img), "audio": "one.wav", "output": "out/b.mp4"}]
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(json.dumps(r) + "\n" for r in rows)))
    assert main(["batch", "-", "--devices", "cpu,cpu", "--quiet", *TINY]) == 0
    assert probe(media / "out" / "a.mp4")["width"] == 128 and probe(media / "out" / "b.mp4")["width"] == 64


def test_devices_run_one_shard_process_each(media, test_data, capsys):
    img = test_data / "astronaut.png"
    jobs = _write_jobs(media, [f"{img},one.wav,out/{n}.mp4," for n in "abc"])
    assert main(["batch", str(jobs), "--devices", "cpu,cpu", "--quiet", *TINY]) == 0
    assert sorted(p.name for p in (media / "out").iterdir()) == ["a.mp4", "b.mp4", "c.mp4"]
    ledger = [json.loads(line)["job"] for line in (media / "jobs.ledger.jsonl").read_text().splitlines()]
    assert sorted(ledger) == [0, 1, 2]  # one ledger, appended by both shards


def test_separate_vocals_column_reads_yes_and_no(media, test_data):
    from avatar_cli.batch import read_jobs

    path = media / "jobs.csv"
    path.write_text(f"image,audio,output,separate_vocals\n{test_data / 'astronaut.png'},one.wav,out/a.mp4,yes\n"
                    f"{test_data / 'astronaut.png'},one.wav,out/b.mp4,no\n"
                    f"{test_data / 'astronaut.png'},one.wav,out/c.mp4,\n")
    assert [job.options.get("separate_vocals") for job in read_jobs(path)] == [True, False, None]


def test_the_cli_loads_the_models_once_and_audio_features_columns_are_checked(media, test_data, monkeypatch,
                                                                               capsys):
    builds = []
    real = AvatarModels.from_preset.__func__

    def counting(cls, *args, **kwargs):
        builds.append(args)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AvatarModels, "from_preset", classmethod(counting))
    good, other_fps = media / "one.features.safetensors", media / "one.fps30.safetensors"
    assert main(["audio", "encode", str(media / "one.wav"), "-o", str(good), "--random-weights", "--arch", "tiny",
                 "--quiet"]) == 0
    assert main(["audio", "encode", str(media / "one.wav"), "-o", str(other_fps), "--fps", "30", "--random-weights",
                 "--arch", "tiny", "--quiet"]) == 0
    builds.clear()
    img = test_data / "astronaut.png"
    jobs = _write_jobs(media, [f"{img},one.wav,out/a.mp4,{good}", f"{img},one.wav,out/b.mp4,{other_fps}",
                               f"{img},two.wav,out/c.mp4,"], header="image,audio,output,audio_features")
    assert main(["batch", str(jobs), "--json", *TINY]) == 1
    assert len(builds) == 1  # three jobs, one model build
    results = _results(capsys.readouterr().out)
    assert [r["status"] for r in results] == ["ok", "failed", "ok"]
    assert "at 30.0 fps" in results[1]["error"] and "encode again with --fps 25" in results[1]["error"]
    assert sorted(p.name for p in (media / "out").iterdir()) == ["a.mp4", "c.mp4"]


def test_an_unwritable_output_folder_is_a_usage_error(media, test_data, monkeypatch, capsys):
    """Root writes anywhere, so the folder's permission is taken away by monkeypatching os.access."""
    import os

    locked = media / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(locked) and mode == os.W_OK
                        else real(p, mode, **kw))
    jobs = _write_jobs(media, [f"{test_data / 'astronaut.png'},one.wav,locked/a.mp4,"])
    assert main(["batch", str(jobs), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "row 2, column output: folder" in err[0] and "not writable" in err[0]


def test_the_bad_input_matrix_fails_job_by_job(media, test_data, capsys):
    img = test_data / "astronaut.png"
    (media / "empty.png").write_bytes(b"")
    (media / "text.png").write_text("not an image")
    data = img.read_bytes()
    (media / "cut.png").write_bytes(data[: len(data) // 2])
    (media / "empty.wav").write_bytes(b"")
    (media / "text.wav").write_text("not audio at all")
    cases = [("empty.png", "one.wav", "not an image"), ("text.png", "one.wav", "not an image"),
             ("cut.png", "one.wav", "truncated"), (str(img), "empty.wav", "empty file"),
             (str(img), "text.wav", "cannot read audio"), (str(img), str(img), "cannot read audio"),
             (str(img), "one.wav", None)]
    jobs = _write_jobs(media, [f"{image},{audio},out/{i}.mp4," for i, (image, audio, _) in enumerate(cases)])
    assert main(["batch", str(jobs), "--json", "--quiet", *TINY]) == 1
    results = _results(capsys.readouterr().out)
    for row, (result, (_, _, words)) in enumerate(zip(results, cases), 2):
        if words is None:
            assert result["status"] == "ok"
        else:
            assert result["status"] == "failed" and f"row {row}:" in result["error"] and words in result["error"], \
                (row, result["error"])
    assert sorted(p.name for p in (media / "out").iterdir()) == ["6.mp4"]  # nothing half-written
