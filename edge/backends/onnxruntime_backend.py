"""ONNX Runtime backend: the CPU path everywhere (and CI), CUDA where onnxruntime-gpu is installed."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.backends import BackendError, check_batch


class OnnxRuntimeBackend:
    def __init__(self, path: Path, manifest: dict, providers: list[str] | None = None) -> None:
        import onnxruntime as ort
        available = ort.get_available_providers()
        wanted = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            options = ort.SessionOptions()
            # ONNX Runtime's worker threads spin between calls by default. At camera pace that
            # burnt ~45 CPU ms per frame doing nothing, and under load it stole the cores the
            # other stages need (docs/benchmarks.md, pipeline): the edge turns it off.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
        except Exception as e:  # onnxruntime raises its own exception types for a bad file
            raise BackendError(f"{path} is not a loadable ONNX model: {e}") from e
        self.manifest = manifest
        spec = manifest["input"]
        self.input_name = spec["name"]
        self.input_shape = tuple(spec["shape"][1:])
        self.max_batch = int(spec["max_batch"])
        self.output_names = list(manifest["outputs"])
        got_in = [i.name for i in self.session.get_inputs()]
        got_out = [o.name for o in self.session.get_outputs()]
        if got_in != [self.input_name] or got_out != self.output_names:
            raise BackendError(f"{path} has inputs {got_in} and outputs {got_out}, its manifest says "
                               f"[{self.input_name}] and {self.output_names}: re-export the model")
        self.providers = self.session.get_providers()

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = check_batch(batch, self.input_shape, self.max_batch)
        return dict(zip(self.output_names, self.session.run(self.output_names, {self.input_name: x})))
