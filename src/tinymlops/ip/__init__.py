"""Model IP protection: owner watermarks, per-device fingerprints, extraction-attack detection.

Light package: NumPy and ``cryptography`` only at module level; TensorFlow and runtimes load inside functions.
"""
