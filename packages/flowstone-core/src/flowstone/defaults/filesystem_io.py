"""An IO manager that keeps values as files under one root directory."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import cast

from flowstone.codec import (
    EncodedValue,
    StorageFormat,
    decode_from_storage,
    encode_for_storage,
)
from flowstone.errors import StorageError, UnsafeKeyError, ValueNotFoundError
from flowstone.protocols import StorageKey

__all__ = ["FilesystemIOManager"]

_FORMATS: tuple[StorageFormat, ...] = ("bin", "json", "pickle")
# Lowercase only: an encoded name can then never differ from another one just by case, so
# case-insensitive filesystems (Windows, macOS) cannot make two keys share a file.
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
_EMPTY_SEGMENT = "@"  # the encoder escapes "@", so this never collides with a real name
_MAX_SEGMENT = 120
_HASHED_PREFIX = 80
_WINDOWS_RESERVED = frozenset(
    ["con", "prn", "aux", "nul"] + [f"{dev}{n}" for dev in ("com", "lpt") for n in range(10)]
)
_LOCATION = re.compile(
    r"(?:[A-Za-z0-9_%~@-]+/){3}[A-Za-z0-9_%~@-]+(?:\.a[1-9][0-9]{0,8})?"
    r"(?:\.item-(?:0|[1-9][0-9]{0,18}))?"
    r"\.(bin|json|pickle)"
)


class FilesystemIOManager:
    """Stores each value as one file under ``root``; durable across processes on one machine.

    Layout: ``<root>/<pipeline>/<asset>/<partition>/<run_id>[.aN][.item-N].<ext>``. Every part is
    made filesystem-safe: bytes outside ``a-z 0-9 _ -`` are percent-encoded (uppercase
    letters too, so names differing only by case stay apart on case-insensitive
    filesystems), an empty part (an unpartitioned asset) is written ``@``, Windows device
    names (``con``, ``nul``, ``com1``...) are escaped, and a part longer than 120 characters
    is shortened to a prefix plus a SHA-256 digest. The location :meth:`store` returns is
    that path relative to ``root``, with ``/`` separators, so the directory can be moved.

    ``<ext>`` is the storage format: ``bin`` for ``bytes`` values (written raw), ``json`` for
    everything the codec encodes (see :mod:`flowstone.codec`), and ``pickle`` only when
    ``allow_pickle=True`` and the codec cannot represent the value. Unpickling runs
    arbitrary code, so without the opt-in a ``.pickle`` location is refused on load.

    Writes are atomic: the value is written to a hidden temporary file in the target
    directory and moved into place with :func:`os.replace`, so readers see the whole old
    file or the whole new one. A value the codec rejects creates nothing at all. Locations
    passed to :meth:`load`, :meth:`exists` and :meth:`delete` may come from a database and
    are validated: anything that is not a location this manager could have produced, or
    that resolves outside ``root`` (through ``..`` or a symlink), raises
    :class:`~flowstone.errors.UnsafeKeyError`. ``root`` is created on the first store.

    Args:
        root: directory holding the values; a relative path is resolved against the
            working directory when the manager is created.
        name: the name the manager is registered under.
        allow_pickle: opt in to pickling values JSON cannot encode (and to loading them).

    Example:
        >>> from flowstone.protocols import StorageKey
        >>> io = FilesystemIOManager(tmp_dir)  # doctest: +SKIP
        >>> io.store(StorageKey("quickstart", "total", "", "r1"), 30)  # doctest: +SKIP
        'quickstart/total/@/r1.json'
    """

    __slots__ = ("_allow_pickle", "_root", "name")

    def __init__(
        self,
        root: str | os.PathLike[str] = ".flowstone/storage",
        name: str = "filesystem",
        allow_pickle: bool = False,
    ) -> None:
        self.name = name
        self._root = Path(os.path.abspath(os.fspath(root)))
        self._allow_pickle = allow_pickle

    def __repr__(self) -> str:
        return (
            f"FilesystemIOManager(root={str(self._root)!r}, name={self.name!r}, "
            f"allow_pickle={self._allow_pickle!r})"
        )

    @property
    def root(self) -> Path:
        """The absolute directory values are stored under."""
        return self._root

    def store(self, key: StorageKey, value: object) -> str:
        """Write ``value`` for ``key`` atomically and return its location.

        Raises:
            EncodingError: the value cannot be encoded; no file or directory is created.
            UnsafeKeyError: the path would leave ``root`` (e.g. a symlinked directory), or
                ``key.item`` is not a non-negative int.
            StorageError: the filesystem refused the write.
        """
        stem = _stem(key)
        encoded = encode_for_storage(value, asset=key.asset, allow_pickle=self._allow_pickle)
        location = f"{stem}.{encoded.format}"
        target = self._inside_root(location)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(target, encoded.data)
        except OSError as exc:
            raise StorageError(
                f"cannot write the value of asset {key.asset!r} to {str(target)!r}: {exc}. "
                "Check that the IO manager root is writable and the disk is not full."
            ) from exc
        # A re-store in another format must not leave the old representation behind.
        for other in _FORMATS:
            if other != encoded.format:
                with contextlib.suppress(OSError):
                    target.with_name(f"{target.name.rsplit('.', 1)[0]}.{other}").unlink()
        return location

    def load(self, location: str) -> object:
        """Return the value at ``location``.

        Raises:
            UnsafeKeyError: ``location`` is malformed or points outside ``root``.
            ValueNotFoundError: no value is stored there.
            StorageError: a ``.pickle`` value without ``allow_pickle=True``, or an unreadable
                or corrupt file.
        """
        path, fmt = self._resolve(location)
        if fmt == "pickle" and not self._allow_pickle:
            # Refuse before reading: the opt-in is about trusting the data at all.
            return decode_from_storage(EncodedValue(fmt, b""), location=location)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ValueNotFoundError(
                f"no value at {location!r} under {str(self._root)!r}. It was deleted or never "
                "written, or the IO manager root changed; re-materialize the asset."
            ) from None
        except OSError as exc:
            raise StorageError(f"cannot read {location!r} under {self._root}: {exc}") from exc
        return decode_from_storage(
            EncodedValue(fmt, data), allow_pickle=self._allow_pickle, location=location
        )

    def exists(self, location: str) -> bool:
        """Whether a value is stored at ``location`` (validated as for :meth:`load`)."""
        path, _ = self._resolve(location)
        return path.is_file()

    def delete(self, location: str) -> None:
        """Remove the value at ``location``; a missing value is not an error."""
        path, _ = self._resolve(location)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {location!r} under {self._root}: {exc}") from exc

    def stored_before(
        self, cutoff: datetime, *, pipeline: str, since: datetime | None = None
    ) -> Iterator[str]:
        """Locations of ``pipeline``'s values last written in ``[since, cutoff)`` (file
        mtime), found by walking ``<root>/<pipeline>`` (see
        :class:`~flowstone.protocols.ValuePruning`)."""
        base = self._root / _segment(pipeline, StorageKey(pipeline, "", "", ""))
        before, first = cutoff.timestamp(), 0.0 if since is None else since.timestamp()
        for folder, _, files in os.walk(base):
            for name in sorted(files):
                path = Path(folder, name)
                location = path.relative_to(self._root).as_posix()
                if _LOCATION.fullmatch(location) is None:
                    continue  # not a value (an interrupted write's temporary file, say)
                try:
                    if first <= path.stat().st_mtime < before:
                        yield location
                except FileNotFoundError:
                    continue

    def _resolve(self, location: str) -> tuple[Path, StorageFormat]:
        match = _LOCATION.fullmatch(location) if isinstance(location, str) else None
        if match is None:
            raise UnsafeKeyError(
                f"{location!r} is not a location FilesystemIOManager {self.name!r} produces "
                "(expected '<pipeline>/<asset>/<partition>/<run_id>[.item-N].<bin|json|pickle>' "
                "relative to the root, without '..' or a leading '/'). Pass the location "
                "store() returned, unchanged."
            )
        # The regex only matches the known formats.
        return self._inside_root(location), cast(StorageFormat, match.group(1))

    def _inside_root(self, location: str) -> Path:
        target = self._root / location
        real_root = os.path.realpath(self._root)
        real_target = os.path.realpath(target)
        if os.path.commonpath([real_root, real_target]) != real_root or real_target == real_root:
            raise UnsafeKeyError(
                f"location {location!r} resolves to {real_target!r}, outside the IO manager "
                f"root {real_root!r} (a symlink inside the root points elsewhere). Remove the "
                "symlink or choose a root that contains its target."
            )
        return target


def _stem(key: StorageKey) -> str:
    """``<pipeline>/<asset>/<partition>/<run_id>[.aN][.item-N]`` with every part made safe
    (``aN``: the attempt, so every attempt writes its own file)."""
    parts = [key.pipeline, key.asset, key.partition, key.run_id]
    stem = "/".join(_segment(part, key) for part in parts)
    if key.attempt:
        stem += f".a{int(key.attempt)}"
    if key.item is None:
        return stem
    if type(key.item) is not int or key.item < 0:
        raise UnsafeKeyError(
            f"storage key item must be a non-negative int, got {key.item!r} for asset "
            f"{key.asset!r}. Item numbers are scatter item indexes (0, 1, 2...)."
        )
    return f"{stem}.item-{key.item}"


def _segment(text: str, key: StorageKey) -> str:
    if not isinstance(text, str):
        raise UnsafeKeyError(
            f"storage key parts must be strings, got {type(text).__name__} {text!r} in {key!r}. "
            "Encode partitions with flowstone.partitions.encode_partition."
        )
    if text == "":
        return _EMPTY_SEGMENT
    raw = text.encode("utf-8", "surrogatepass")
    out = "".join(chr(b) if chr(b) in _SAFE else f"%{b:02X}" for b in raw)
    if out in _WINDOWS_RESERVED:
        out = f"%{ord(out[0]):02X}{out[1:]}"
    if len(out) > _MAX_SEGMENT:
        # "~" is always escaped by the encoder, so a shortened name cannot collide with a
        # short one; the digest of the full name keeps long names apart from each other.
        out = f"{out[:_HASHED_PREFIX]}~{hashlib.sha256(raw).hexdigest()[:32]}"
    return out


def _write_atomically(target: Path, data: bytes) -> None:
    # Hidden temp name in the same directory: os.replace is then a same-filesystem rename,
    # and the name can never match a location, so a crash leftover is never loaded.
    tmp = target.with_name(f".tmp-{secrets.token_hex(8)}-{target.name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
