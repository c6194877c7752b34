"""Learning beyond the central train stage (issue 16): federated learning across simulated devices.

Light on import: nothing here imports TensorFlow, Flower or dp-accounting at module level.
"""
