"""The label values a split holds, checked before training on them: a binary mask stored as
0/255 (a PNG or GeoTIFF drawn in an image editor) read without ``label_map`` would have every
255 pixel taken as ``ignore_index`` (255 by default) and the model would learn one class."""

from __future__ import annotations

from collections.abc import Iterable

from densekit.errors import DensekitError


def check_label_values(
    values: Iterable[int], ignore_index: int, label_map: object, where: str
) -> None:
    """Refuse labels whose only values are 0 and ``ignore_index`` when no ``label_map`` is given.

    Args:
        values: every raw label value found in the split's masks.
        ignore_index: the value that losses and metrics ignore.
        label_map: the ``label_map`` option (None: raw values are classes).
        where: what the values came from (the split and the option's owner), for the message.

    Raises:
        DensekitError: the values found, the ``label_map`` to give for a 0/255 mask, and what
            ``ignore_index`` would have done.
    """
    if label_map is not None:
        return
    found = sorted({int(v) for v in values})
    if ignore_index not in found or set(found) - {0, ignore_index}:
        return
    raise DensekitError(
        f"{where}: the masks hold only the values {found} and no label_map is given, so every "
        f"{ignore_index} pixel would be ignored (ignore_index {ignore_index}) and only class 0 "
        f"learned. For a binary 0/{ignore_index} mask give label_map: {{0: 0, {ignore_index}: "
        f"1}}; if {ignore_index} does mark unlabelled pixels, the masks hold no second class"
    )
