"""Microcontroller deployment: C/C++ bundles of registered int8 models, firmware for QEMU Cortex-M boards.

``run.run_export`` is the entry point (``tinymlops export``); ``bundle`` renders and signs bundles,
``preprocess_c`` generates the pre-processing's C data (and runs it on the host for parity), ``toolchain`` finds
the Arm compiler, QEMU and TFLM and caches TFLM's library per core, ``firmware`` links and runs the ELF,
``emulated`` is the profiler's emulated method. C sources and templates live in ``c/`` (package data).
"""
