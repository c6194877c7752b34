"""Static flash/RAM estimate of a TFLM firmware: measured base + measured per-op sizes + model bytes + arena.

Flash = the base firmware (TFLM interpreter/allocator/flatbuffers, newlib nano, startup, harness, identity
pre-processing) + each distinct op's linked size - the code those ops share, counted once (CMSIS-NN's requantisation
and matrix kernels, TFLM's kernel utilities) + the model flatbuffer, all from
:mod:`tinymlops.profile.firmware_size_table` (measured by linking probe firmware, ``tinymlops.export.sizes``).
RAM = the arena on the 32-bit device + the base's and ops' ``.data``/``.bss`` + a stack allowance. The arena
figures the profiler has (TFLM's recording allocator on this 64-bit host, or ``arena.py``'s estimate of it) hold
TFLM's structs at 64-bit size; on a Cortex-M they are smaller (sizeof measured with arm-none-eabi-g++ vs the host
g++ on this TFLM tree, ``-DTF_LITE_STATIC_MEMORY``): TfLiteEvalTensor 24 -> 12 B (one per tensor),
NodeAndRegistration 64 -> 32 B (one per op), TfLiteTensor 64 -> 32 B and TfLiteAffineQuantization 24 -> 12 B (one
per graph input/output).

Fallbacks, stated in the result's notes: a core without a table uses the Cortex-M4 table of the same kernels
(Thumb-2 code; the M7/M33 libraries link within ~1 % of the M4's), then the other kernels' table; an op the table
does not list costs the largest op the table lists (an over- rather than an under-estimate: a firmware that does
not fit flash is the costly mistake). Targets with a non-TFLM runtime (X-CUBE-AI, vendor kernels) keep their
runtime's fixed size (``targets.py``), as do targets whose YAML sets ``runtime_flash_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: stack the firmware needs besides the arena: the harness + TFLM's Invoke + CMSIS-NN kernels; the largest
#: high-water mark measured under QEMU (benchmarks/mcu.py: vibration, KWS, VWW, IC, AD on M4: 832-1,456 B) rounded up to 256 B
STACK_BYTES = 1_536
KERNELS = {"tflm-cmsis-nn": "cmsis_nn", "tflm-reference": "reference"}
#: bytes a 32-bit MCU saves over the 64-bit host per tensor / op / graph input-output (see the module docstring)
SAVED_PER_TENSOR, SAVED_PER_OP, SAVED_PER_IO = 24 - 12, 64 - 32, (64 - 32) + (24 - 12)


def device_arena_bytes(host_arena_bytes: int, n_tensors: int, n_ops: int, n_io: int) -> int:
    """Return the arena on a 32-bit MCU for an arena measured (or estimated) with 64-bit structs."""
    return max(0, host_arena_bytes - SAVED_PER_TENSOR * n_tensors - SAVED_PER_OP * n_ops - SAVED_PER_IO * n_io)


@dataclass(frozen=True)
class FirmwareSize:
    """A firmware size estimate and where each part comes from."""

    flash_bytes: int
    ram_bytes: int
    flash_by_part: dict[str, int]
    table: str
    notes: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        return f"measured TFLM base + per-op sizes ({self.table}) + model"


def _entry(core: str, kernels: str) -> tuple[str, dict[str, Any]] | None:
    from tinymlops.profile.firmware_size_table import TABLE

    other = "reference" if kernels == "cmsis_nn" else "cmsis_nn"
    for key in (f"{core}/{kernels}", f"cortex-m4/{kernels}", f"{core}/{other}", f"cortex-m4/{other}"):
        if key in TABLE:
            return key, TABLE[key]
    return None


def estimate(op_types: dict[str, int] | list[str], model_bytes: int, core: str, runtime: str,
             arena_bytes: int) -> FirmwareSize | None:
    """Estimate a TFLM firmware's flash and RAM for a model's ops; None for a non-TFLM runtime or no table.

    ``arena_bytes`` is the arena on the device (see :func:`device_arena_bytes`).
    """
    kernels = KERNELS.get(runtime)
    found = _entry(core, kernels) if kernels else None
    if found is None:
        return None
    key, e = found
    notes = []
    if key != f"{core}/{kernels}":
        notes.append(f"firmware size: no table for {core}/{kernels}; used {key}")
    ops = sorted(set(op_types))
    unknown = [op for op in ops if op not in e["op_flash_bytes"]]
    worst = max(e["op_flash_bytes"].values())
    if unknown:
        notes.append(f"firmware size: ops not in the {key} table counted as the largest measured op "
                     f"({worst:,} B each): {', '.join(unknown)}")
    op_flash = sum(e["op_flash_bytes"].get(op, worst) for op in ops)
    # a group of ops sharing n bytes: each op's size holds them, the firmware once
    op_flash -= sum(n * (len(set(group) & set(ops)) - 1) for group, n in e.get("shared_flash_bytes", [])
                    if len(set(group) & set(ops)) > 1)
    op_ram = sum(e["op_ram_bytes"].get(op, 0) for op in ops)
    parts = {"base": int(e["base_flash_bytes"]), "ops": int(op_flash), "model": int(model_bytes)}
    return FirmwareSize(sum(parts.values()), int(arena_bytes + e["base_ram_bytes"] + op_ram + STACK_BYTES), parts,
                        key, notes)
