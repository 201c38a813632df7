"""TensorRT backend: a ``model.plan`` built by ``edge-build``, on an NVIDIA GPU (Jetson or datacenter).

Current TensorRT API only (10 and 11): tensors by name (``num_io_tensors``,
``get_tensor_name``, ``set_input_shape``, ``set_tensor_address``) and ``execute_async_v3`` on
a stream of our own; the binding-index API and ``execute_async_v2`` no longer exist.

Device memory through NVIDIA's cuda-python (``cuda.bindings.runtime``), not pycuda: pycuda is
published on PyPI as source only and needs a full CUDA toolkit (cuda.h, a compiler) to build,
which a Jetson or a slim container does not have; cuda-python ships binary wheels, imports on
CPU-only machines (its calls then return an error code instead of crashing the import), is
maintained by NVIDIA, and is what NVIDIA's current TensorRT Python samples use. Torch could
hold the buffers too, but the edge must not depend on torch.

Every buffer is allocated once, for the engine's largest batch: device memory (cudaMalloc),
page-locked host memory (cudaMallocHost, so copies are real DMA and truly asynchronous),
wrapped as numpy arrays, and one non-default stream (TensorRT synchronises extra work on the
legacy default stream, so ``execute_async_v3`` wants its own).
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from edge.backends import BackendError, check_batch
from edge.manifest import check_tensorrt_build


def import_tensorrt():
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:   # OSError: the package is there but libnvinfer is not
        raise BackendError(f"TensorRT is not importable here ({e}): install the trt extra "
                           f"(pip install 'edge-inspect[trt]') or JetPack's TensorRT, or use the .onnx model "
                           f"with ONNX Runtime") from e
    return trt


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart          # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart                           # older cuda-python
        except ImportError as e:
            raise BackendError("the TensorRT backend needs NVIDIA's CUDA Python bindings: pip install cuda-python "
                               "(part of the trt extra)") from e
    return cudart


def cuda_call(cudart, result, what: str):
    """Unpack a cuda-python ``(error, value...)`` tuple; raise BackendError naming the CUDA error."""
    err, values = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"CUDA {what} failed: {getattr(err, 'name', err)}")
    return values[0] if len(values) == 1 else values


def cuda_device(cudart=None) -> dict:
    """The current GPU's name and compute capability ("8.7" style), as edge-build records them."""
    cudart = cudart or import_cudart()
    dev = cuda_call(cudart, cudart.cudaGetDevice(), "cudaGetDevice (is there an NVIDIA GPU and driver?)")
    attr = cudart.cudaDeviceAttr
    major = cuda_call(cudart, cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, dev),
                      "cudaDeviceGetAttribute")
    minor = cuda_call(cudart, cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, dev),
                      "cudaDeviceGetAttribute")
    props = cuda_call(cudart, cudart.cudaGetDeviceProperties(dev), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {"name": name.split("\x00")[0].strip(), "compute_capability": f"{major}.{minor}"}


class TensorRTBackend:
    def __init__(self, path: Path, manifest: dict) -> None:
        trt = import_tensorrt()
        self._cudart = cudart = import_cudart()
        self._device_buffers: list[int] = []
        self._host_buffers: list[int] = []
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, int] = {}
        self._stream = None
        # Version and GPU first: deserializing a foreign engine fails with an opaque message, or worse.
        check_tensorrt_build(manifest, trt.__version__, cuda_device(cudart)["compute_capability"])
        self.manifest = manifest
        spec = manifest["input"]
        self.input_name = spec["name"]
        self.input_shape = tuple(spec["shape"][1:])
        self.max_batch = int(manifest["engine"]["build"]["max_batch"])
        self.output_names = list(manifest["outputs"])
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)   # must outlive the engine
        self.engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise BackendError(f"{path} is not a loadable TensorRT engine (truncated or corrupt, see TensorRT's "
                               f"message above): rebuild it with edge-build")
        self._check_io(trt, path)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError(f"{path}: TensorRT could not create an execution context (GPU memory?)")
        try:
            self._allocate()
        except BackendError:
            self.close()
            raise

    def _check_io(self, trt, path: Path) -> None:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if inputs != [self.input_name] or sorted(outputs) != sorted(self.output_names):
            raise BackendError(f"{path} has inputs {inputs} and outputs {outputs}, its manifest says "
                               f"[{self.input_name}] and {self.output_names}: rebuild it with edge-build")
        not_fp32 = [n for n in names if self.engine.get_tensor_dtype(n) != trt.DataType.FLOAT]
        if not_fp32:   # edge-build keeps I/O FP32 at every precision; anything else is not ours
            raise BackendError(f"{path}: tensors {not_fp32} are not float32: rebuild it with edge-build")

    def _allocate(self) -> None:
        cudart = self._cudart
        self._stream = cuda_call(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        # With the input at its largest batch, the context reports every output's largest shape.
        if not self.context.set_input_shape(self.input_name, (self.max_batch, *self.input_shape)):
            raise BackendError(f"the engine does not accept batch {self.max_batch}: rebuild it with edge-build")
        for name in [self.input_name, *self.output_names]:
            shape = tuple(self.context.get_tensor_shape(name))
            nbytes = int(np.prod(shape)) * 4
            device = cuda_call(cudart, cudart.cudaMalloc(nbytes), "cudaMalloc")
            self._device_buffers.append(device)
            host = cuda_call(cudart, cudart.cudaMallocHost(nbytes), "cudaMallocHost")
            self._host_buffers.append(host)
            raw = (ctypes.c_byte * nbytes).from_address(host)
            self._host[name] = np.frombuffer(raw, dtype=np.float32).reshape(shape)
            self._device[name] = device

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = check_batch(batch, self.input_shape, self.max_batch)
        cudart, stream, n = self._cudart, self._stream, x.shape[0]
        if not self.context.set_input_shape(self.input_name, x.shape):
            raise BackendError(f"TensorRT refused input shape {x.shape}")
        host_in = self._host[self.input_name]
        host_in[:n] = x
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_call(cudart, cudart.cudaMemcpyAsync(self._device[self.input_name], host_in.ctypes.data, x.nbytes,
                                                 h2d, stream), "cudaMemcpyAsync (to device)")
        for name, device in self._device.items():   # every I/O tensor, by name
            self.context.set_tensor_address(name, device)
        if not self.context.execute_async_v3(int(stream)):
            raise BackendError("TensorRT execute_async_v3 failed: see TensorRT's message above")
        shapes = {name: tuple(self.context.get_tensor_shape(name)) for name in self.output_names}
        for name in self.output_names:
            nbytes = int(np.prod(shapes[name])) * 4   # outputs of batch n lie contiguous at the start
            cuda_call(cudart, cudart.cudaMemcpyAsync(self._host[name].ctypes.data, self._device[name], nbytes,
                                                     d2h, stream), "cudaMemcpyAsync (to host)")
        cuda_call(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        # Copies: the pinned buffers are overwritten by the next call.
        return {name: self._host[name].reshape(-1)[:int(np.prod(shapes[name]))].reshape(shapes[name]).copy()
                for name in self.output_names}

    def close(self) -> None:
        """Free the stream and the buffers (idempotent)."""
        cudart = self._cudart
        while self._device_buffers:
            cuda_call(cudart, cudart.cudaFree(self._device_buffers.pop()), "cudaFree")
        while self._host_buffers:
            cuda_call(cudart, cudart.cudaFreeHost(self._host_buffers.pop()), "cudaFreeHost")
        if self._stream is not None:
            stream, self._stream = self._stream, None
            cuda_call(cudart, cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")
        self._host, self._device = {}, {}

    def __enter__(self) -> TensorRTBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
