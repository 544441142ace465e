"""GPUs: what a model asks for (``model.gpus``) and what a worker offers (``EASEML_WORKER_GPUS``).

Pure functions shared by the configuration (validation), the master (which worker may take
a build, ``easeml_buildbot.master.gpus``) and the Docker runner (the container's device
requests). A request is an integer: ``0`` no GPU (the default: a model sees no GPU unless it
asks), ``N`` at least N GPUs, :data:`ALL` (``gpus: all``) every GPU of a worker that has at
least one. An offer is the number of GPUs a worker has (``0`` when unset).
"""

from __future__ import annotations

from typing import Any

#: ``model.gpus: all``: every GPU of the worker (Docker's ``count=-1``); needs at least one.
ALL = -1
#: Upper bound on either side, so a typo (``gpus: 80000``) is an error, not a wait.
MAX_GPUS = 256


def parse_request(value: Any) -> int:
    """``model.gpus`` as an integer: ``None``/``0`` -> 0, ``N`` -> N, ``"all"`` -> :data:`ALL`.

    Raises
    ------
    ValueError
        With a sentence saying what is accepted.
    """
    if value is None:
        return 0
    if isinstance(value, str) and value.strip().lower() == "all":
        return ALL
    n = _count(value)
    if n is None:
        raise ValueError(f"must be a number of GPUs (0-{MAX_GPUS}) or 'all', not {value!r}")
    return n


def parse_offer(value: Any, where: str = "EASEML_WORKER_GPUS") -> int:
    """The GPUs a worker offers (``EASEML_WORKER_GPUS`` / ``gpus`` in its settings file)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return 0
    n = _count(value)
    if n is None:
        raise ValueError(f"{where}: must be the number of GPUs this worker has (0-{MAX_GPUS}), "
                         f"not {value!r}")
    return n


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value.isdigit():
            return None
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= MAX_GPUS:
        return None
    return value


def satisfies(offer: int, request: int) -> bool:
    """Whether a worker offering ``offer`` GPUs can run a model requesting ``request``
    (an ``offer`` of :data:`ALL` is an earlier grant of every GPU: it satisfies any request)."""
    if offer == ALL:
        return True
    if request == ALL:
        return offer >= 1
    return offer >= request


def describe(request: int) -> str:
    """``"2 GPUs"``, ``"1 GPU"``, ``"every GPU of the worker (at least one)"``."""
    if request == ALL:
        return "every GPU of the worker (at least one)"
    return f"{request} GPU" + ("" if request == 1 else "s")


def device_requests(request: int) -> list[Any]:
    """Docker device requests for a granted ``request`` (``[]`` for no GPU).

    ``DeviceRequest(count=N, capabilities=[["gpu"]])`` is what ``docker run --gpus N`` sends;
    ``count=-1`` is ``--gpus all``. The NVIDIA container runtime on the worker turns it into
    devices; without one, Docker refuses to start the container (a ``crash``).
    """
    if not request:
        return []
    from docker.types import DeviceRequest

    return [DeviceRequest(count=int(request), capabilities=[["gpu"]])]
