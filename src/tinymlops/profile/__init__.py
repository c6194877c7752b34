"""Per-target hardware profiling: static analysis, TFLM arena, host timing, cost model, selection.

Light at import: submodules load TensorFlow/onnx/TFLM only inside the functions that need them.
"""
