"""The one gate to NVML. Nothing else in gpufleet imports ``pynvml`` (ruff's banned-api).

Every NVML call goes through :meth:`Nvml.query`:

- NVML is initialised lazily, on the first query; a host without a driver or without
  ``nvidia-ml-py`` gets :class:`NvmlUnavailable` (a host-level error), never a crash;
- ``bytes`` results are decoded to ``str``;
- a metric the GPU does not support (``NotSupported``, ``FunctionNotFound``, ``NoPermission``)
  returns ``default`` ("not available") and is logged once per function;
- calls run on one worker thread with a deadline: a hung call raises :class:`NvmlHung` after
  ``timeout_seconds`` and, while it stays hung, every later call fails at once instead of
  queueing behind it, so the agent's round keeps its pace and reports the GPUs as erroring.

The NVML module is injectable (``Nvml(module=FakeNvml(...))``), like nvitop's ``libnvml``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("gpufleet.agent.nvml")

T = TypeVar("T")

# Errors that mean "this GPU/driver cannot tell", i.e. the metric is not available.
_NOT_AVAILABLE = ("NVMLError_NotSupported", "NVMLError_FunctionNotFound", "NVMLError_NoPermission")
# Errors raised by nvmlInit that mean "no usable NVML on this host".
_INIT_RETRY_SECONDS = 60.0


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used on this host (no library, no driver, ...)."""


class NvmlHung(RuntimeError):
    """An NVML call did not return within the deadline (or one before it is still stuck)."""


class NvmlCallError(RuntimeError):
    """An NVML call failed for a reason other than 'not supported' (e.g. GPU is lost)."""


class Nvml:
    """Gate to an NVML module (``pynvml`` by default).

    ``timeout_seconds`` bounds each job submitted with :meth:`run` (a job can be one call or all
    the calls for one GPU). ``clock`` is monotonic time, injectable for tests.
    """

    def __init__(
        self,
        module: Any | None = None,
        *,
        timeout_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._module = module
        self.timeout_seconds = timeout_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._initialized = False
        self._init_error: str | None = None
        self._init_failed_at: float | None = None
        self._logged_unsupported: set[str] = set()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], _Result, str] | None] = (
            queue.SimpleQueue()
        )
        self._worker: threading.Thread | None = None
        # (description, started_at) of the job the worker is stuck in, or None.
        self._stuck: tuple[str, float] | None = None
        self._current: tuple[str, float] | None = None

    # -- module and initialisation ---------------------------------------------------------

    @property
    def module(self) -> Any:
        if self._module is None:
            try:
                import pynvml
            except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a dependency
                raise NvmlUnavailable(f"NVML: nvidia-ml-py is not installed ({exc})") from exc
            self._module = pynvml
        return self._module

    @property
    def initialized(self) -> bool:
        return self._initialized

    def init(self) -> None:
        """Initialise NVML once; raise :class:`NvmlUnavailable` when it cannot be used.

        A failed init is remembered and retried at most once a minute (a driver may be
        loaded later) so a GPU-less host pays nothing per round.
        """
        if self._initialized:
            return
        now = self._clock()
        if self._init_failed_at is not None and now - self._init_failed_at < _INIT_RETRY_SECONDS:
            raise NvmlUnavailable(self._init_error or "NVML: not available")
        try:
            mod = self.module
            self.run(mod.nvmlInit, description="nvmlInit")
        except NvmlUnavailable as exc:
            self._fail_init(str(exc))
        except NvmlHung as exc:
            self._fail_init(f"NVML: {exc}")
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, OSError, ...
            self._fail_init(f"NVML: {_describe(exc)}")
        self._initialized = True
        self._init_error = None
        self._init_failed_at = None

    def _fail_init(self, message: str) -> None:
        if self._init_error != message:
            log.warning("%s; reporting host metrics only", message)
        self._init_error = message
        self._init_failed_at = self._clock()
        raise NvmlUnavailable(message)

    def shutdown(self) -> None:
        """Shut NVML down (when initialised) and stop the worker thread."""
        if self._initialized and self._stuck is None:
            try:
                self.run(self.module.nvmlShutdown, description="nvmlShutdown")
            except Exception as exc:
                log.debug("nvmlShutdown failed: %s", exc)
        self._initialized = False
        if self._worker is not None and self._stuck is None:
            self._jobs.put(None)
            self._worker.join(timeout=1.0)
        self._worker = None

    # -- calls ----------------------------------------------------------------------------

    def query(self, fn: Callable[..., Any] | str, *args: Any, default: Any = None) -> Any:
        """Call one NVML function; ``default`` when the metric is not supported.

        ``fn`` is a function of the module or its name. Other NVML errors raise
        :class:`NvmlCallError`; a hung call raises :class:`NvmlHung`.
        """
        self.init()
        func = getattr(self.module, fn) if isinstance(fn, str) else fn
        name = getattr(func, "__name__", str(fn))
        if threading.current_thread() is self._worker:
            return self._call(func, name, args, default)
        return self.run(lambda: self._call(func, name, args, default), description=name)

    def _call(
        self, func: Callable[..., Any], name: str, args: tuple[Any, ...], default: Any
    ) -> Any:
        mod = self.module
        self.set_current(name)
        try:
            value = func(*args)
        except mod.NVMLError as exc:
            if type(exc).__name__ in _NOT_AVAILABLE:
                if name not in self._logged_unsupported:
                    self._logged_unsupported.add(name)
                    log.info("NVML %s: %s (reported as not available)", name, _describe(exc))
                return default
            raise NvmlCallError(f"{name}: {_describe(exc)}") from exc
        return _decode(value)

    def is_error(self, exc: BaseException, name: str) -> bool:
        """True when ``exc`` is (or wraps) the module's ``NVMLError_<name>``."""
        cls = getattr(self.module, f"NVMLError_{name}", None)
        while exc is not None:
            if cls is not None and isinstance(exc, cls):
                return True
            exc = exc.__cause__  # type: ignore[assignment]
        return False

    def run(self, job: Callable[[], T], *, description: str = "NVML call") -> T:
        """Run ``job`` on the NVML worker thread, waiting at most ``timeout_seconds``.

        Several NVML calls made inside ``job`` through :meth:`query` run directly on the
        worker (one thread hand-off per job, not per call).
        """
        if threading.current_thread() is self._worker:
            return job()
        with self._lock:
            stuck = self._stuck
            current = self._current
            # Another thread's job may be running: queue behind it unless it overran.
            if (
                stuck is None
                and current is not None
                and self._clock() - current[1] > self.timeout_seconds
            ):
                stuck = current
            if stuck is not None:
                what, since = stuck
                raise NvmlHung(
                    f"NVML is hung: {what} has not returned for {self._clock() - since:.1f} s"
                )
            self._ensure_worker()
            result = _Result()
            self._jobs.put((job, result, description))
        if not result.done.wait(self.timeout_seconds):
            with self._lock:
                if not result.done.is_set():
                    self._stuck = self._current or (description, self._clock())
                    what, _since = self._stuck
                    raise NvmlHung(
                        f"NVML is hung: {what} did not return within {self.timeout_seconds:g} s"
                    )
        if result.error is not None:
            raise result.error
        return result.value

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="gpufleet-nvml", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, result, description = item
            with self._lock:
                self._current = (description, self._clock())
            try:
                result.value = job()
            except BaseException as exc:
                result.error = exc
            finally:
                with self._lock:
                    self._current = None
                    if self._stuck is not None:
                        log.warning("NVML returned after being hung: %s", self._stuck[0])
                    self._stuck = None
                result.done.set()

    def set_current(self, description: str) -> None:
        """Name the call in progress on the worker (so a hang says which call hung)."""
        with self._lock:
            if self._current is not None:
                self._current = (description, self._current[1])


class _Result:
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    name = type(exc).__name__
    return text if name in ("NVMLError", "Exception") else f"{text} ({name})"
