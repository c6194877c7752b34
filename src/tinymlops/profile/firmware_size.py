"""Static flash/RAM estimate of a TFLM firmware: what the exported firmware links, part by part.

Flash = the base firmware (TFLM interpreter/allocator/flatbuffers, newlib nano, startup, harness, identity
pre-processing) + each distinct op's linked size - the code those ops share, counted once (CMSIS-NN's requantisation
and matrix kernels, TFLM's kernel utilities) + the model flatbuffer, all from
:mod:`tinymlops.profile.firmware_size_table` (measured by linking probe firmware, ``tinymlops.export.sizes``).

RAM = what the linked ELF holds (``.data + .bss``) + the stack the firmware uses, as ``tinymlops export`` builds it:

- the arena the bundle declares: TFLM's measured (or the graph's estimated) arena with the export's stated margin
  (:func:`tinymlops.export.bundle.arena_with_margin`, the same function the export calls);
- TFLM's, libc's and the bundle's own ``.data``/``.bss`` (interpreter storage, a one-op resolver) from the table's
  measured base, + the resolver's bytes per further op (``resolver_ram_bytes_per_op``, measured) + per-op RAM;
- the pre-processing's static buffers (feature + work floats) as the exported C sizes them for the model's fitted
  blocks (:func:`tinymlops.export.preprocess_c.buffer_floats`), when the version's pre-processing is known;
- the stack: the table's measured ``stack_base_bytes`` (main, the harness, TFLM's interpreter and the identity
  pre-processing call chain) + the largest ``op_stack_bytes`` over the model's ops (what that op's kernel adds) +
  ``STACK_MARGIN_BYTES`` (one interrupt's exception frame at the deepest point, 108 B). Base and per-op figures are
  stack high-water marks of single-op probe firmware run under QEMU (``tinymlops.export.sizes --stack``). An op the
  table does not list, or a table without stack figures, falls back to the fixed ``STACK_BYTES`` allowance (or the
  measured figure if larger), with a note. Pre-processing blocks run before ``Invoke`` on the same stack; their
  frames are not measured separately (the identity block's are in the base).

Fallbacks, stated in the result's notes: a core without a table uses the Cortex-M4 table of the same kernels
(Thumb-2 code; the M7/M33 libraries link within ~1 % of the M4's), then the other kernels' table; an op the table
does not list costs the largest op the table lists (an over- rather than an under-estimate: a firmware that does
not fit flash is the costly mistake). Targets with a non-TFLM runtime (X-CUBE-AI, vendor kernels) keep their
runtime's fixed size (``targets.py``), as do targets whose YAML sets ``runtime_flash_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: stack allowance when the table has no stack figure for one of the model's ops: the largest high-water mark
#: measured under QEMU (benchmarks/mcu.py on M4: 832-1,448 B) rounded up
STACK_BYTES = 1_536
#: added to the per-op stack figure: an interrupt taken at the deepest point (the firmware's SysTick; Cortex-M stacks
#: the FP-extended exception frame, 26 words, + 4 B alignment; the handler is a leaf). Benchmarks/mcu.py measured
#: exactly this: IC's 100-input run 1,448 B = the CONV_2D probe's 1,340 B + 108 B
STACK_MARGIN_BYTES = 26 * 4 + 4
KERNELS = {"tflm-cmsis-nn": "cmsis_nn", "tflm-reference": "reference"}
#: bytes of a resolver slot on a 32-bit core when the table does not say (sizeof MicroMutableOpResolver<N+1> - <N>)
RESOLVER_RAM_BYTES_PER_OP = 36
#: the probe's base holds an identity pre-processing: one feature float and one work float (see export/sizes.py)
PROBE_PREPROCESSING_RAM_BYTES = 8


@dataclass(frozen=True)
class FirmwareSize:
    """A firmware size estimate and where each part comes from."""

    flash_bytes: int
    ram_bytes: int
    flash_by_part: dict[str, int]
    table: str
    notes: list[str] = field(default_factory=list)
    ram_by_part: dict[str, int] = field(default_factory=dict)

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


def preprocessing_ram_bytes(preprocessing: dict[str, Any] | None) -> tuple[int | None, str]:
    """Return the static RAM the exported C pre-processing allocates for a manifest's fitted blocks, and a note.

    None (with the reason) when the pre-processing is unknown or has no C implementation.
    """
    if not preprocessing:
        return None, "pre-processing unknown (a model file without its version's manifest): its buffers not counted"
    from pydantic import ValidationError

    from tinymlops.errors import TinyMLOpsError
    from tinymlops.export.preprocess_c import buffer_floats
    from tinymlops.preprocessing import FittedPreprocessing

    try:
        features, work = buffer_floats(FittedPreprocessing(**preprocessing))
    except (TinyMLOpsError, ValidationError, TypeError) as exc:
        return None, f"pre-processing buffers not counted: {str(exc).splitlines()[0][:200]}"
    return 4 * (features + work), ""


def stack_bytes(ops: list[str], entry: dict[str, Any], key: str, notes: list[str]) -> int:
    """Return the stack estimate: measured base + the largest per-op figure + margin (fallback: STACK_BYTES)."""
    per_op = entry.get("op_stack_bytes") or {}
    known = [per_op[op] for op in ops if op in per_op]
    measured = int(entry.get("stack_base_bytes", 0)) + max(known, default=0) + STACK_MARGIN_BYTES
    missing = [op for op in ops if op not in per_op]
    if not per_op or missing:
        notes.append(f"firmware RAM: no measured stack for {', '.join(missing) if per_op else 'any op'} in the "
                     f"{key} table: the stack counted as the fixed allowance ({STACK_BYTES:,} B)")
        return max(measured, STACK_BYTES) if per_op else STACK_BYTES
    return measured


def estimate(op_types: dict[str, int] | list[str], model_bytes: int, core: str, runtime: str,
             host_arena_bytes: int, preprocessing: dict[str, Any] | None = None) -> FirmwareSize | None:
    """Estimate the exported TFLM firmware's flash and RAM; None for a non-TFLM runtime or no table.

    Args:
        host_arena_bytes: TFLM's arena for the model as the export measures it (or the graph's estimate of it);
            the firmware declares it with the export's margin.
        preprocessing: the version manifest's fitted pre-processing (``manifest["preprocessing"]``), if known.
    """
    from tinymlops.export.bundle import arena_with_margin

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
    parts = {"base": int(e["base_flash_bytes"]), "ops": int(op_flash), "model": int(model_bytes)}
    pp_ram, pp_note = preprocessing_ram_bytes(preprocessing)
    if pp_note:
        notes.append("firmware RAM: " + pp_note)
    ram = {"arena": arena_with_margin(host_arena_bytes),
           "base": int(e["base_ram_bytes"]) - PROBE_PREPROCESSING_RAM_BYTES,
           "resolver": int(e.get("resolver_ram_bytes_per_op", RESOLVER_RAM_BYTES_PER_OP)) * max(0, len(ops) - 1),
           "ops": int(sum(e["op_ram_bytes"].get(op, 0) for op in ops)),
           "preprocessing": pp_ram or PROBE_PREPROCESSING_RAM_BYTES,
           "stack": stack_bytes(ops, e, key, notes)}
    return FirmwareSize(sum(parts.values()), sum(ram.values()), parts, key, notes, ram)
