"""Pre-processing blocks: config forms, the original form's features unchanged, each block's values, custom blocks,
old manifests, and the refusal of blocks a target cannot run."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from pydantic import ValidationError

from tinymlops.config import PreprocessingSection as FromConfig
from tinymlops.errors import UsageError
from tinymlops.preprocessing import (
    FittedPreprocessing,
    PreprocessingSection,
    check_deployable,
    fit,
    transform,
)


def _windows(n: int = 30, samples: int = 256, axes: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 1600.0
    x = rng.normal(0, 0.3, size=(n, samples, axes)) + np.sin(2 * np.pi * 25 * t)[None, :, None]
    return x.astype(np.float32)


def _legacy_spectral(X: np.ndarray, bands: int) -> np.ndarray:
    """The spectral features as tinymlops computed them before blocks (kept here as the regression reference)."""
    eps = 1e-6
    mean = X.mean(axis=1, keepdims=True)
    xc = X - mean
    power = np.abs(np.fft.rfft(xc * np.hanning(X.shape[1])[None, :, None], axis=1)) ** 2
    edges = np.linspace(1, power.shape[1], bands + 1).astype(int)
    band_e = np.stack([power[:, a:b].sum(axis=1) for a, b in zip(edges[:-1], edges[1:], strict=True)], axis=1)
    rms = np.sqrt((xc**2).mean(axis=1))
    kurt = (xc**4).mean(axis=1) / (rms**4 + eps)
    crest = np.abs(xc).max(axis=1) / (rms + eps)
    feats = [np.log(band_e + eps), np.log(rms + eps)[:, None], np.log(kurt + eps)[:, None], crest[:, None],
             mean[:, 0][:, None]]
    return np.concatenate(feats, axis=1).transpose(0, 2, 1).reshape(len(X), -1)


def test_config_section_is_the_one_in_config() -> None:
    assert FromConfig is PreprocessingSection


def test_original_form_gives_the_features_it_always_gave() -> None:
    X = _windows()
    spec = fit(PreprocessingSection(features="spectral", bands=8, scale=2.0), X, 1600.0)
    F = _legacy_spectral(X.astype(np.float64) / 2.0, 8)
    expected = ((F - F.mean(axis=0)) / np.maximum(F.std(axis=0), 1e-3)).astype(np.float32)
    assert np.array_equal(transform(spec, X), expected)
    assert spec.block_names() == ["spectral", "standardize"]
    assert spec.feature_names[:2] == ["x_band0_log_energy", "x_band1_log_energy"] and spec.n_features == 36
    # identity, not standardised: the raw values over scale, flattened
    ident = fit(PreprocessingSection(features="identity", scale=16.0, normalize="none"), X[:, :8, :2])
    assert np.array_equal(transform(ident, X[:, :8, :2]), (X[:, :8, :2].astype(np.float64) / 16).reshape(30, -1)
                          .astype(np.float32))
    assert ident.feature_names[0] == "f0" and ident.blocks == []


def test_old_manifest_loads_and_gives_the_same_features() -> None:
    X = _windows(10)
    new = fit(PreprocessingSection(features="spectral", bands=4), X, 1600.0)
    std = new.blocks[1]
    old = {"features": "spectral", "bands": 4, "scale": 1.0, "normalize": "standard", "raw_shape": [256, 3],
           "sample_rate_hz": 1600.0, "feature_names": new.feature_names,
           "mean": std.mean, "std": std.std}  # type: ignore[attr-defined]
    loaded = FittedPreprocessing.model_validate(json.loads(json.dumps(old)))
    assert np.array_equal(transform(loaded, X), transform(new, X))
    # and a new manifest round-trips through JSON with its block fields
    again = FittedPreprocessing.model_validate(json.loads(json.dumps(new.model_dump())))
    assert again == new


def test_list_form_and_blocks_form_are_the_same() -> None:
    a = PreprocessingSection.model_validate([{"block": "spectral", "bands": 6}, "standardize"])
    b = PreprocessingSection.model_validate({"blocks": [{"block": "spectral", "bands": 6}, {"block": "standardize"}]})
    X = _windows(12)
    assert np.array_equal(transform(fit(a, X), X), transform(fit(b, X), X))


@pytest.mark.parametrize(("entry", "message"), [
    ([{"block": "wavelet"}], "unknown pre-processing block 'wavelet'"),
    ([{"block": "standardize", "mean": [0.0]}], "block 'standardize': mean are set by fitting"),
    ([{"block": "mfcc", "n_mels": 8, "n_mfcc": 13}], "n_mfcc 13 is more than n_mels 8"),
    ([{"block": "window_stats", "stats": ["rms", "rms"]}], "stats repeat a statistic"),
    ([{"block": "spectral", "bandz": 3}], "bandz"),
    ([{"block": "not a ref:x y"}], "is not 'module:function'"),
    ([{"block": "spectral"}, {"block": "image", "size": [0, 9]}], r"blocks\[1\] \(image\): size.0: Input should be"),
    ({"blocks": ["standardize"], "features": "spectral"}, "use either blocks or features"),
])
def test_bad_config_names_the_block(entry: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PreprocessingSection.model_validate(entry)


def test_window_stats_of_a_sine() -> None:
    t = np.arange(4000) / 4000.0
    X = np.stack([3.0 + 0 * t, 2.0 * np.sin(2 * np.pi * 10 * t)], axis=1)[None]  # channel 0 constant, 1 a sine
    spec = fit(PreprocessingSection(blocks=["window_stats"]), X)
    f = dict(zip(spec.feature_names, transform(spec, X)[0].tolist(), strict=True))
    assert f["ch0_mean"] == pytest.approx(3.0) and f["ch0_std"] == pytest.approx(0.0, abs=1e-6)
    assert f["ch0_rms"] == pytest.approx(3.0) and f["ch0_crest"] == pytest.approx(1.0, abs=1e-6)
    assert f["ch1_mean"] == pytest.approx(0.0, abs=1e-6)
    assert f["ch1_std"] == pytest.approx(2 / np.sqrt(2), rel=1e-5)
    assert f["ch1_rms"] == pytest.approx(2 / np.sqrt(2), rel=1e-5)
    assert f["ch1_kurtosis"] == pytest.approx(1.5, rel=1e-4)  # a sine's kurtosis
    assert f["ch1_crest"] == pytest.approx(np.sqrt(2), rel=1e-4)


def test_log_mel_puts_a_tone_in_its_mel_band_and_mfcc_shapes() -> None:
    rate, t = 8000.0, np.arange(8000) / 8000.0
    X = np.stack([np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 3000 * t)])
    spec = fit(PreprocessingSection(blocks=[{"block": "log_mel", "frame_length": 400, "frame_step": 200,
                                             "n_mels": 40}]), X, rate)
    lm = transform(spec, X).reshape(2, *spec.feature_shape)  # type: ignore[misc]
    assert spec.feature_shape == [39, 40] and spec.blocks[0].fft_length == 512  # type: ignore[attr-defined]
    peak = lm.mean(axis=1).argmax(axis=1)
    mel = 1127 * np.log1p(np.array([1000.0, 3000.0]) / 700)
    edges = np.linspace(1127 * np.log1p(20 / 700), 1127 * np.log1p(4000 / 700), 42)
    assert np.abs(edges[1:-1][peak] - mel).max() < (edges[1] - edges[0]) * 1.01
    mf = fit(PreprocessingSection(blocks=[{"block": "mfcc", "frame_length": 400, "frame_step": 200, "n_mfcc": 10},
                                          "standardize"]), X, rate)
    assert mf.feature_shape == [39, 10] and mf.n_features == 390


def test_log_mel_needs_a_sample_rate_and_enough_samples() -> None:
    sec = PreprocessingSection(blocks=[{"block": "log_mel", "frame_length": 256}])
    with pytest.raises(ValueError, match="needs sample_rate_hz"):
        fit(sec, np.zeros((2, 1000)))
    with pytest.raises(ValueError, match="100 samples are fewer than frame_length 256"):
        fit(sec, np.zeros((2, 100)), 16000.0)


def test_image_resize_grayscale_scale() -> None:
    rng = np.random.default_rng(3)
    X = rng.integers(0, 256, size=(4, 16, 12, 3)).astype(np.float32)
    spec = fit(PreprocessingSection(blocks=[{"block": "image", "size": [8, 6], "grayscale": True, "scale": 255}]),
               X)
    out = transform(spec, X).reshape(4, 8, 6, 1)
    assert spec.feature_shape == [8, 6, 1]
    # halving exactly: half-pixel centres average each 2x2 block
    blocks = X.astype(np.float64).reshape(4, 8, 2, 6, 2, 3).mean(axis=(2, 4))
    expected = (blocks * np.array([0.2989, 0.5870, 0.1140])).sum(axis=3) / 255
    assert np.allclose(out[..., 0], expected, atol=1e-6)
    same = fit(PreprocessingSection(blocks=[{"block": "image"}]), X[..., :1])
    assert np.array_equal(transform(same, X[..., :1]), X[..., :1].reshape(4, -1))
    with pytest.raises(ValueError, match=r"image block needs \(H, W\)"):
        fit(PreprocessingSection(blocks=["image"]), np.zeros((2, 4, 4, 2)))


def test_transform_refuses_another_raw_shape() -> None:
    spec = fit(PreprocessingSection(), np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"raw input shape \[5\] does not match the model's \[4\]"):
        transform(spec, np.zeros((1, 5)))


_BLOCK_SRC = """
import numpy as np

def energy(X, gain=1.0):
    return gain * (X ** 2).sum(axis=1, keepdims=True)

def broken(X):
    return X[:1]
"""


def test_custom_block_carries_its_source(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_blocks_t1.py").write_text(_BLOCK_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    X = np.arange(12.0).reshape(3, 4)
    spec = fit(PreprocessingSection(blocks=[{"block": "my_blocks_t1:energy", "params": {"gain": 2.0}}]), X)
    manifest = json.loads(json.dumps(spec.model_dump()))
    (tmp_path / "my_blocks_t1.py").unlink()  # the device has no such module: the manifest brings it
    sys.modules.pop("my_blocks_t1", None)
    got = transform(FittedPreprocessing.model_validate(manifest), X)
    assert got[:, 0].tolist() == [28.0, 252.0, 732.0]
    manifest["blocks"][0]["source"] += "\nimport os  # altered\n"
    with pytest.raises(ValidationError, match="source does not match its sha256"):
        FittedPreprocessing.model_validate(manifest)


def test_custom_block_errors(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_blocks_t2.py").write_text(_BLOCK_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    X = np.ones((3, 4))
    with pytest.raises(ValueError, match="no module 'nowhere_mod' as a .py file in the project directory"):
        fit(PreprocessingSection(blocks=["nowhere_mod:fn"]), X)
    with pytest.raises(ValueError, match="module has no function 'nothing'"):
        fit(PreprocessingSection(blocks=["my_blocks_t2:nothing"]), X)
    with pytest.raises(ValueError, match=r"returned shape \[1, 4\] for a batch of 3"):
        fit(PreprocessingSection(blocks=["my_blocks_t2:broken"]), X)
    with pytest.raises(ValueError, match=r"'my_blocks_t2:energy' failed: TypeError: .*unexpected keyword"):
        fit(PreprocessingSection(blocks=[{"block": "my_blocks_t2:energy", "params": {"gian": 2}}]), X)


def test_custom_block_is_found_in_the_project_directory(tmp_path) -> None:
    (tmp_path / "proj_blocks_t4.py").write_text(_BLOCK_SRC)  # not on sys.path: found through project_dir
    spec = fit(PreprocessingSection(blocks=["proj_blocks_t4:energy"]), np.ones((2, 3)), project_dir=tmp_path)
    assert transform(spec, np.ones((2, 3)))[:, 0].tolist() == [3.0, 3.0]


def test_package_time_refusal_names_the_block(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    X = np.ones((3, 4))
    spec = fit(PreprocessingSection(blocks=["standardize"]), X).model_dump()
    unknown = {**spec, "blocks": [{"block": "wavelet_denoise", "level": 2}]}
    with pytest.raises(UsageError, match="package for pi4: unknown pre-processing block 'wavelet_denoise'"):
        check_deployable(unknown, "pi4", "tflite")
    (tmp_path / "my_blocks_t3.py").write_text(_BLOCK_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    custom = fit(PreprocessingSection(blocks=["my_blocks_t3:energy"]), X)
    assert check_deployable(custom.model_dump(), "pi4", "tflite") == custom  # Linux-class: the agent runs it
    with pytest.raises(UsageError, match="block 'my_blocks_t3:energy' runs only on Linux-class targets; "
                                         "nano33 is a microcontroller"):
        check_deployable(custom.model_dump(), "nano33", "tflm-cmsis-nn")


def test_a_manifest_with_an_unfitted_block_does_not_load() -> None:
    base = fit(PreprocessingSection(), np.ones((3, 4))).model_dump()
    for block, what in (({"block": "standardize"}, "mean, std"), ({"block": "log_mel"}, "sample_rate_hz"),
                        ({"block": "x_mod:f"}, "source, sha256")):
        with pytest.raises(ValidationError, match=f"block '{block['block']}' is not fitted \\(no {what}"):
            FittedPreprocessing.model_validate({**base, "blocks": [block]})


def test_agent_refuses_a_manifest_with_an_unknown_block_before_install() -> None:
    from tinymlops.fleet.answers import checked_specs
    from tinymlops.fleet.packages import PackageRejected

    spec = fit(PreprocessingSection(), np.ones((3, 4))).model_dump()
    manifest = {"preprocessing": {**spec, "blocks": [{"block": "fft_v9"}]}, "reference": {}}
    with pytest.raises(PackageRejected, match="unknown pre-processing block 'fft_v9'"):
        checked_specs(manifest)


def test_registry_package_with_an_unknown_block_is_not_written(tmp_path) -> None:
    from tinymlops.compress.export import write_package

    model = tmp_path / "m.tflite"
    model.write_bytes(b"\0" * 16)
    spec = fit(PreprocessingSection(), np.ones((3, 4))).model_dump()
    with pytest.raises(UsageError, match="package of m.tflite: unknown pre-processing block 'denoise'"):
        write_package(tmp_path / "pkg", model, {"preprocessing": {**spec, "blocks": ["denoise"]}})
    assert not (tmp_path / "pkg").exists()
    assert (write_package(tmp_path / "pkg", model, {"preprocessing": spec}) / "manifest.json").is_file()


def test_agent_refuses_a_custom_block_whose_code_does_not_load_here(tmp_path, monkeypatch) -> None:
    from tinymlops.fleet.answers import checked_specs
    from tinymlops.fleet.packages import PackageRejected

    (tmp_path / "my_blocks_t5.py").write_text("def f(X):\n    return X\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = fit(PreprocessingSection(blocks=["my_blocks_t5:f"]), np.ones((2, 3))).model_dump()
    src = "import package_not_on_this_device\n\ndef f(X):\n    return X\n"
    import hashlib

    spec["blocks"][0].update(source=src, sha256=hashlib.sha256(src.encode()).hexdigest())
    with pytest.raises(PackageRejected, match="'my_blocks_t5:f': its code does not load here: "
                                              "ModuleNotFoundError: No module named 'package_not_on_this_device'"):
        checked_specs({"preprocessing": spec, "reference": {}})
