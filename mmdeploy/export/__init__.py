"""torch -> ONNX (dynamic and per-size), fp16 conversion, and the parity gate."""
