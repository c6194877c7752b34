"""Seeded generators of each template's sample dataset, written in the format a real project would bring.

Small (a few hundred samples, at most a few MB) and offline, yet shaped like real data: class-dependent physics
plus per-unit / per-session / per-recording variation and noise, so a model has to generalise across groups and
a group split means something. Every generator takes a ``seed`` and writes the same bytes for the same seed.
"""

from __future__ import annotations

import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: what a generator returns: a short description of what it wrote (shown by ``tinymlops init``)
Summary = dict[str, object]

# ---------------------------------------------------------------------------------------------------------------
# tabular: one row per reading of an air-conditioning unit, label column "condition"
# ---------------------------------------------------------------------------------------------------------------

TABULAR_FEATURES = ["outdoor_c", "supply_air_c", "return_air_c", "suction_kpa", "discharge_kpa",
                    "compressor_a", "fan_rpm", "filter_dp_pa"]
TABULAR_CLASSES = ["normal", "refrigerant_leak", "fan_fault", "clogged_filter"]


def tabular_csv(path: Path, seed: int = 0, rows_per_class: int = 150) -> Summary:
    """Write ``path``: readings of rooftop air-conditioning units in four conditions (a CSV with a label column).

    The outdoor temperature drives the pressures and the compressor current of every class; each fault shifts a
    few readings the way it does on a real unit (a leak lowers suction pressure and the air temperature drop, a
    failing fan lowers fan speed and raises discharge pressure, a clogged filter raises the filter pressure drop).
    ``normal`` has twice the rows of each fault, as in the field.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    frames = []
    for cls in TABULAR_CLASSES:
        n = rows_per_class * (2 if cls == "normal" else 1)
        outdoor = rng.uniform(18.0, 38.0, n)
        unit_bias = rng.normal(0.0, 1.0, n)  # units differ: calibration, age, installation
        ret = rng.normal(24.0, 1.2, n)
        delta_t = rng.normal(11.0, 0.8, n)
        suction = 480 + 4.0 * (outdoor - 28) + rng.normal(0, 15, n) + 8 * unit_bias
        discharge = 1650 + 32.0 * (outdoor - 28) + rng.normal(0, 60, n) + 20 * unit_bias
        current = 14 + 0.22 * (outdoor - 28) + rng.normal(0, 0.6, n)
        fan = rng.normal(1100, 35, n)
        filter_dp = rng.gamma(9.0, 9.0, n)  # ~80 Pa, right-skewed
        if cls == "refrigerant_leak":
            severity = rng.uniform(0.3, 1.0, n)
            suction -= 120 * severity
            delta_t -= 4.5 * severity
            current -= 1.6 * severity
        elif cls == "fan_fault":
            severity = rng.uniform(0.3, 1.0, n)
            fan -= 420 * severity
            discharge += 260 * severity
            current += 2.2 * severity
        elif cls == "clogged_filter":
            severity = rng.uniform(0.3, 1.0, n)
            filter_dp += 130 * severity
            delta_t += 2.5 * severity
            fan += 60 * severity  # the fan works against the filter
        frames.append(pd.DataFrame({
            "outdoor_c": outdoor, "supply_air_c": ret - delta_t, "return_air_c": ret, "suction_kpa": suction,
            "discharge_kpa": discharge, "compressor_a": current, "fan_rpm": fan, "filter_dp_pa": filter_dp,
            "condition": cls}))
    df = pd.concat(frames, ignore_index=True).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    df[TABULAR_FEATURES] = df[TABULAR_FEATURES].round(2)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return {"path": path.name, "rows": len(df), "columns": len(df.columns), "classes": TABULAR_CLASSES}


# ---------------------------------------------------------------------------------------------------------------
# time series: a wrist accelerometer at 50 Hz, one activity per recording session
# ---------------------------------------------------------------------------------------------------------------

TIMESERIES_CLASSES = ["idle", "walk", "run", "stairs"]
TIMESERIES_RATE_HZ = 50.0
_EPOCH_S = 1_764_547_200.0  # 2025-12-01T00:00:00Z: sessions are recorded over the following days


def _random_rotation(rng: np.random.Generator, max_deg: float = 25.0) -> np.ndarray:
    """A random small tilt of the sensor on the wrist (each session straps it on a little differently)."""
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _activity(cls: str, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return body acceleration (g, shape n x 3 in the body frame) for one session of an activity."""
    n = len(t)
    if cls == "idle":
        drift = np.cumsum(rng.normal(0, 0.002, (n, 3)), axis=0)
        return drift - drift.mean(axis=0) + rng.normal(0, 0.01, (n, 3))
    cadence_hz = {"walk": rng.uniform(1.6, 2.1), "run": rng.uniform(2.5, 3.1), "stairs": rng.uniform(1.2, 1.6)}[cls]
    amp = {"walk": rng.uniform(0.25, 0.4), "run": rng.uniform(0.8, 1.3), "stairs": rng.uniform(0.35, 0.55)}[cls]
    phase = 2 * np.pi * cadence_hz * t + 0.3 * np.sin(2 * np.pi * 0.05 * t)  # cadence wanders slowly
    vertical = amp * (np.sin(phase) + 0.35 * np.sin(2 * phase + 0.6) + 0.15 * np.sin(3 * phase))
    forward = 0.5 * amp * np.sin(phase + 1.1) + (0.25 * amp * np.sign(np.sin(phase)) if cls == "stairs" else 0)
    lateral = 0.3 * amp * np.sin(0.5 * phase + 0.4)  # arm swing at half the step rate
    if cls == "run":  # foot strikes: short impulses once per step
        strike = np.clip(np.sin(phase - 0.5), 0.95, None) - 0.95
        vertical += 12 * amp * strike
    body = np.stack([forward, lateral, vertical], axis=1)
    return body + rng.normal(0, 0.04, (n, 3))


def timeseries_csv(path: Path, seed: int = 0, sessions_per_class: int = 8, seconds: float = 24.0) -> Summary:
    """Write ``path``: rows ``timestamp, session, acc_x, acc_y, acc_z, activity`` from a wrist accelerometer.

    Each session is one person doing one activity for ``seconds`` at 50 Hz, with its own cadence, intensity and
    sensor orientation (gravity falls on different axes), so windows of one session resemble each other more than
    windows of other sessions: split by ``session`` to measure what a new person would see.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = int(round(seconds * TIMESERIES_RATE_HZ))
    t = np.arange(n) / TIMESERIES_RATE_HZ
    frames = []
    order = [c for c in TIMESERIES_CLASSES for _ in range(sessions_per_class)]
    for i, idx in enumerate(rng.permutation(len(order))):
        cls = order[idx]
        rot = _random_rotation(rng)
        gravity = rot @ np.array([0.0, 0.0, 1.0])
        acc = _activity(cls, t, rng) @ rot.T + gravity
        start = _EPOCH_S + i * 3600.0 + rng.uniform(0, 600)
        frames.append(pd.DataFrame({
            "timestamp": np.round(start + t, 3), "session": f"s{i:02d}",
            "acc_x": acc[:, 0].round(4), "acc_y": acc[:, 1].round(4), "acc_z": acc[:, 2].round(4), "activity": cls}))
    df = pd.concat(frames, ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return {"path": path.name, "rows": len(df), "sessions": len(frames), "rate_hz": TIMESERIES_RATE_HZ,
            "classes": TIMESERIES_CLASSES}


# ---------------------------------------------------------------------------------------------------------------
# audio: one WAV file per clip, one folder per class
# ---------------------------------------------------------------------------------------------------------------

AUDIO_CLASSES = ["background", "beep", "chirp", "knock"]
AUDIO_RATE_HZ = 8000


def _background(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Room noise: brown-ish noise plus, sometimes, mains hum."""
    white = rng.normal(0, 1, n)
    brown = np.cumsum(white)
    brown -= np.convolve(brown, np.ones(64) / 64, mode="same")  # remove the wander, keep the low rumble
    noise = 0.6 * brown / (np.std(brown) + 1e-9) + 0.4 * white
    if rng.random() < 0.5:
        t = np.arange(n) / rate
        noise += rng.uniform(0.2, 0.8) * np.sin(2 * np.pi * rng.choice([50.0, 60.0]) * t)
    return noise / (np.std(noise) + 1e-9)


def _event(cls: str, n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """The sound of one class, placed at a random time inside ``n`` samples."""
    out = np.zeros(n)
    if cls == "background":
        return out
    dur = int(rate * rng.uniform(0.15, 0.45))
    t = np.arange(dur) / rate
    if cls == "beep":  # a device beep: a steady tone with a few harmonics
        f0 = rng.uniform(500, 1800)
        sig = sum(a * np.sin(2 * np.pi * k * f0 * t) for k, a in ((1, 1.0), (2, 0.3), (3, 0.15)) if k * f0 < rate / 2)
        env = np.minimum(1, np.minimum(t, t[-1] - t) / 0.01)
    elif cls == "chirp":  # a sweep up or down over an octave or more
        f_a, f_b = rng.uniform(300, 900), rng.uniform(1800, 3500)
        if rng.random() < 0.5:
            f_a, f_b = f_b, f_a
        sig = np.sin(2 * np.pi * (f_a * t + (f_b - f_a) * t**2 / (2 * t[-1])))
        env = np.minimum(1, np.minimum(t, t[-1] - t) / 0.02)
    else:  # knock: 2-4 impulses exciting a damped resonance of the surface
        sig = np.zeros(dur)
        res_hz, decay_s = rng.uniform(250, 1200), rng.uniform(0.01, 0.04)
        ring = np.exp(-t / decay_s) * np.sin(2 * np.pi * res_hz * t)
        for start in sorted(rng.integers(0, max(1, dur - dur // 4), rng.integers(2, 5))):
            sig[start:] += rng.uniform(0.6, 1.0) * ring[: dur - start]
        env = np.ones(dur)
    start = int(rng.integers(0, n - dur))
    out[start:start + dur] = sig * env / (np.max(np.abs(sig)) + 1e-9)
    return out


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def audio_folder(root: Path, seed: int = 0, clips_per_class: int = 80) -> Summary:
    """Write ``root/<class>/<class>_NNN.wav``: 16-bit mono clips of 0.9-1.1 s at 8 kHz, one folder per class.

    Classes: ``background`` (room noise, sometimes mains hum), ``beep`` (a tone with harmonics), ``chirp`` (a
    frequency sweep) and ``knock`` (damped impulses). Every clip has background noise at a random level (SNR
    3-20 dB) and a random gain; the event starts at a random time; clip lengths vary, as recordings do.
    """
    rng = np.random.default_rng(seed)
    for cls in AUDIO_CLASSES:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(clips_per_class):
            n = int(AUDIO_RATE_HZ * rng.uniform(0.9, 1.1))
            event = _event(cls, n, AUDIO_RATE_HZ, rng)
            snr_db = rng.uniform(3, 20)
            noise = _background(n, AUDIO_RATE_HZ, rng) * (10 ** (-snr_db / 20) if cls != "background" else 1.0)
            clip = event + 0.3 * noise
            clip *= rng.uniform(0.2, 0.9) / (np.max(np.abs(clip)) + 1e-9)
            _write_wav(root / cls / f"{cls}_{i:03d}.wav", clip, AUDIO_RATE_HZ)
    return {"path": root.name, "files": clips_per_class * len(AUDIO_CLASSES), "rate_hz": AUDIO_RATE_HZ,
            "classes": AUDIO_CLASSES}


# ---------------------------------------------------------------------------------------------------------------
# images: one PNG per picture, one folder per class
# ---------------------------------------------------------------------------------------------------------------

IMAGE_CLASSES = ["circle", "square", "triangle", "cross"]
IMAGE_SIDE = 48


def _polygon(cls: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if cls == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        pts = [(x * r * 0.8, y * r * 0.8) for x, y in corners]
    elif cls == "triangle":
        pts = [(r * np.cos(a), r * np.sin(a)) for a in np.deg2rad([90, 210, 330])]
    else:  # cross: a plus sign of width r/2.5
        w = r / 2.5
        pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w),
               (-w, -w)]
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _luma(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def image_folder(root: Path, seed: int = 0, images_per_class: int = 150) -> Summary:
    """Write ``root/<class>/<class>_NNN.png``: 48x48 RGB pictures of a shape on a background, one folder per class.

    A part of random colour (lighter than the belt) on a dark conveyor belt; random size, position, rotation,
    an occasional distractor line, sensor noise: a camera-like task that a small CNN learns and a linear model
    does not.
    """
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    side = IMAGE_SIDE
    for cls in IMAGE_CLASSES:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(images_per_class):
            bg = rng.integers(25, 75) + rng.integers(-12, 13, 3)  # the belt: dark grey, a little tinted
            fg = rng.integers(0, 256, 3)
            while _luma(fg) < _luma(bg) + 70:  # a part of any colour, lighter than the belt even in grayscale
                fg = rng.integers(0, 256, 3)
            img = Image.new("RGB", (side, side), tuple(int(v) for v in bg))
            draw = ImageDraw.Draw(img)
            r = rng.uniform(0.22, 0.38) * side
            cx, cy = rng.uniform(r, side - r, 2)
            if rng.random() < 0.3:  # a distractor: a thin line somewhere
                x0, y0, x1, y1 = rng.uniform(0, side, 4)
                draw.line([(x0, y0), (x1, y1)], fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=1)
            fill = tuple(int(v) for v in fg)
            if cls == "circle":
                rx, ry = r * rng.uniform(0.85, 1.0), r * rng.uniform(0.85, 1.0)
                draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)
            else:
                draw.polygon(_polygon(cls, cx, cy, r, rng.uniform(0, 2 * np.pi)), fill=fill)
            img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8)))
            pixels = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (side, side, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / cls / f"{cls}_{i:03d}.png")
    return {"path": root.name, "files": images_per_class * len(IMAGE_CLASSES), "size": [side, side],
            "classes": IMAGE_CLASSES}


#: template -> (path inside the project, writer); the path is what the template's config names
WRITERS: dict[str, tuple[str, Callable[..., Summary]]] = {
    "tabular": ("data/hvac.csv", tabular_csv),
    "timeseries": ("data/activity.csv", timeseries_csv),
    "audio": ("data/sounds", audio_folder),
    "image": ("data/shapes", image_folder),
}
