"""Is this log the story of a job that ran out of GPU memory? One rule for every dispatcher, so a
CUDA OOM is reported as ``"oom"`` and not as a mystery non-zero exit."""

from __future__ import annotations

import re

# What the common frameworks print when an allocation on the GPU fails: PyTorch
# ("CUDA out of memory", torch.OutOfMemoryError), the CUDA runtime ("CUDA error: out of memory",
# cudaErrorMemoryAllocation), cuBLAS/cuDNN allocation failures, TensorFlow/JAX/XLA
# ("RESOURCE_EXHAUSTED: Out of memory", "OOM when allocating tensor").
_CUDA_OOM = re.compile(
    r"CUDA out of memory"
    r"|CUDA error: out of memory"
    r"|cudaErrorMemoryAllocation"
    r"|torch\.(?:cuda\.)?OutOfMemoryError"
    r"|CUBLAS_STATUS_ALLOC_FAILED"
    r"|CUDNN_STATUS_ALLOC_FAILED"
    r"|RESOURCE_EXHAUSTED:\s*Out of memory"
    r"|OOM when allocating tensor",
    re.IGNORECASE,
)


def looks_like_cuda_oom(log_text: str) -> bool:
    """True when the job's output says a GPU memory allocation failed."""
    return _CUDA_OOM.search(log_text) is not None
