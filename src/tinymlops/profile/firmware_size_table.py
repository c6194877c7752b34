"""Linked firmware sizes per (core, kernels): written by ``python -m tinymlops.export.sizes`` (do not edit by hand).

Per entry: ``base_flash_bytes`` / ``base_ram_bytes`` = a firmware with TFLM, newlib nano, startup, the test harness
and identity pre-processing but no op registered (placeholder model, arena and harness input buffer excluded);
``op_flash_bytes`` / ``op_ram_bytes`` = what registering that one op adds when linked (kernel + code only it pulls
in). How it was measured: ``library`` and ``measured`` in each entry; the method in tinymlops/export/sizes.py.
"""

from __future__ import annotations

from typing import Any

TABLE: dict[str, dict[str, Any]] = {'cortex-m4/cmsis_nn': {'base_flash_by_component': {'app': 1526,
                                                    'libc': 14961,
                                                    'preprocessing': 3108,
                                                    'tflm': 17047},
                        'base_flash_bytes': 36476,
                        'base_ram_bytes': 588,
                        'library': 'cortex-m4+fp cmsis_nn kernels, double rounding, BUILD_TYPE=release_with_logs, '
                                   "arm-none-eabi-gcc -O2 (TFLM's flags)",
                        'measured': '2026-12-03',
                        'op_flash_bytes': {'ADD': 15940,
                                           'AVERAGE_POOL_2D': 6948,
                                           'BATCH_MATMUL': 17164,
                                           'CONCATENATION': 6256,
                                           'CONV_2D': 34020,
                                           'DEPTHWISE_CONV_2D': 23940,
                                           'DEQUANTIZE': 4088,
                                           'EXPAND_DIMS': 2316,
                                           'FULLY_CONNECTED': 23388,
                                           'HARD_SWISH': 5284,
                                           'LOGISTIC': 8320,
                                           'MAX_POOL_2D': 7140,
                                           'MEAN': 9552,
                                           'MUL': 14036,
                                           'PAD': 7136,
                                           'QUANTIZE': 6568,
                                           'RELU': 5108,
                                           'RELU6': 2988,
                                           'RESHAPE': 2516,
                                           'SOFTMAX': 12864,
                                           'SQUEEZE': 2008,
                                           'STRIDED_SLICE': 13356,
                                           'SUB': 13744,
                                           'TANH': 8728,
                                           'TRANSPOSE': 3724,
                                           'TRANSPOSE_CONV': 19200},
                        'op_ram_bytes': {'ADD': 0,
                                         'AVERAGE_POOL_2D': 0,
                                         'BATCH_MATMUL': 0,
                                         'CONCATENATION': 0,
                                         'CONV_2D': 0,
                                         'DEPTHWISE_CONV_2D': 0,
                                         'DEQUANTIZE': 0,
                                         'EXPAND_DIMS': 0,
                                         'FULLY_CONNECTED': 0,
                                         'HARD_SWISH': 0,
                                         'LOGISTIC': 0,
                                         'MAX_POOL_2D': 0,
                                         'MEAN': 0,
                                         'MUL': 0,
                                         'PAD': 0,
                                         'QUANTIZE': 0,
                                         'RELU': 0,
                                         'RELU6': 0,
                                         'RESHAPE': 0,
                                         'SOFTMAX': 0,
                                         'SQUEEZE': 0,
                                         'STRIDED_SLICE': 0,
                                         'SUB': 0,
                                         'TANH': 0,
                                         'TRANSPOSE': 0,
                                         'TRANSPOSE_CONV': 0},
                        'skipped': {}}}
