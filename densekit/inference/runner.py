"""One inference loop for every plan: batches from a reader, the model, a merger and its sink.

The roles (after MONAI's sliding-window inferer and its ``Merger``):

* the reader yields :class:`Batch` es (inputs, where they belong, which pixels are valid); a
  background thread reads ``depth`` batches ahead while the model runs (:func:`read_ahead`);
* the model (:class:`~densekit.inference.trained.Trained`) turns raw inputs into raw outputs;
* the merger (:class:`Merger`) puts each batch's outputs in place and hands what is finished
  to its sink: tiles blended into a strip, whose finished columns go to the strip files of a
  Cloud-Optimised GeoTIFF (:mod:`densekit.inference.strips`); or a volume's slice labels
  stored in place, the volume written as NIfTI or DICOM SEG once complete.

GeoTIFF tiling (:mod:`densekit.inference.tiles`) and volume inference
(:mod:`densekit.inference.volume`) are two plans over :func:`run`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
from torch import Tensor

from densekit.inference.trained import Trained

T = TypeVar("T")


@dataclass
class Batch:
    """Inputs of one forward pass and where their outputs belong.

    Args:
        where: the plan's location of the batch (a strip and its tile columns; a range of
            slices).
        inputs: raw images ``(B, C, H, W)``, one per date.
        valid: pixels valid in every band and date ``(B, H, W)``, or None (all valid).
        count: items to count as done (0 for work redone to seed a resumed run).
    """

    where: Any
    inputs: list[Tensor]
    valid: np.ndarray | None = None
    count: int = field(default=0)


class Merger(Protocol):
    """Receives the outputs of each batch in order; :meth:`finalize` after the last one."""

    def aggregate(self, outputs: Tensor, batch: Batch) -> None: ...

    def finalize(self) -> None: ...


def run(
    model: Trained,
    batches: Iterable[Batch],
    merger: Merger,
    precision: str = "32",
    bar: Any = None,
) -> dict[str, float]:
    """Every batch through ``model`` into ``merger``; returns the seconds spent in the model."""
    timings = {"model_s": 0.0}
    for batch in batches:
        tic = time.perf_counter()
        outputs = model(*batch.inputs, precision=precision)
        timings["model_s"] += time.perf_counter() - tic
        merger.aggregate(outputs, batch)
        if bar is not None and batch.count:
            bar.update(batch.count)
    merger.finalize()
    return timings


def read_ahead(produce: Callable[[], Iterator[T]], depth: int) -> Generator[T, None, None]:
    """The items of ``produce()``, made by a background thread up to ``depth`` items ahead.

    An exception in the thread is raised here; closing the generator (``contextlib.closing``)
    stops and joins the thread, also when the consumer fails."""
    q: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        """Queue ``item`` unless the consumer has stopped; False when it has."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in produce():
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # surfaced in the consumer
            put(e)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
