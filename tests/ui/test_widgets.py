"""The render options as widgets (no server): every declaration with a widget, values back to the
same RenderOptions as the command line, the equivalent command line, upload checks by content."""

from __future__ import annotations

from pathlib import Path

import pytest

from avatar_cli import render_options
from avatar_cli.errors import InputError
from avatar_cli.ui import widgets
from avatar_cli.ui.service import Sessions, Uploads

DATA = Path(__file__).resolve().parents[1] / "data"


def test_every_option_but_server_paths_has_a_widget():
    names = {o.name for o in widgets.UI_OPTIONS}
    paths = {o.name for o in render_options.RENDER_OPTIONS if widgets.base_kind(o) is Path}
    assert paths == {"face_embedding", "controls"}
    assert names == {o.name for o in render_options.RENDER_OPTIONS} - paths


def test_widget_values_build_the_command_lines_options():
    raw = [widgets.api_default(o) for o in widgets.UI_OPTIONS]
    index = {o.name: i for i, o in enumerate(widgets.UI_OPTIONS)}
    raw[index["steps"]] = "4"
    raw[index["size"]] = 128.0  # a number box sends floats
    raw[index["pose_offset"]] = "0,10,0"
    raw[index["overlap"]] = False
    values = widgets.values_of(raw)
    from_page = render_options.build({**values, "model": "ditto"})
    # the same options as `avatar render ... --model ditto --steps 4 --size 128 --pose-offset 0,10,0 --no-overlap`
    cli = {o.name: o.default for o in render_options.RENDER_OPTIONS}
    cli.update(model="ditto", steps=4, size=128, pose_offset="0,10,0", overlap=False)
    assert from_page == render_options.build(cli)
    assert from_page.num_inference_steps == 4 and from_page.pose_offset == (0.0, 10.0, 0.0)
    line = widgets.command_line({**values, "model": "ditto"}, ["--random-weights", "--arch", "tiny"],
                                "my face.png", "a.wav")
    assert line == ("avatar render 'my face.png' a.wav --model ditto --steps 4 --pose-offset 0,10,0 --size 128 "
                    "--no-overlap --random-weights --arch tiny")


def test_a_number_box_that_is_not_a_number_is_one_line():
    raw = [widgets.api_default(o) for o in widgets.UI_OPTIONS]
    raw[[o.name for o in widgets.UI_OPTIONS].index("steps")] = "four"
    with pytest.raises(InputError, match=r"^--steps takes a number \(got 'four'\)$"):
        widgets.values_of(raw)


def test_uploads_are_checked_by_content_and_copied_under_new_names(tmp_path):
    sessions = Sessions(tmp_path / "root")
    folder = sessions.folder("abc")
    uploads = Uploads(max_audio=10_000)
    image, label = uploads.image(DATA / "astronaut.png", folder)
    assert image.parent == folder and image.name.startswith("portrait-") and label == "astronaut.png"
    fake = tmp_path / "photo.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # a PNG signature, no picture
    with pytest.raises(InputError) as err:
        uploads.image(fake, folder)
    assert "photo.png" in str(err.value) and str(folder) not in str(err.value)
    with pytest.raises(InputError, match=r"^speech speech_espeak\.wav is .* MB, over this server's 0 MB limit"):
        uploads.audio(DATA / "speech_espeak.wav", folder)
    with pytest.raises(InputError, match=r"^speech astronaut\.png is not a speech recording"):
        Uploads().audio(DATA / "astronaut.png", folder)
    assert list(folder.iterdir()) == [image]  # a refused upload leaves nothing
    sessions.end("abc")
    assert not folder.exists()
    sessions.close()
    assert not (tmp_path / "root").exists()


def test_without_the_ui_extra_avatar_ui_is_one_line(monkeypatch, capsys):
    """No Gradio installed: one line naming the install command, exit code 1, no traceback."""
    import sys

    from avatar_cli.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert main(["ui"]) == 1
    err = capsys.readouterr().err
    assert err == ("avatar: error: avatar ui needs Gradio, which is not installed; install the ui extra: "
                   "pip install 'avatar-cli[ui]' (from a clone: pip install -e '.[ui]')\n")


def test_the_portrait_view_draws_the_face_box_where_the_renderer_reads_it(tmp_path):
    """--face-box 40,60,100,80 on a 256x256 portrait: green edges at those pixels, the inside untouched."""
    import numpy as np
    from PIL import Image

    from avatar_cli.load_options import LoadOptions
    from avatar_cli.ui.app import App

    app = App(LoadOptions(random_weights=True, arch="tiny"), sessions=Sessions(tmp_path / "root"))
    plain = np.asarray(Image.open(DATA / "astronaut.png").convert("RGB"))
    view = app.view(str(DATA / "astronaut.png"), "40,60,100,80")
    assert view.shape == plain.shape
    changed = np.argwhere(np.any(view != plain, axis=-1))
    assert (changed.min(axis=0) == (60, 40)).all() and (changed.max(axis=0) == (140, 140)).all()
    assert (view[60, 40:141] == (0, 255, 0)).all()
    assert (view[62:139, 42:139] == plain[62:139, 42:139]).all()  # a 2-pixel line, drawn inwards
    assert list((tmp_path / "root").rglob("*.png")) == []  # the checked copy is not kept
    app.sessions.close()
