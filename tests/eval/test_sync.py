"""SyncNet v2 and Sync-C / Sync-D: the network layout against syncnet_python's, the MFCC against
python_speech_features, the scores against syncnet_python's own ``evaluate`` on the same inputs and
weights (tests/data/syncnet_fixture.npz), and the offset search against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatar_cli.errors import WeightsError
from avatar_cli.eval import sync
from avatar_cli.eval.syncnet import SyncNetV2, load_syncnet

from .syncnet_inputs import random_inputs, random_state


@pytest.fixture(scope="module")
def fixture(test_data):
    return np.load(test_data / "syncnet_fixture.npz")


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    """syncnet_v2.model's layout with the fixture's random weights, saved as a plain state dict."""
    shapes = {k: tuple(v.shape) for k, v in SyncNetV2().state_dict().items()}
    state = {k: torch.from_numpy(v) for k, v in random_state(shapes, 0).items()}
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save(state, path)
    return path, state


def test_layout_is_syncnet_python_s(fixture):
    """The parameter names, order and shapes of syncnet_python's ``S()`` (recorded with its code)."""
    ours = SyncNetV2().state_dict()
    assert list(ours) == [str(k) for k in fixture["keys"]]
    assert [str(tuple(v.shape)) for v in ours.values()] == [str(s) for s in fixture["shapes"]]


def test_loads_strictly_and_refuses_what_is_not_a_state_dict(random_checkpoint, tmp_path):
    path, state = random_checkpoint
    net = load_syncnet(path)
    assert not net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    # a file saved before torch 0.4 has no num_batches_tracked (BatchNorm's loader fills them in) and is
    # in the legacy (pre-1.6, not zip) format, which weights_only=True reads too
    legacy = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(legacy) < len(state)
    torch.save(legacy, tmp_path / "legacy.model", _use_new_zipfile_serialization=False)
    assert torch.equal(load_syncnet(tmp_path / "legacy.model").netcnnlip[0].weight, state["netcnnlip.0.weight"])
    # a renamed key, a whole pickled module (weights_only refuses to build it), a missing file
    renamed = dict(legacy)
    renamed["netcnnaud.0.kernel"] = renamed.pop("netcnnaud.0.weight")
    torch.save(renamed, tmp_path / "renamed.model")
    with pytest.raises(WeightsError, match="not SyncNet v2's state dict"):
        load_syncnet(tmp_path / "renamed.model")
    torch.save(SyncNetV2(embedding_dim=8), tmp_path / "module.model")
    with pytest.raises(WeightsError, match="plain state dict"):
        load_syncnet(tmp_path / "module.model")
    with pytest.raises(WeightsError, match="avatar weights download syncnet"):
        load_syncnet(tmp_path / "missing.model")


def test_mfcc_is_python_speech_features(fixture):
    _, audio = random_inputs(0)
    ours = sync.mfcc(audio)
    assert ours.shape == fixture["mfcc"].shape == (1 + int(np.ceil((len(audio) - 400) / 160)), 13)
    np.testing.assert_allclose(ours, fixture["mfcc"], rtol=1e-9, atol=1e-9)


def test_scores_equal_syncnet_python(fixture, random_checkpoint):
    """Same weights, frames and PCM as the recording of syncnet_python's ``SyncNetInstance.evaluate``."""
    net = load_syncnet(random_checkpoint[0])
    frames, audio = random_inputs(0)
    video_feat, audio_feat = sync.embed(net, frames, audio.astype(np.float64))
    dists = sync.shift_distances(video_feat, audio_feat)
    np.testing.assert_allclose(dists.numpy(), fixture["dists"], rtol=2e-5, atol=2e-5)
    result = sync.scores_from_distances(dists)
    assert result.offset == int(fixture["offset"])
    assert result.windows == len(frames) - 5
    assert result.confidence == pytest.approx(float(fixture["conf"]), abs=2e-4)
    assert result.min_dist == pytest.approx(float(fixture["dists"].mean(0).min()), abs=2e-4)


class LevelNet(torch.nn.Module):
    """A SyncNet stand-in whose embeddings are the signals themselves: the video embedding of a window
    is the mean pixel value of each of its 5 frames, the audio embedding the mean MFCC energy (row 0)
    of each frame's 4 steps. A video whose frame t shows the level e_{t+k} then matches the audio exactly
    at shift k."""

    def forward_lip(self, x):  # (N, 3, 5, H, W)
        return x.mean(dim=(1, 3, 4))

    def forward_aud(self, x):  # (N, 1, 13, 20)
        return x[:, 0, 0, :].reshape(len(x), 5, 4).mean(-1)


def hand_scores(levels: np.ndarray, energy: np.ndarray, windows: int, vshift: int) -> tuple[int, float, float]:
    """Offset, min and median-minus-min of the mean distances, written out loop by loop."""
    v = [levels[i:i + 5] for i in range(windows)]
    a = [energy[i:i + 5] for i in range(windows)]
    means = []
    for s in range(-vshift, vshift + 1):
        total = 0.0
        for i in range(windows):
            other = a[i + s] if 0 <= i + s < windows else np.zeros(5)
            total += float(np.sqrt(np.sum((v[i] - other + 1e-6) ** 2)))
        means.append(total / windows)
    best = int(np.argmin(means))
    return vshift - best, means[best], float(np.sort(means)[vshift]) - means[best]


@pytest.mark.parametrize("k", [-4, 0, 3])
def test_offset_search_finds_a_known_shift(k, test_data):
    """Audio delayed by k frames against the picture -> offset -k (syncnet_python's sign), with the
    distances, minimum and confidence of the hand computation."""
    from avatar_cli.media.audio import load_speech

    frames_n, vshift = 60, 8
    pcm = sync.pcm16(np.asarray(load_speech(test_data / "speech_espeak.wav"))[8000:8000 + frames_n * 640])
    c0 = sync.mfcc(pcm)[:, 0]
    energy = np.array([c0[4 * t:4 * t + 4].mean() for t in range(frames_n)])
    levels = np.array([energy[t + k] if 0 <= t + k < frames_n else 0.0 for t in range(frames_n)])
    crops = np.broadcast_to(levels[:, None, None, None], (frames_n, 8, 8, 3)).astype(np.float64)
    result = sync.sync_scores(LevelNet(), crops, pcm, vshift=vshift)
    windows = frames_n - 5
    offset, min_dist, conf = hand_scores(levels, energy, windows, vshift)
    assert result.offset == offset == -k
    assert result.windows == windows
    assert result.min_dist == pytest.approx(min_dist, rel=1e-5, abs=1e-4)  # MFCC enters the net as float32
    assert result.confidence == pytest.approx(conf, rel=1e-4, abs=1e-4)
    assert result.confidence > 1.0  # the true alignment stands out


def test_scores_from_distances_by_hand():
    # three windows, vshift 1: mean distances (2, 1, 4) -> min 1 at index 1 (shift 0), median 2
    d = torch.tensor([[1.0, 0.5, 5.0], [3.0, 1.0, 4.0], [2.0, 1.5, 3.0]])
    r = sync.scores_from_distances(d, vshift=1)
    assert (r.offset, r.min_dist, r.confidence) == (0, pytest.approx(1.0), pytest.approx(1.0))
    # the first of equal minima wins (torch.min), giving the larger offset
    r = sync.scores_from_distances(torch.tensor([[1.0, 1.0, 3.0]]), vshift=1)
    assert r.offset == 1 and r.confidence == pytest.approx(0.0)


def test_too_short_is_an_error():
    with pytest.raises(ValueError, match="at least 6 frames"):
        sync.embed(LevelNet(), np.zeros((5, 8, 8, 3)), np.zeros(16000))


def test_crop_rule_by_hand():
    # scipy.signal.medfilt pads with zeros: the first values lean to 0
    np.testing.assert_array_equal(sync.medfilt(np.array([5.0, 1, 7, 3, 9]), 3), [1, 5, 3, 7, 3])
    # a still box x1, y1, x2, y2 = 100, 100, 200, 220: s = 60, centre (150, 160), pad int(60 * 1.8) = 108
    windows = sync.track_crops(np.array([[100.0, 100, 200, 220]] * 20))
    assert windows[10].tolist() == [108, 208, 376, 174, 342]
    assert windows[0].tolist() == windows[10].tolist()  # 7 of 13 values in the first window are the box
    frame = np.zeros((300, 300, 3), np.uint8)
    frame[:, :, 0] = np.arange(300)[None, :] % 256
    crop = sync.crop_frame(frame, windows[10])
    assert crop.shape == (224, 224, 3)
    padded = np.pad(frame, ((108, 108), (108, 108), (0, 0)), constant_values=110)
    from avatar_cli.media.face_crop import resize_linear

    np.testing.assert_array_equal(crop, resize_linear(padded[208:376, 174:342], (224, 224)))
    # interpolation between detections, held at the ends
    filled = sync.fill_boxes(np.array([[np.nan] * 4, [0, 0, 10, 10], [np.nan] * 4, [10, 10, 30, 30]]))
    np.testing.assert_allclose(filled[:, 2], [10, 10, 20, 30])


def test_crops_equal_syncnet_python_crop_video(test_data):
    """syncnet_python's own ``run_pipeline.crop_video`` on jittered boxes with one wild detection
    (tests/data/syncnet_crop_fixture.npz): the same smoothed size and centre, and the same crops up to
    OpenCV's bilinear rounding (``resize_linear`` is within one level of ``cv2.resize``)."""
    from .syncnet_inputs import TRACK_KEPT, track_inputs

    fx = np.load(test_data / "syncnet_crop_fixture.npz")
    frames, boxes = track_inputs(0)
    np.testing.assert_allclose(sync.medfilt(np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2),
                               fx["s"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(sync.medfilt((boxes[:, 0] + boxes[:, 2]) / 2), fx["x"], rtol=0, atol=1e-12)
    windows = sync.track_crops(boxes)
    for crop, t in zip(fx["crops"], TRACK_KEPT):
        ours = sync.crop_frame(frames[t], windows[t]).astype(int)
        diff = np.abs(ours - crop)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.002, (t, diff.max(), (diff > 0).mean())  # measured 0.03 %
