"""Our startup code and linker scripts boot on every emulated board (M4 an386, M7 an500, M33 an505) under QEMU.

No TFLM library needed: a small C program (FPU arithmetic, SysTick instruction counting, semihosting output and
exit code, stack high-water) is linked exactly as the firmware is. Seconds per core; needs the Arm toolchain and
qemu-system-arm (CI installs them, .ci/run).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tinymlops.export.firmware import LINK_FLAGS, arch_flags, write_board_files
from tinymlops.export.toolchain import EMULATED

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")),
                                 reason="needs gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm")]

PROGRAM = r"""
#include <stdint.h>
#include <stdio.h>
void tm_systick_start(void);
uint64_t tm_systick_ticks(void);
uint32_t tm_stack_high_water_bytes(void);
static int depth(int n) { volatile char pad[256]; pad[0] = (char)n; return n ? depth(n - 1) + pad[0] : 0; }
int main(void) {
  tm_systick_start();
  uint64_t a = tm_systick_ticks();
  volatile float x = 1.0f;
  for (int i = 0; i < 200000; i++) x = x * 1.0000001f + 0.25f;
  uint64_t b = tm_systick_ticks();
  printf("TICKS %lu\n", (unsigned long)(b - a));
  printf("FLOAT %d\n", (int)(x / 1000.0f));
  printf("DEPTH %d STACK %lu\n", depth(20), (unsigned long)tm_stack_high_water_bytes());
  return 7;
}
"""


def _run(elf: Path, machine: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-system-arm", "-machine", machine, "-nographic", "-monitor", "none", "-serial",
                           "none", "-semihosting", "-icount", "shift=0", "-kernel", str(elf)],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("core", list(EMULATED))
def test_firmware_boots_counts_instructions_and_exits(core: str, tmp_path: Path) -> None:
    emu = EMULATED[core]
    startup, link = write_board_files(tmp_path, emu)
    (tmp_path / "main.c").write_text(PROGRAM)
    elf = tmp_path / "fw.elf"
    subprocess.run(["arm-none-eabi-gcc", *arch_flags(emu), "-O2", "-ffunction-sections", "-fdata-sections",
                    str(startup), str(tmp_path / "main.c"), *LINK_FLAGS, "-T", str(link), "-lm", "-o", str(elf)],
                   check=True, capture_output=True, text=True)
    first, second = _run(elf, emu.machine), _run(elf, emu.machine)
    assert first.returncode == 7, first.stdout + first.stderr     # main's return value is QEMU's exit code
    lines = dict(line.split(" ", 1) for line in first.stdout.splitlines() if " " in line)
    ticks = int(lines["TICKS"])
    instructions = ticks * 1e9 / emu.systick_hz
    # ~5-8 instructions per loop iteration x 200,000 (load, FP multiply-add, store, counter, branch)
    assert 0.6e6 < instructions < 3e6, instructions
    assert first.stdout == second.stdout                           # -icount shift=0: deterministic
    assert int(lines["FLOAT"]) > 40                                # the FPU ran (no fault, a real sum)
    stack = int(lines["DEPTH"].split("STACK ")[1])
    assert 20 * 256 < stack < 32 * 1024                            # the painted stack saw the recursion


@pytest.mark.skipif(not __import__("os").environ.get("TINYMLOPS_TFLM_DIR"), reason="needs TINYMLOPS_TFLM_DIR")
@pytest.mark.parametrize("core", list(EMULATED))
@pytest.mark.parametrize("kernels", ["cmsis_nn", ""])
def test_tflm_makefile_accepts_every_emulated_core(core: str, kernels: str) -> None:
    """TFLM's Makefile knows our TARGET_ARCH per core (it refused 'cortex-m33+fp'), and builds hard-float code."""
    from tinymlops.export.toolchain import build_flags, find_tflm

    flags = build_flags(find_tflm(None), EMULATED[core], kernels)
    assert f"-mcpu={EMULATED[core].mcpu}" in flags["CXXFLAGS"] and "-mfloat-abi=hard" in flags["CXXFLAGS"]
    assert flags["LIB"].endswith("libtensorflow-microlite.a")
