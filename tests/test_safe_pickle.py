"""The restricted unpickler and DittoConfig, on pickles written here in the layout of Ditto's cfg pickle."""

import os
import pickle

import numpy as np
import pytest

from avatar_cli.errors import WeightsError
from avatar_cli.safe_pickle import DittoConfig, load_pickle_file, restricted_load


def ditto_cfg():
    """A dict shaped like v0.4_hubert_cfg_pytorch.pkl (Ditto's cfg.py:parse_cfg reads these three parts)."""
    g = np.random.default_rng(0)
    base = {k: {"model_path": f"ditto_pytorch/models/{k}.pth", "device": "cuda"} for k in (
        "appearance_extractor_cfg", "motion_extractor_cfg", "stitch_network_cfg", "warp_network_cfg", "decoder_cfg")}
    base["hubert_cfg"] = {"model_path": "ditto_pytorch/aux_models/hubert_streaming_fix_kv.onnx", "device": "cuda"}
    base["landmark478_cfg"] = {"task_path": "ditto_pytorch/aux_models/face_landmarker.task", "device": "cuda"}
    return {
        "base_cfg": base,
        "audio2motion_cfg": {"model_path": "ditto_pytorch/models/lmdm_v0.4_hubert.pth", "device": "cuda",
                             "motion_feat_dim": 265, "audio_feat_dim": 1103, "seq_frames": 80, "use_emo": True,
                             "use_sc": True, "use_eye_open": True, "use_eye_ball": True, "w2f_type": "hubert"},
        "default_kwargs": {
            "delta_eye_arr": g.standard_normal((15, 63)).astype(np.float32),
            "v_min_max_for_clip": g.standard_normal((4, 265)).astype(np.float32),
            "overall_ctrl_info": {"delta_pitch": 2},
            "sampling_timesteps": 50, "overlap_v2": 10, "fix_kp_cond": 1, "fix_kp_cond_dim": [0, 202],
            "fade_type": "d0", "emo": 4, "smo_k_d": 3, "crop_scale": 2.3, "delta_eye_open_n": 0,
            "seed": np.int64(7), "flags": {1, 2},
        },
    }


def test_loads_ditto_format_pickle(tmp_path):
    cfg = ditto_cfg()
    p = tmp_path / "v0.4_hubert_cfg_pytorch.pkl"
    p.write_bytes(pickle.dumps(cfg, protocol=4))
    got = load_pickle_file(p)
    np.testing.assert_array_equal(got["default_kwargs"]["delta_eye_arr"], cfg["default_kwargs"]["delta_eye_arr"])
    assert got["base_cfg"] == cfg["base_cfg"] and got["default_kwargs"]["flags"] == {1, 2}
    c = DittoConfig.from_pickle(p)
    assert c.delta_eye_arr.shape == (15, 63) and c.v_min_max_for_clip.shape == (4, 265)
    assert c.overall_ctrl_info == {"delta_pitch": 2} and c.fix_kp_cond == 1 and c.fix_kp_cond_dim == (0, 202)
    assert c.fade_type == "d0" and c.sampling_timesteps == 50 and c.audio2motion_cfg["audio_feat_dim"] == 1103
    # absent keys keep Ditto's code defaults
    assert c.crop_vy_ratio == -0.125 and c.online_mode is False and c.fade_out_keys == ("exp",)


@pytest.mark.parametrize("protocol", [2, 5])
def test_numpy1_names_and_other_protocols(protocol):
    data = pickle.dumps(ditto_cfg(), protocol=protocol)
    if protocol == 2:  # a pickle written by numpy 1.x names numpy.core (GLOBAL opcodes are text lines)
        data = data.replace(b"numpy._core", b"numpy.core")
        assert b"numpy.core.multiarray" in data
    c = DittoConfig.from_dict(restricted_load(data))
    np.testing.assert_array_equal(c.v_min_max_for_clip, ditto_cfg()["default_kwargs"]["v_min_max_for_clip"])


def test_defaults_when_default_kwargs_is_empty():
    c = DittoConfig.from_dict({"base_cfg": {}, "audio2motion_cfg": {}, "default_kwargs": {}})
    assert c.delta_eye_arr is None and c.sampling_timesteps == 50 and c.overlap_v2 == 10 and c.emo == 4
    with pytest.raises(WeightsError, match="lacks default_kwargs"):
        DittoConfig.from_dict({"base_cfg": {}, "audio2motion_cfg": {}})
    bad = ditto_cfg()
    bad["default_kwargs"]["delta_eye_arr"] = np.zeros((15, 62), np.float32)
    with pytest.raises(WeightsError, match="delta_eye_arr"):
        DittoConfig.from_dict(bad)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    cfg = ditto_cfg()
    cfg["default_kwargs"]["emo"] = _Evil(marker)
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps(cfg))
    with pytest.raises(WeightsError) as e:
        DittoConfig.from_pickle(p)
    msg = str(e.value)
    assert "\n" not in msg and "system" in msg and str(p) in msg
    assert not marker.exists()
    import subprocess

    for payload in [(eval, ("1+1",)), (exec, ("x = 1",)), (subprocess.Popen, (["true"],))]:
        class R:
            def __reduce__(self, payload=payload):
                return payload
        with pytest.raises(WeightsError, match="not allowed"):
            restricted_load(pickle.dumps({"x": R()}))


def test_truncated_pickle_is_a_weights_error():
    with pytest.raises(WeightsError, match="cannot read"):
        restricted_load(pickle.dumps(ditto_cfg())[:100])


def test_json_and_safetensors_round_trip(tmp_path):
    c = DittoConfig.from_dict(ditto_cfg())
    c.save(tmp_path / "ditto")
    assert sorted(x.name for x in (tmp_path / "ditto").iterdir()) == ["ditto_cfg.json", "ditto_cfg.safetensors"]
    r = DittoConfig.load(tmp_path / "ditto")
    np.testing.assert_array_equal(r.delta_eye_arr, c.delta_eye_arr)
    np.testing.assert_array_equal(r.v_min_max_for_clip, c.v_min_max_for_clip)
    for f in ("overall_ctrl_info", "fix_kp_cond_dim", "fade_type", "sampling_timesteps", "base_cfg", "audio2motion_cfg",
              "fade_out_keys", "emo", "crop_scale"):
        assert getattr(r, f) == getattr(c, f), f
    with pytest.raises(WeightsError, match="not found"):
        DittoConfig.load(tmp_path / "nothing")
