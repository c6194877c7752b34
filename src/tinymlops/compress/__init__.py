"""Model compression: variants (PTQ, pruning, clustering, QAT, ONNX quantisation) and their export."""
