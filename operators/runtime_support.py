"""Make the MONAI Deploy App SDK importable on CPU-only hosts.

``import holoscan`` (and therefore ``import monai.deploy``) links against
``libcudart.so.13`` even when no GPU is used. Hospital CPU nodes have no CUDA
toolkit; there the library comes from the ``nvidia-cuda-runtime`` 13.x wheel,
which installs it as ``nvidia/cu13/lib/libcudart.so.13`` inside
``site-packages`` but does not put that folder on the loader path.
:func:`ensure_cuda_runtime_loadable` preloads it with ``RTLD_GLOBAL`` so that the
later ``dlopen`` done by holoscan resolves to the already loaded copy.

Call it once, before anything imports ``holoscan`` or ``monai.deploy``; calling it
again is a no-op.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import resource
import warnings
from pathlib import Path

__all__ = ["CUDA_RUNTIME_SONAME", "VERIFIED_STACK_BYTES", "ensure_cuda_runtime_loadable", "find_wheel_cuda_runtime"]

logger = logging.getLogger(__name__)

#: The shared object that holoscan 4.x links against.
CUDA_RUNTIME_SONAME = "libcudart.so.13"

#: Packages of the NVIDIA runtime wheels that may hold :data:`CUDA_RUNTIME_SONAME`, in preference order.
_WHEEL_PACKAGES = ("nvidia.cu13", "nvidia.cuda_runtime")

#: Soft stack limit (bytes) under which the Hounsfield CT pipeline has been run repeatedly without
#: trouble (the Linux default, 8 MiB). Holoscan warns below 32 MiB; below this value the warning is
#: kept because the pipeline has not been checked there.
VERIFIED_STACK_BYTES = 8 * 1024 * 1024

_STACK_WARNING_PATTERN = r"Current stack size \("


def find_wheel_cuda_runtime() -> Path | None:
    """Locate ``libcudart.so.13`` shipped by an installed NVIDIA runtime wheel.

    Returns
    -------
    pathlib.Path or None
        The library file, or ``None`` when no such wheel is installed.
    """
    for package in _WHEEL_PACKAGES:
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "lib" / CUDA_RUNTIME_SONAME
            if candidate.is_file():
                return candidate
    return None


def _quiet_harmless_stack_warning() -> None:
    """Silence holoscan's stack-size ``RuntimeWarning`` only where it is known to be harmless.

    The warning is filtered (by its exact message prefix and module, nothing else) only when
    the soft stack limit is unlimited or at least :data:`VERIFIED_STACK_BYTES`.
    """
    soft_limit, _ = resource.getrlimit(resource.RLIMIT_STACK)
    if soft_limit != resource.RLIM_INFINITY and soft_limit < VERIFIED_STACK_BYTES:
        logger.debug(
            "Stack limit %d bytes is below the verified %d; keeping holoscan's warning.",
            soft_limit,
            VERIFIED_STACK_BYTES,
        )
        return
    warnings.filterwarnings("ignore", message=_STACK_WARNING_PATTERN, category=RuntimeWarning, module=r"holoscan\.core")


@functools.cache
def ensure_cuda_runtime_loadable() -> None:
    """Preload the wheel's CUDA runtime so that ``import holoscan`` works without a CUDA toolkit.

    Idempotent (the work is done once per process). When no NVIDIA runtime wheel is installed
    nothing is preloaded and the system loader path (e.g. a CUDA toolkit) is relied upon.

    Raises
    ------
    OSError
        When the wheel's library exists but cannot be loaded (e.g. wrong architecture).
    """
    _quiet_harmless_stack_warning()
    library = find_wheel_cuda_runtime()
    if library is None:
        logger.debug("No NVIDIA runtime wheel with %s; relying on the system loader.", CUDA_RUNTIME_SONAME)
        return
    ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    logger.debug("Preloaded %s", library)
