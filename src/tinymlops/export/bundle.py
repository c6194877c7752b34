"""Self-contained C/C++ bundles of a registered int8 model for a microcontroller target (c, cmake, arduino).

A bundle holds the model as an aligned ``const`` array, a MicroMutableOpResolver with exactly the model's ops, the
arena size TFLM measured plus a stated margin, quantisation parameters, the label map, the fitted pre-processing
as C99 data for ``tm_preprocess.c``, a ``tm_run_inference()`` API, an example main and a README. It is signed like
packages (``export.json`` lists every file's sha256; ``export.sig`` is the Ed25519 signature of its bytes).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any, Literal

import numpy as np

from tinymlops.errors import ModelFormatError, UsageError
from tinymlops.export.model_info import ModelInfo, read_model_info, resolver_method
from tinymlops.export.preprocess_c import PP_SOURCES, buffer_floats, c_source, render_config
from tinymlops.preprocessing import FittedPreprocessing

Format = Literal["c", "cmake", "arduino"]
FORMATS: tuple[str, ...] = ("c", "cmake", "arduino")
EXPORT_SCHEMA = "tinymlops.export/1"
EXPORT_MANIFEST = "export.json"
EXPORT_SIGNATURE = "export.sig"
#: arena = TFLM-measured bytes x (1 + margin) + slack, rounded up to 1 KiB: the measurement runs on a 64-bit host
#: with reference kernels (CMSIS-NN adds scratch buffers), and TFLM needs head room beyond arena_used_bytes() while
#: it prepares ops (an AD model reporting 15,828 B fails to allocate in 17,408 B).
ARENA_MARGIN = 0.25
ARENA_SLACK_BYTES = 2048


@dataclass
class ExportSource:
    """A registered version's model file and manifest, downloaded (or given directly, for tests and benchmarks)."""

    model_name: str
    version: str
    variant: str
    model_path: Path
    manifest: dict[str, Any]
    run_id: str = ""


@dataclass
class ExportResult:
    """What ``export`` wrote: the bundle directory, its files, figures and where it was logged."""

    out_dir: Path
    format: str
    target: str
    files: list[str]
    arena_bytes: int
    arena_measured_bytes: int
    ops: list[str]
    input: dict[str, Any]
    output: dict[str, Any]
    key_id: str
    artifact_path: str = ""
    firmware: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "format": self.format, "target": self.target, "files": self.files,
                "arena_bytes": self.arena_bytes, "arena_measured_bytes": self.arena_measured_bytes,
                "arena_margin": f"x{1 + ARENA_MARGIN:g} + {ARENA_SLACK_BYTES} B, rounded up to 1 KiB",
                "ops": self.ops, "input": self.input, "output": self.output, "key_id": self.key_id,
                "mlflow_artifact_path": self.artifact_path, "firmware": self.firmware}


def arena_with_margin(measured: int) -> int:
    """Return the arena size a bundle declares for a TFLM-measured arena (see ARENA_MARGIN)."""
    return int(-(-(measured * (1 + ARENA_MARGIN) + ARENA_SLACK_BYTES) // 1024) * 1024)


def check_exportable(src: ExportSource, target: Any) -> ModelInfo:
    """Return the model's info, or raise UsageError/ModelFormatError saying why it cannot run on the MCU target."""
    from tinymlops.profile.profiler import analyze, check_support
    from tinymlops.profile.targets import MCU_CORES

    if target.core not in MCU_CORES:
        raise UsageError(f"target {target.name} is a {target.core} application processor: export builds "
                         "microcontroller firmware; use `tinymlops package` for Linux devices")
    if src.model_path.suffix != ".tflite":
        raise UsageError(f"{src.model_name} v{src.version} is a {src.model_path.suffix.lstrip('.')} model; "
                         f"{target.name} runs {target.runtime}: export an int8 .tflite variant (ptq-int8, qat-int8)")
    info = read_model_info(src.model_path)
    if info.input.dtype != "int8" or info.output.dtype != "int8":
        raise UsageError(f"{src.model_name} v{src.version} ({src.variant or 'float'}) has {info.input.dtype} "
                         f"input and {info.output.dtype} output: microcontroller export needs a full-integer int8 "
                         "model (a ptq-int8 or qat-int8 variant)")
    reasons = check_support(analyze(src.model_path), target)
    if reasons:
        raise UsageError(f"{src.model_name} v{src.version} cannot run on {target.name}: {'; '.join(reasons)}")
    return info


def measure_arena_bytes(model_path: Path) -> int:
    """Return the arena TFLM's recording allocator measures for the model (ModelFormatError if it cannot run)."""
    from tinymlops.runtimes.tflm import measure_arena

    return measure_arena(model_path)


def _c_array(data: bytes, per_line: int = 16) -> str:
    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + per_line]) for i in range(0, len(data), per_line)]
    return ",\n  ".join(rows)


def _float_array(values: np.ndarray, per_line: int = 8) -> str:
    flat = [f"{float(v):.9e}f" for v in np.asarray(values, np.float32).ravel()]
    return ",\n  ".join(", ".join(flat[i:i + per_line]) for i in range(0, len(flat), per_line))


def _c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_sources(src: ExportSource, target: Any, info: ModelInfo, arena_bytes: int, measured: int,
                   example: np.ndarray, example_label: str) -> dict[str, str]:
    """Return the bundle's source files (path inside ``src/`` -> text)."""
    spec = FittedPreprocessing(**src.manifest["preprocessing"])
    features_floats, work_floats = buffer_floats(spec)
    labels = [str(c) for c in src.manifest["class_names"]]
    if info.output.elements != len(labels) or info.input.elements != spec.n_features:
        raise ModelFormatError(f"{src.model_path}: model input/output ({info.input.elements}/"
                               f"{info.output.elements}) do not match the manifest's features/classes "
                               f"({spec.n_features}/{len(labels)})")
    raw_len = int(np.prod(spec.raw_shape))
    values = {
        "model_name": src.model_name, "model_version": src.version, "variant": src.variant or "int8",
        "target": target.name, "raw_len": raw_len, "raw_shape": "x".join(map(str, spec.raw_shape)),
        "n_features": spec.n_features, "n_classes": len(labels), "arena_bytes": arena_bytes,
        "arena_note": f"TFLM measured {measured} B; x{1 + ARENA_MARGIN:g} + {ARENA_SLACK_BYTES} B margin",
        "in_scale": f"{info.input.scale:.9e}", "in_zp": info.input.zero_point,
        "out_scale": f"{info.output.scale:.9e}", "out_zp": info.output.zero_point,
        "labels": ", ".join(_c_string(x) for x in labels), "ops_list": ", ".join(info.ops),
        "n_ops": max(1, len(info.ops)), "pp_work_floats": work_floats,
        "features_floats": features_floats,
        "resolver_adds": "\n".join(f"  if (resolver->{resolver_method(op)}() != kTfLiteOk) return -1;"
                                   for op in info.ops),
        "example_label": example_label,
    }
    model = src.model_path.read_bytes()
    files = {name: c_source(name) for name in PP_SOURCES}
    files["tm_pp_config.c"] = render_config(spec)
    files["tm_model.h"] = Template(c_source("tm_model.h.in")).substitute(values)
    files["tm_model.cc"] = Template(c_source("tm_model.cc.in")).substitute(values)
    files["tm_model_data.cc"] = (
        f"// Generated by tinymlops: {src.model_name} v{src.version} ({len(model)} bytes, sha256 "
        f"{hashlib.sha256(model).hexdigest()[:16]}...). 16-byte aligned as TFLM requires.\n"
        f"extern \"C\" alignas(16) const unsigned char tm_model_tflite[{len(model)}] = {{\n  {_c_array(model)}\n}};\n"
        f"extern \"C\" const unsigned int tm_model_tflite_len = {len(model)};\n")
    files["tm_example_input.c"] = (
        f"/* One raw input of the test split (class {example_label}) for the example. */\n"
        f"const float tm_example_input[{raw_len}] = {{\n  {_float_array(example)}\n}};\n")
    files["example_main.cc"] = Template(c_source("example_main.cc.in")).substitute(values)
    files["_values.json"] = json.dumps({k: v for k, v in values.items() if k != "resolver_adds"})
    return files


def layout(fmt: str, files: dict[str, str], src: ExportSource, target: Any) -> dict[str, str]:
    """Place the sources for a bundle format; return (relative path -> text) including README and build files."""
    values = json.loads(files.pop("_values.json"))
    example = files.pop("example_main.cc")
    project = re.sub(r"[^A-Za-z0-9_]", "_", f"{src.model_name}_v{src.version}")
    values["project_name"] = project
    out = {f"src/{k}": v for k, v in files.items()}
    if fmt == "arduino":
        out = {f"src/{k}": v for k, v in files.items() if k != "tm_example_input.c"}
        # the library's main header (Arduino's IDE lists it under Sketch > Include Library)
        out[f"src/{project}.h"] = '#pragma once\n#include "tm_model.h"\n'
        out[f"examples/{project}/{project}.ino"] = Template(c_source("example_arduino.ino.in")).substitute(values)
        out[f"examples/{project}/tm_example_input.h"] = files["tm_example_input.c"].replace(
            "const float tm_example_input", "static const float tm_example_input")
        out["library.properties"] = (
            f"name={project}\nversion=1.0.{src.version}\nauthor=tinymlops\nmaintainer=tinymlops\n"
            f"sentence={src.model_name} v{src.version} for {target.name} (TFLM)\n"
            f"paragraph=Pre-processing, int8 model and run_inference() generated by tinymlops.\n"
            f"category=Data Processing\nurl=https://github.com/tinymlops\narchitectures=*\n"
            f"depends=Arduino_TensorFlowLite\n")
    else:
        out["examples/main.cc"] = example
    if fmt == "cmake":
        out["CMakeLists.txt"] = Template(c_source("CMakeLists.txt.in")).safe_substitute(values)
    out["README.md"] = Template(c_source("README.md.in")).substitute(values, format=fmt)
    for path, text in out.items():
        left = re.findall(r"\$\{[a-z_]+\}", text)
        if left:
            raise AssertionError(f"template placeholders left in {path}: {left}")
    return out


def sign_bundle(out_dir: Path, meta: dict[str, Any]) -> str:
    """Write ``export.json`` (file hashes + meta) and ``export.sig``; return the signing key id."""
    from tinymlops.fleet.packages import canonical_json, key_id, signing_key

    key = signing_key()
    files = {str(p.relative_to(out_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(out_dir.rglob("*")) if p.is_file() and p.name not in (EXPORT_MANIFEST, EXPORT_SIGNATURE)}
    kid = key_id(key.public_key())
    manifest = canonical_json({"schema": EXPORT_SCHEMA, **meta, "files": files, "key_id": kid,
                               "created_unix_s": time.time()})
    (out_dir / EXPORT_MANIFEST).write_bytes(manifest)
    (out_dir / EXPORT_SIGNATURE).write_text(base64.b64encode(key.sign(manifest)).decode())
    return kid


def verify_bundle(out_dir: Path, public_key: Any) -> dict[str, Any]:
    """Check a bundle's signature and every file hash; return its manifest (UsageError naming what differs)."""
    from cryptography.exceptions import InvalidSignature

    manifest_bytes = (out_dir / EXPORT_MANIFEST).read_bytes()
    try:
        public_key.verify(base64.b64decode((out_dir / EXPORT_SIGNATURE).read_text()), manifest_bytes)
    except InvalidSignature:
        raise UsageError(f"{out_dir}: bad signature on {EXPORT_MANIFEST}") from None
    manifest: dict[str, Any] = json.loads(manifest_bytes)
    for rel, sha in manifest["files"].items():
        p = out_dir / rel
        if not p.is_file() or hashlib.sha256(p.read_bytes()).hexdigest() != sha:
            raise UsageError(f"{p}: missing or altered since export")
    return manifest
