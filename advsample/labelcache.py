"""Persistent labels keyed by geometry (:class:`LabelCache`, :func:`geometry_key`).

The cache is an append-only JSON-lines file; every result is appended and fsynced as soon
as it arrives, so a killed run loses nothing already labeled and a cache hit never calls
the reference. Use one cache per reference calculator. Both names are importable from
:mod:`advsample.label` too.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from ase import Atoms

__all__ = ["LabelCache", "geometry_key", "open_cache"]


def geometry_key(atoms: Atoms, decimals: int = 6) -> str:
    """Hash of atomic numbers, positions and cell (rounded to ``10**-decimals`` Å) and pbc."""
    scale = 10.0 ** decimals
    h = hashlib.sha256(b"advsample-geometry-v1")
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.rint(np.asarray(atoms.positions, dtype=float) * scale).astype(np.int64).tobytes())
    h.update(np.rint(np.asarray(atoms.cell.array, dtype=float) * scale).astype(np.int64).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=np.uint8).tobytes())
    return h.hexdigest()[:40]


class LabelCache:
    """Persistent labels keyed by geometry: an append-only JSON-lines file.

    Each record is one line ``{"key", "ok", "energy", "forces", "source", ...}`` or
    ``{"key", "ok": false, "reason", ...}``, written with a single ``write`` and fsynced.
    A process killed mid-write leaves at most one truncated last line, which loading skips
    (``n_corrupt``). The last record of a key wins. Several processes may share the file:
    each appends whole lines with one ``O_APPEND`` write, and :meth:`refresh` reads what the
    others appended since (labeling re-reads before each wave and before each inline call,
    so a key already present is not paid again).
    ``n_calls`` / ``n_failed_calls``: records in the file (every calculation paid, a retried
    failure counted again), so they stay right across any number of interrupted runs.
    """

    def __init__(self, path: str | os.PathLike, decimals: int = 6):
        self.path = Path(path)
        self.decimals = int(decimals)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._records: dict[str, dict] = {}
        self.n_corrupt = 0
        self.n_calls = 0  # records in the file: one per reference calculation paid (retries included)
        self.n_failed_calls = 0  # of which failures
        self._needs_newline = False
        self._offset = 0  # bytes of the file read so far (whole lines)
        self._own: list[bytes] = []  # lines this process appended since the last read
        self.reload()

    def reload(self) -> None:
        """(Re)read the file."""
        self._records.clear()
        self.n_corrupt = self.n_calls = self.n_failed_calls = 0
        self._offset, self._own = 0, []
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        self._needs_newline = bool(data) and not data.endswith(b"\n")
        self._offset = len(data)
        self._parse(data.split(b"\n"))

    def _parse(self, lines) -> set[str]:
        keys = set()
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = record["key"]
            except (ValueError, KeyError, TypeError):
                self.n_corrupt += 1
                continue
            self._records[key] = record
            self._count(record)
            keys.add(key)
        return keys

    def refresh(self) -> set[str]:
        """Read the records other processes appended since the last read; returns their keys."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return set()
        end = data.rfind(b"\n") + 1  # whole lines only: a line being written is read next time
        if end == 0:
            return set()
        self._offset += end
        lines = data[:end].split(b"\n")
        own = list(self._own)
        self._own = []
        foreign = []
        for line in lines:
            if line in own:  # appended (and counted) by this process
                own.remove(line)
            else:
                foreign.append(line)
        self._own = own
        return self._parse(foreign)

    def _count(self, record: dict) -> None:
        self.n_calls += 1
        self.n_failed_calls += not record.get("ok")

    def key(self, atoms: Atoms) -> str:
        return geometry_key(atoms, self.decimals)

    def get(self, atoms_or_key: Atoms | str) -> dict | None:
        """The record for a geometry (``ok`` True with ``energy``/``forces``, or a failure)."""
        key = atoms_or_key if isinstance(atoms_or_key, str) else self.key(atoms_or_key)
        return self._records.get(key)

    def __contains__(self, atoms_or_key) -> bool:
        return self.get(atoms_or_key) is not None

    def __len__(self) -> int:
        return len(self._records)

    @property
    def n_labels(self) -> int:
        return sum(1 for r in self._records.values() if r.get("ok"))

    def _append(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
        data = (("\n" if self._needs_newline else "") + line).encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:  # a full disk, a lost mount: name the file (the result is lost, the call was paid)
            raise OSError(exc.errno, f"could not append to the label cache {self.path}: {exc.strerror or exc}; "
                          "free space or fix the file system and rerun: every earlier label is kept", str(self.path)
                          ) from exc
        self._needs_newline = False
        self._own.append(line.rstrip("\n").encode())
        self._records[record["key"]] = record
        self._count(record)

    def put_label(self, key: str, energy: float, forces: np.ndarray, **extra) -> None:
        forces = np.asarray(forces, dtype=float)
        self._append({"key": key, "ok": True, "energy": float(energy), "forces": forces.tolist(), **extra})

    def put_failure(self, key: str, reason: str, **extra) -> None:
        self._append({"key": key, "ok": False, "reason": str(reason), **extra})


def open_cache(cache) -> LabelCache | None:
    """A :class:`LabelCache` for a cache, a path, or None."""
    if cache is None or isinstance(cache, LabelCache):
        return cache
    return LabelCache(cache)
