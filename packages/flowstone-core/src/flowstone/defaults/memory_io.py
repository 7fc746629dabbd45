"""An IO manager that keeps values in process memory."""

from __future__ import annotations

import threading
from urllib.parse import quote

from flowstone.codec import EncodedValue, decode_from_storage, encode_for_storage
from flowstone.errors import UnsafeKeyError, ValueNotFoundError
from flowstone.protocols import StorageKey

__all__ = ["MemoryIOManager"]

_SCHEME = "memory:"


class MemoryIOManager:
    """Keeps asset values in a dict, for tests and embedded runs that need no durability.

    By default (``copy=True``) values go through the same codec as the durable IO managers
    (see :mod:`flowstone.codec`) and the *encoded* form is kept: a value that would fail in
    production fails here too, and neither the asset that returned a value nor a later
    reader can mutate what is stored -- every :meth:`load` returns a fresh copy. ``bytes``
    are kept as they are (they are immutable).

    ``copy=False`` keeps references instead: nothing is encoded, any Python object can be
    stored, and :meth:`load` returns the very object that was stored. It is the fast path
    for large in-process values, at the price of aliasing (mutating a loaded value changes
    the stored one) and of not catching values a durable IO manager would reject.

    Locations look like ``memory:<pipeline>/<asset>/<partition>/<run_id>[/aN][/item-N]`` with
    each part percent-encoded, and are only meaningful to the instance that returned them.
    The manager is thread-safe.

    Args:
        name: the name the manager is registered under.
        copy: keep encoded copies (default) or plain references.

    Example:
        >>> from flowstone.protocols import StorageKey
        >>> io = MemoryIOManager()
        >>> location = io.store(StorageKey("p", "orders", "", "run-1"), {"n": 1})
        >>> io.load(location)
        {'n': 1}
    """

    __slots__ = ("_copy", "_lock", "_values", "name")

    def __init__(self, name: str = "memory", copy: bool = True) -> None:
        self.name = name
        self._copy = copy
        self._lock = threading.Lock()
        self._values: dict[str, object] = {}

    def __repr__(self) -> str:
        return f"MemoryIOManager(name={self.name!r}, copy={self._copy!r})"

    def store(self, key: StorageKey, value: object) -> str:
        """Store ``value`` under ``key`` and return its location.

        Raises:
            EncodingError: (``copy=True`` only) the codec cannot represent the value;
                nothing is stored.
            UnsafeKeyError: ``key.item`` is not a non-negative int.
        """
        location = _location(key)
        stored = encode_for_storage(value, asset=key.asset) if self._copy else value
        with self._lock:
            self._values[location] = stored
        return location

    def load(self, location: str) -> object:
        """Return the value stored at ``location``.

        Raises:
            ValueNotFoundError: nothing is stored there.
        """
        with self._lock:
            try:
                stored = self._values[location]
            except KeyError:
                raise ValueNotFoundError(
                    f"no value at {location!r} in memory IO manager {self.name!r}. Memory "
                    "values live only as long as this manager instance; it may have been "
                    "deleted, or stored by another instance or process."
                ) from None
        if isinstance(stored, EncodedValue) and self._copy:
            return decode_from_storage(stored, location=location)
        return stored

    def exists(self, location: str) -> bool:
        """Whether a value is stored at ``location``."""
        with self._lock:
            return location in self._values

    def delete(self, location: str) -> None:
        """Remove the value at ``location``; a missing value is not an error."""
        with self._lock:
            self._values.pop(location, None)


def _location(key: StorageKey) -> str:
    parts = [key.pipeline, key.asset, key.partition, key.run_id]
    location = _SCHEME + "/".join(quote(part, safe="", errors="surrogatepass") for part in parts)
    if key.attempt:  # every attempt writes its own place (see StorageKey)
        location += f"/a{int(key.attempt)}"
    if key.item is None:
        return location
    if type(key.item) is not int or key.item < 0:
        raise UnsafeKeyError(
            f"storage key item must be a non-negative int, got {key.item!r} for asset "
            f"{key.asset!r}. Item numbers are scatter item indexes (0, 1, 2...)."
        )
    return f"{location}/item-{key.item}"
