"""Link a bundle into firmware for a QEMU Cortex-M board, run it on test inputs, measure flash, RAM and instructions.

The firmware is the bundle's sources + ``c/fw_startup.c`` + ``c/fw_main.cc.in`` (the test harness) + the cached
TFLM library, linked with our own linker script. It runs under ``qemu-system-arm -icount shift=0 -semihosting``:
with ``shift=0`` one instruction takes 1 ns of virtual time, so SysTick ticks x (1e9 / SysTick Hz) is the exact,
deterministic instruction count. Flash/RAM come from the linker map, attributed to model, TFLM, pre-processing,
libc and the rest.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import numpy as np

from tinymlops.errors import TinyMLOpsError
from tinymlops.export.preprocess_c import c_source
from tinymlops.export.toolchain import Emulated, TflmLibrary

STACK_BYTES = 32 * 1024
HEAP_BYTES = 16 * 1024
QEMU_TIMEOUT_S = 600.0
#: linker-map objects by component (first match wins); the rest is "app" (startup, harness, tm_model.cc)
COMPONENTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("test_io", re.compile(r"\.tm_test_io\b")),
    ("model", re.compile(r"tm_model_data\.o")),
    ("preprocessing", re.compile(r"tm_preprocess\.o|tm_pp_config\.o")),
    ("tflm", re.compile(r"libtensorflow-microlite\.a")),
    ("libc", re.compile(r"lib(c_nano|c|m|g_nano|g|gcc|rdimon|rdimon_nano|stdc\+\+_nano|stdc\+\+|supc\+\+_nano|"
                        r"supc\+\+|nosys)\.a|crt[a-z0-9]*\.o")),
)
FLASH_SECTIONS = (".isr_vector", ".text", ".ARM.extab", ".ARM.exidx", ".data")
RAM_SECTIONS = (".data", ".bss")


@dataclass
class FirmwareBuild:
    """A linked firmware and what it occupies."""

    elf: Path
    flash_bytes: int
    ram_static_bytes: int                       # .data + .bss (includes the arena)
    flash_by_component: dict[str, int]
    ram_by_component: dict[str, int]
    link_seconds: float
    ram_buffers: dict[str, int] = field(default_factory=dict)   # arena, preprocessing (bytes, from the ELF)


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise TinyMLOpsError(f"{what} failed: {(res.stderr or res.stdout).strip()[-800:]}")


def map_input_sections(text: str) -> list[tuple[str, str, str, int]]:
    """Return (output section, input section, object, bytes) for every input-section line of a GNU ld map file."""
    out: list[tuple[str, str, str, int]] = []
    out_sec = ""
    pending = ""
    line_re = re.compile(r"^\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+(\S.*)$")
    for line in text.split("Linker script and memory map", 1)[-1].splitlines():
        m_out = re.match(r"^(\.[A-Za-z_.]+)\s", line) or re.match(r"^(\.[A-Za-z_.]+)$", line)
        if m_out:
            out_sec = m_out.group(1)
            continue
        m_in = re.match(r"^ (\.\S+|COMMON)\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+(\S.*)$", line)
        if m_in:
            in_sec, size, obj = m_in.group(1), int(m_in.group(2), 16), m_in.group(3)
        elif re.match(r"^ (\.\S+|COMMON)$", line):
            pending = line.strip()
            continue
        elif pending and (m2 := line_re.match(line)):
            in_sec, size, obj = pending, int(m2.group(1), 16), m2.group(2)
        else:
            pending = ""
            continue
        pending = ""
        out.append((out_sec, in_sec, obj.strip(), size))
    return out


def parse_map(text: str) -> dict[str, dict[str, int]]:
    """Return bytes per (output section -> component) from a GNU ld map file's input-section lines."""
    sizes: dict[str, dict[str, int]] = {}
    for out_sec, in_sec, obj, size in map_input_sections(text):
        comp = next((name for name, rx in COMPONENTS if rx.search(f"{in_sec} {obj}")), "app")
        sec = sizes.setdefault(out_sec, {})
        sec[comp] = sec.get(comp, 0) + size
    return sizes


def _section_sizes(elf: Path) -> dict[str, int]:
    res = subprocess.run(["arm-none-eabi-size", "-A", str(elf)], capture_output=True, text=True, check=True)
    out = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].startswith(".") and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


#: the bundle's static buffers (tm_model.cc's anonymous namespace), reported from the ELF's symbol table
RAM_BUFFERS = {"arena": ("arena",), "preprocessing": ("features", "pp_work")}


def ram_buffers(elf: Path) -> dict[str, int]:
    """Return bytes of the bundle's arena and pre-processing buffers as the linked ELF's symbol table sizes them."""
    res = subprocess.run(["arm-none-eabi-nm", "-S", "-C", str(elf)], capture_output=True, text=True, check=True)
    sizes = {}
    for line in res.stdout.splitlines():
        parts = line.split(maxsplit=3)
        if len(parts) == 4 and parts[2] in "bBdD" and parts[3].startswith("(anonymous namespace)::"):
            sizes[parts[3].split("::", 1)[1]] = int(parts[1], 16)
    return {k: sum(sizes.get(n, 0) for n in names) for k, names in RAM_BUFFERS.items()}


def arch_flags(emu: Emulated) -> list[str]:
    """Return the compiler's CPU/FPU flags for a core (hard-float ABI, as TFLM's library is built)."""
    return [f"-mcpu={emu.mcpu}", "-mthumb", "-mfloat-abi=hard", f"-mfpu={emu.fpu}"]


#: link flags of every firmware: our startup code, newlib nano + semihosting, unused sections dropped
LINK_FLAGS = ["-nostartfiles", "--specs=nano.specs", "--specs=rdimon.specs", "-Wl,--gc-sections"]


def write_board_files(work: Path, emu: Emulated) -> tuple[Path, Path]:
    """Write the startup code and the board's linker script into ``work``; return (startup.c, link.ld)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "fw_startup.c").write_text(c_source("fw_startup.c"))
    (work / "link.ld").write_text(Template(c_source("fw_link.ld.in")).substitute(
        machine=emu.machine, core=emu.core, flash_origin=hex(emu.flash_origin), flash_bytes=emu.flash_bytes,
        ram_origin=hex(emu.ram_origin), ram_bytes=emu.ram_bytes, stack_bytes=STACK_BYTES, heap_bytes=HEAP_BYTES))
    return work / "fw_startup.c", work / "link.ld"


def tflm_pch(lib: TflmLibrary, emu: Emulated) -> Path:
    """Return a header of the TFLM includes ``tm_model.cc`` uses, precompiled for the library's flags (cached).

    ``-include`` it when compiling ``tm_model.cc``: its TFLM headers (the interpreter, the op resolver with every
    kernel's header, the flatbuffer schema) take most of a firmware's compile time; the bundle's include guards
    make its own ``#include`` lines no-ops. GCC falls back to the plain header if the ``.gch`` does not match.
    """
    from tinymlops.export.toolchain import cache_root

    headers = re.findall(r'^#include "(tensorflow/[^"]+)"', c_source("tm_model.cc.in"), re.M)
    cmd = ["arm-none-eabi-g++", *lib.cxxflags, *arch_flags(emu), "-O2", *lib.includes, "-x", "c++-header"]
    stamp = [str((lib.tflm_dir / h).stat().st_mtime_ns) for h in headers if (lib.tflm_dir / h).is_file()]
    key = hashlib.sha256("\n".join([*cmd, *headers, *stamp, str(lib.lib_path)]).encode()).hexdigest()[:16]
    d = cache_root() / "tflm-pch" / key
    header, gch = d / "tm_tflm.h", d / "tm_tflm.h.gch"
    if not gch.is_file():
        d.mkdir(parents=True, exist_ok=True)
        header.write_text("".join(f'#include "{h}"\n' for h in headers))
        tmp = d / f"tm_tflm.{os.getpid()}.gch"
        _run([*cmd, str(header), "-o", str(tmp)], d, "precompiling the TFLM headers")
        tmp.replace(gch)   # whole or not at all: another build may be compiling with it
    return header


def compile_objects(bundle_src: Path, work: Path, lib: TflmLibrary, emu: Emulated, jobs: int = 2,
                    only: tuple[str, ...] = ()) -> list[Path]:
    """Compile the bundle + harness + startup for the board (``jobs`` at a time); return the objects.

    ``only``: compile just these source names (the others' objects must exist from an earlier call).
    """
    write_board_files(work, emu)
    (work / "fw_main.cc").write_text(c_source("fw_main.cc.in"))
    arch = arch_flags(emu)
    inc = [f"-I{bundle_src}", *lib.includes]
    cmds = [(["arm-none-eabi-gcc", *lib.cflags, *arch, "-O2", "-std=c99", *inc, "-c", str(f), "-o",
              str(work / (f.stem + ".o"))], f)
            for f in (bundle_src / "tm_preprocess.c", bundle_src / "tm_pp_config.c", work / "fw_startup.c")]
    todo_names = {"tm_preprocess.c", "tm_pp_config.c", "fw_startup.c", "tm_model.cc", "tm_model_data.cc",
                  "fw_main.cc"} if not only else set(only)
    pch = ["-include", str(tflm_pch(lib, emu))] if "tm_model.cc" in todo_names else []
    cmds += [(["arm-none-eabi-g++", *lib.cxxflags, *arch, "-O2", *(pch if f.name == "tm_model.cc" else []), *inc,
               "-c", str(f), "-o", str(work / (f.stem + ".o"))], f)
             for f in (bundle_src / "tm_model.cc", bundle_src / "tm_model_data.cc", work / "fw_main.cc")]
    todo = [c for c in cmds if c[1].name in todo_names]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(lambda c: _run(c[0], work, f"compiling {c[1].name}"), todo))
    return [Path(cmd[-1]) for cmd, _ in cmds]


def link_firmware(bundle_src: Path, work: Path, lib: TflmLibrary, emu: Emulated, jobs: int = 2,
                  only: tuple[str, ...] = (), extra_objects: tuple[Path, ...] = ()) -> FirmwareBuild:
    """Compile (see :func:`compile_objects`) and link the firmware with TFLM's library; measure what it holds."""
    t0 = time.monotonic()
    objs = [*compile_objects(bundle_src, work, lib, emu, jobs, only), *extra_objects]
    arch = arch_flags(emu)
    elf = work / "firmware.elf"
    _run(["arm-none-eabi-g++", *arch, *LINK_FLAGS, f"-Wl,-Map={work / 'firmware.map'}", "-T", str(work / "link.ld"), *map(str, objs),
          str(lib.lib_path), "-lm", "-o", str(elf)], work, "linking the firmware")
    by_sec = parse_map((work / "firmware.map").read_text())
    flash: dict[str, int] = {}
    ram: dict[str, int] = {}
    for sec, comps in by_sec.items():
        for comp, n in comps.items():
            if sec in FLASH_SECTIONS:
                flash[comp] = flash.get(comp, 0) + n
            if sec in RAM_SECTIONS:
                ram[comp] = ram.get(comp, 0) + n
    sizes = _section_sizes(elf)
    return FirmwareBuild(elf, sum(sizes.get(s, 0) for s in FLASH_SECTIONS),
                         sum(sizes.get(s, 0) for s in RAM_SECTIONS), dict(sorted(flash.items())),
                         dict(sorted(ram.items())), time.monotonic() - t0, ram_buffers(elf))


@dataclass
class QemuRun:
    """What the firmware printed under QEMU, parsed."""

    inputs_q: np.ndarray            # (N, features) int8 quantised on the device
    outputs_q: np.ndarray           # (N, classes) int8
    classes: np.ndarray
    pre_ticks: np.ndarray
    inf_ticks: np.ndarray
    init_ticks: int
    arena_used_bytes: int
    stack_bytes: int
    heap_bytes: int
    seconds: float


def run_qemu(elf: Path, emu: Emulated, X_raw: np.ndarray, n_features: int, n_classes: int) -> QemuRun:
    """Run the firmware under QEMU with exact instruction counting on raw inputs; parse its semihosting output."""
    n = len(X_raw)
    X = np.ascontiguousarray(X_raw, dtype="<f4").reshape(n, -1)
    (elf.parent / "tm_inputs.bin").write_bytes(np.int32(n).astype("<i4").tobytes() + X.tobytes())
    cmd = ["qemu-system-arm", "-machine", emu.machine, "-nographic", "-monitor", "none", "-serial", "none",
           "-semihosting", "-icount", "shift=0", "-kernel", str(elf)]
    t0 = time.monotonic()
    try:
        res = subprocess.run(cmd, cwd=elf.parent, capture_output=True, text=True, timeout=QEMU_TIMEOUT_S,
                             check=False)
    except subprocess.TimeoutExpired:
        raise TinyMLOpsError(f"firmware did not finish under {emu.machine} in {QEMU_TIMEOUT_S:.0f} s") from None
    if res.returncode != 0 or "DONE" not in res.stdout:
        raise TinyMLOpsError(f"firmware on {emu.machine} exited with {res.returncode}: "
                             f"{(res.stdout + res.stderr).strip()[-600:]}")
    ins = np.zeros((n, n_features), np.int8)
    outs = np.zeros((n, n_classes), np.int8)
    cls = np.zeros(n, np.int64)
    pre = np.zeros(n, np.int64)
    inf = np.zeros(n, np.int64)
    init = arena = stack = heap = 0
    for line in res.stdout.splitlines():
        try:
            init, arena, stack, heap = _parse_line(line, ins, outs, cls, pre, inf, (init, arena, stack, heap))
        except (ValueError, IndexError):
            raise TinyMLOpsError(f"firmware on {emu.machine} printed an unexpected line: {line[:200]!r}") from None
    return QemuRun(ins, outs, cls, pre, inf, init, arena, stack, heap, time.monotonic() - t0)


def _parse_line(line: str, ins: np.ndarray, outs: np.ndarray, cls: np.ndarray, pre: np.ndarray, inf: np.ndarray,
                state: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Parse one line the harness printed into the arrays; return (init ticks, arena, stack, heap)."""
    init, arena, stack, heap = state
    p = line.split()
    if p and p[0] in ("IN", "OUT"):
        (ins if p[0] == "IN" else outs)[int(p[1])] = np.frombuffer(bytes.fromhex(p[2]), np.int8)
    elif p and p[0] == "TICKS":
        i = int(p[1])
        pre[i], inf[i], cls[i] = int(p[2]), int(p[3]), int(p[4])
    elif p and p[0] == "INIT":
        init = int(p[2])
    elif p and p[0] == "ARENA":
        arena = int(p[1])
    elif p and p[0] == "STACK":
        stack = int(p[1])
    elif p and p[0] == "HEAP":
        heap = int(p[1])
    return init, arena, stack, heap
