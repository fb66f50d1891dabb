"""The run directory: one owner at a time, its identity, its files, resume.

Layout::

    run_dir/
      .lock                               held (flock) by the one process running it
      settings.json                       what fixes the labels (a resume must match it)
      files.json                          checksums and frame counts of the fixed sets
      validation.extxyz  test.extxyz      fixed once, never re-split
      labels.jsonl                        label cache: no structure is paid for twice
      round_000/ train.extxyz committee.pt files.json metrics.json
      round_001/ candidates.extxyz selected.extxyz trajectories.extxyz train.extxyz committee.pt files.json metrics.json

One owner. :meth:`RunDir.lock` takes an exclusive ``fcntl.flock`` on ``run_dir/.lock``
and writes the holder's pid, host and start time into it. The kernel drops the lock when
the process ends however it ends (``kill -9`` included), so a lock is never stale: the
next process takes it at once. A second process is refused (:class:`RunDirBusy`, naming
the directory and the holder) or, with ``wait=True``, waits until the holder is done and
then resumes from what it wrote. ``flock`` is advisory and local: on a network file
system where it is not supported, run one process per run directory yourself.

Identity. ``settings.json`` holds everything that fixes the labels; a run directory is
resumed only with the same settings, else refused naming what differs - unless the
directory holds nothing paid for yet (no complete round, no label), in which case the
new settings replace the old ones (a corrected first start). ``files.json`` records each
file's checksum and frame count; a damaged or truncated file is named on resume.

Nothing is written until the run is known to be valid: the checks live in
``ActiveLearning.__init__`` and in :meth:`RunDir.check_settings`; a first start refused
there leaves the directory as it was (or absent). OS errors while writing
(:class:`RunDirWriteError`, an ``OSError``) name the file and the run directory.

``flock`` is used directly (not a lock-file library) because the lock must die with its
process and carry its holder's name; filelock's ``FileLock`` is the same call without the
holder.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from ase import Atoms
from ase.io import read, write

LOCK_NAME = ".lock"


class RunDirBusy(RuntimeError):
    """Another process holds the run directory's lock. ``holder``: its pid, host, start time."""

    def __init__(self, message: str, directory: Path, holder: dict):
        super().__init__(message)
        self.directory = directory
        self.holder = holder


class RunDirMismatch(ValueError):
    """The run directory holds paid work made with other settings (a ValueError, as before)."""


class RunDirWriteError(OSError):
    """An OS error while writing a run directory's file, naming the file and the directory."""


# --------------------------------------------------------------------------- files
def write_atoms(path: Path, atoms_list: Sequence[Atoms]) -> None:
    """Frames as extxyz (an empty file for none)."""
    if atoms_list:
        write(path, list(atoms_list), format="extxyz")
    else:
        Path(path).write_text("")


def read_atoms(path: Path) -> list[Atoms]:
    """Frames of an extxyz file ([] for a missing or empty one); ValueError naming a damaged file."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return []
    try:
        return read(path, index=":", format="extxyz")
    except Exception as exc:  # ASE raises many kinds on a damaged file
        raise ValueError(f"{path} cannot be read as extxyz (damaged or truncated?): {type(exc).__name__}: {exc}") from exc


def write_json(path: Path, data: dict) -> None:
    """``data`` as JSON, atomically (a temporary file, then ``os.replace``)."""
    path = Path(path)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2, default=float))
    os.replace(temporary, path)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fingerprint(atoms_list: Sequence[Atoms]) -> str:
    """Hash of a labeled set: numbers, positions, cell, pbc, energies and forces of every structure.

    Floats are rounded to 1e-8 (positions, cell in Å; labels in the reference's units).
    """
    h = hashlib.sha256(b"advsample-set-v1")
    h.update(str(len(atoms_list)).encode())
    for atoms in atoms_list:
        h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
        for array in (atoms.positions, atoms.cell.array):
            h.update(np.round(np.asarray(array, dtype=float), 8).tobytes())
        h.update(np.asarray(atoms.pbc, dtype=np.uint8).tobytes())
        results = getattr(atoms.calc, "results", None) or {}
        for name in ("energy", "forces"):
            if name in results:
                h.update(name.encode() + np.round(np.asarray(results[name], dtype=float), 8).tobytes())
    return h.hexdigest()[:32]


def committee_fingerprint(committee, weights_only: bool = False) -> str:
    """Hash of a committee's checkpoint: model class and config, every weight and buffer (the
    energy normalisation included) bit for bit, and its calibration (32 hex digits).
    ``weights_only``: the weights and buffers alone (names and bytes; 16 hex digits): two
    checkpoints with the same weights (a continued round that kept its parent's) are one committee
    however their files, configs or calibrations differ (the audit's test for copies)."""
    data = committee.checkpoint()
    h = hashlib.sha256() if weights_only else hashlib.sha256(b"advsample-committee-v1")
    if not weights_only:
        h.update(json.dumps([data["model_class"], data["model_config"], data.get("calibration")], sort_keys=True,
                            default=repr).encode())
    for key in sorted(data["state_dict"]):
        tensor = data["state_dict"][key].contiguous()
        h.update(key.encode() if weights_only else
                 key.encode() + str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()[:16 if weights_only else 32]


def file_record(path: Path, frames: int | None) -> dict:
    record = {"sha256": sha256(path)}
    if frames is not None:
        record["frames"] = int(frames)
    return record


def check_files(directory: Path, what: str) -> None:
    """Compare the files of ``directory`` with its ``files.json``; ValueError naming a damaged one."""
    manifest = Path(directory) / "files.json"
    if not manifest.exists():
        raise ValueError(f"{manifest} is missing: {what} cannot be checked; restore it, or delete {what} to redo it")
    for name, record in json.loads(manifest.read_text()).items():
        path = Path(directory) / name
        frames = f" ({record['frames']} frames)" if "frames" in record else ""
        if not path.exists():
            raise ValueError(f"{path} is missing{frames}; restore it, or delete {what} to redo it")
        if sha256(path) != record["sha256"]:
            found = ""
            if "frames" in record and path.suffix == ".extxyz":
                try:
                    found = f"; it now reads as {len(read_atoms(path))} of {record['frames']} frames"
                except ValueError:
                    found = "; it no longer reads as extxyz"
            raise ValueError(
                f"{path} is damaged: its checksum differs from the one recorded when it was written{frames}"
                f"{found}; restore it, or delete {what} to redo it"
            )


def first_difference(stored, now, where: str = "") -> str:
    """Where two JSON values first differ and how (``model[1].model_sha256[0]: stored 'ab…', now 'cd…'``);
    a differing checksum of a list of files names the file beside it (``model_paths``)."""
    if isinstance(stored, dict) and isinstance(now, dict):
        for key in sorted(stored.keys() | now.keys()):
            if stored.get(key) != now.get(key):
                text = first_difference(stored.get(key), now.get(key), f"{where}.{key}" if where else key)
                if key == "model_sha256" and isinstance(now.get("model_paths"), list):
                    for index, (a, b) in enumerate(zip(stored.get(key) or [], now.get(key) or [])):
                        if a != b and index < len(now["model_paths"]):
                            text += f" - the contents of the file {now['model_paths'][index]} changed"
                            break
                return text
    if isinstance(stored, list) and isinstance(now, list) and len(stored) == len(now):
        for index, (a, b) in enumerate(zip(stored, now)):
            if a != b:
                return first_difference(a, b, f"{where}[{index}]")
    shown = lambda value: (json.dumps(value) if value is not None else "nothing")[:300]  # noqa: E731
    return f"{where}: stored {shown(stored)}, now {shown(now)}"


def changed_settings(stored: dict, settings: dict) -> list[str]:
    """Keys whose values differ between two settings dicts (JSON data), sorted."""
    return sorted(key for key in settings.keys() | stored.keys() if settings.get(key) != stored.get(key))


# --------------------------------------------------------------------------- the directory
class RunDir:
    """One run directory: lock, settings, fixed sets, rounds (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None
        self._created: bool = False  # this process made the directory (removed again if left empty)
        self._written: list[Path] = []  # files written before anything was paid for

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- writing -------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self, path: Path) -> Iterator[None]:
        """Turn an OS error while writing ``path`` into a :class:`RunDirWriteError` naming it."""
        try:
            yield
        except RunDirWriteError:
            raise
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise RunDirWriteError(
                exc.errno or errno.EIO,
                f"could not write {path} in run directory {self.path}: {reason}. Free space or fix permissions "
                "and rerun: the run resumes after its last complete round",
                str(path),
            ) from exc

    def write_atoms(self, path: Path, atoms_list: Sequence[Atoms]) -> None:
        with self.writing(path):
            write_atoms(path, atoms_list)

    def write_json(self, path: Path, data: dict) -> None:
        with self.writing(path):
            write_json(path, data)

    def check_writable(self) -> None:
        """PermissionError (naming the path) unless the directory can be created and written."""
        try:
            if not self.path.exists():
                try:
                    self.path.mkdir(parents=True)
                    self._created = True
                except FileExistsError:  # another process made it at the same moment: the lock decides who runs
                    pass
            with tempfile.TemporaryFile(dir=self.path):
                pass
            labels = self.path / "labels.jsonl"
            if labels.exists():
                with open(labels, "ab"):
                    pass
        except OSError as exc:
            raise PermissionError(
                f"run directory {self.path} is not writable ({type(exc).__name__}: {exc}); "
                "nothing was computed: choose a writable run_dir"
            ) from exc

    # -- the lock ------------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_NAME

    @property
    def locked(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def holder(self) -> dict:
        """What the lock file says of its holder ({} when unreadable or not yet written)."""
        try:
            return json.loads(self.lock_path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _holder_named(self, patience_s: float = 2.0) -> dict:
        """The holder, given up to ``patience_s`` to write its pid: a process that has just taken the lock writes
        it a moment later, and a refusal should name whom it is refused for."""
        deadline = time.monotonic() + patience_s
        holder = self.holder()
        while not holder and time.monotonic() < deadline and self.lock_path.exists():
            time.sleep(0.02)
            holder = self.holder()
        return holder

    def _describe(self, holder: dict) -> str:
        if not holder:
            return "another process (just starting; its pid is not written yet)"
        own = holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()
        note = " - this very process: an unfinished irun() of another ActiveLearning holds it; finish or close it" if own else ""
        return (f"process {holder.get('pid', '?')} on host {holder.get('host', '?')} "
                f"(since {holder.get('since', '?')}){note}")

    def _try_lock(self) -> bool:
        """One non-blocking attempt; True when this process now holds the lock."""
        if not self.path.is_dir():  # removed by a refused first start of another process
            self.check_writable()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        try:  # the holder may have removed the file between our open and our lock: retry on the new one
            same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def lock(self, wait: bool = False, poll_s: float = 0.2, timeout_s: float | None = None) -> None:
        """Take the run directory's exclusive lock (held until :meth:`unlock` or process end).

        wait: False -> :class:`RunDirBusy` at once when another process holds it (naming the
        directory and the holder's pid and host); True -> wait (``timeout_s``: at most that
        long, then RunDirBusy), warning once whom it waits for.
        """
        if self._fd is not None:
            return
        start, warned = time.monotonic(), False
        while not self._try_lock():
            holder = self._holder_named()
            if not wait or (timeout_s is not None and time.monotonic() - start > timeout_s):
                waited = f" after waiting {time.monotonic() - start:.0f} s" if wait else ""
                raise RunDirBusy(
                    f"run directory {self.path} is in use by {self._describe(holder)}{waited}; nothing was computed. "
                    "Wait for it to finish (ActiveLearning(..., wait=True) waits, then resumes from what it wrote), "
                    "or use another run_dir",
                    self.path, holder,
                )
            if not warned:
                warnings.warn(f"run directory {self.path} is in use by {self._describe(holder)}: waiting for it",
                              RuntimeWarning, stacklevel=2)
                warned = True
            time.sleep(poll_s)
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        data = (json.dumps(holder) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def unlock(self) -> None:
        """Release the lock; the lock file is removed (while held), and the directory too when this
        process created it and left it empty (a refused first start leaves nothing)."""
        if self._fd is None:
            return
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)
        finally:
            os.close(self._fd)  # releases the flock
            self._fd = None
        if self._created:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only when empty

    # -- identity ------------------------------------------------------------------
    def holds_paid_work(self) -> bool:
        """True when a round is complete or a reference call is recorded here."""
        labels = self.path / "labels.jsonl"
        if labels.exists() and labels.stat().st_size > 0:
            return True
        return any(self.path.glob("round_*/metrics.json"))

    def check_settings(self, settings: dict) -> None:
        """Write ``settings.json`` on a first start; else refuse other settings, naming the first.

        A directory holding nothing paid for (no complete round, no label) takes the new
        settings: a first start that failed is corrected by rerunning into the same directory.
        """
        path = self.path / "settings.json"
        settings = json.loads(json.dumps(settings, default=repr))
        if path.exists():
            stored = json.loads(path.read_text())
            changed = changed_settings(stored, settings)
            if not changed:
                return
            if self.holds_paid_work():
                first = changed[0]
                raise RunDirMismatch(
                    f"{self.path} holds a run made with other settings ({', '.join(changed)} differ; "
                    f"{first_difference(stored.get(first), settings.get(first), first)}); "
                    "use a new run_dir, or the same settings, reference and data to resume it"
                )
            for name in ("files.json", "validation.extxyz", "test.extxyz"):  # unpaid: start over
                with contextlib.suppress(FileNotFoundError):
                    (self.path / name).unlink()
        self.write_json(path, settings)
        self._written.append(path)

    def fixed_sets(self, validation: list[Atoms], test: list[Atoms]) -> tuple[list[Atoms], list[Atoms]]:
        """(validation, test) as stored: written on first use (with files.json), checked and read after."""
        validation_path, test_path = self.path / "validation.extxyz", self.path / "test.extxyz"
        if (self.path / "files.json").exists():
            check_files(self.path, f"the run directory {self.path}")
        else:  # first use, or killed before files.json: the settings match, so these are the same sets
            self.write_atoms(validation_path, validation)
            self.write_atoms(test_path, test)
            self.write_json(self.path / "files.json", {
                "validation.extxyz": file_record(validation_path, len(validation)),
                "test.extxyz": file_record(test_path, len(test)),
            })
            self._written += [validation_path, test_path, self.path / "files.json"]
        # always continue from what is on disk, so a resumed run sees exactly the same numbers
        return read_atoms(validation_path), read_atoms(test_path)

    def discard_unpaid(self) -> None:
        """After a failed first start: remove what this process wrote, if nothing was paid for."""
        if self.holds_paid_work():
            return
        for path in self._written:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for directory in self.path.glob("round_*"):
            if directory.is_dir() and not (directory / "metrics.json").exists():
                for file in directory.iterdir():
                    with contextlib.suppress(OSError):
                        file.unlink()
                with contextlib.suppress(OSError):
                    directory.rmdir()
        self._written = []

    # -- rounds --------------------------------------------------------------------
    def round_dir(self, number: int) -> Path:
        return self.path / f"round_{number:03d}"

    def save_round(self, number: int, metrics: dict, committee, frames: dict[str, Sequence[Atoms]]) -> list[Atoms]:
        """Write a round: ``frames`` ({file name: frames}), ``committee.pt``, ``files.json``,
        then ``metrics.json`` (last: a round without it is incomplete). Returns the training
        set as read back from ``train.extxyz`` (the next round starts from the disk state)."""
        directory = self.round_dir(number)
        with self.writing(directory):
            directory.mkdir(parents=True, exist_ok=True)
        for name, atoms_list in frames.items():
            self.write_atoms(directory / name, atoms_list)
        with self.writing(directory / "committee.pt"):
            committee.save(directory / "committee.pt")
        files = {name: file_record(directory / name, len(atoms_list)) for name, atoms_list in frames.items()}
        files["committee.pt"] = file_record(directory / "committee.pt", None)
        self.write_json(directory / "files.json", files)
        self.write_json(directory / "metrics.json", metrics)
        return read_atoms(directory / "train.extxyz")

    def load_round(self, number: int, device: str = "cpu", allow_pickle: bool = False) -> dict | None:
        """A complete round's parts ({metrics, train, selected, candidates, committee}); None when incomplete."""
        from .committee import Committee

        directory = self.round_dir(number)
        if not (directory / "metrics.json").exists():
            return None
        check_files(directory, f"{directory} and the rounds after it")
        return {
            "metrics": json.loads((directory / "metrics.json").read_text()),
            "committee": Committee.load(directory / "committee.pt", device=device, allow_pickle=allow_pickle),
            "train": read_atoms(directory / "train.extxyz"),
            "selected": read_atoms(directory / "selected.extxyz"),
            "candidates": read_atoms(directory / "candidates.extxyz"),
        }


# --------------------------------------------------------------------------- a run's inputs, checked before anything is written
def check_cells(atoms_list: Sequence[Atoms], what: str) -> None:
    """ValueError naming ``what`` and the structure when a periodic direction has a zero or
    degenerate cell (its periodic cell vectors not linearly independent)."""
    for index, atoms in enumerate(atoms_list):
        pbc = np.asarray(atoms.pbc, dtype=bool)
        if not pbc.any():
            continue
        cell = np.asarray(atoms.cell.array, dtype=float)
        vectors = cell[pbc]
        lengths = np.linalg.norm(vectors, axis=1)
        singular = np.linalg.svd(vectors, compute_uv=False)
        if lengths.min() < 1e-8 or singular.min() < 1e-6 * max(lengths.max(), 1.0):
            axes = "".join("xyz"[i] for i in np.flatnonzero(pbc))
            raise ValueError(
                f"{what} structure {index} ({atoms.get_chemical_formula()}) has pbc={pbc.tolist()} but a "
                f"{'zero' if lengths.min() < 1e-8 else 'degenerate'} cell along its periodic directions ({axes}): "
                f"cell vectors {np.round(vectors, 6).tolist()} Å. Set the cell (atoms.cell = ...) or pbc=False"
            )


def deduplicate(atoms_list: Sequence[Atoms], what: str) -> list[Atoms]:
    """``atoms_list`` without repeated geometries (the first kept), warning with their indices."""
    from .label import geometry_key

    seen: dict[str, int] = {}
    kept, repeats = [], []
    for index, atoms in enumerate(atoms_list):
        key = geometry_key(atoms)
        if key in seen:
            repeats.append(f"{index} (= {seen[key]})")
        else:
            seen[key] = index
            kept.append(atoms)
    if repeats:
        shown = ", ".join(repeats[:10]) + (" ..." if len(repeats) > 10 else "")
        warnings.warn(f"{what}: {len(repeats)} duplicate structure(s) removed (the same geometry twice would sit in "
                      f"training and validation at once): {shown}", RuntimeWarning, stacklevel=3)
    return kept


def _symbols(numbers) -> str:
    from ase.data import chemical_symbols

    return ", ".join(chemical_symbols[z] for z in sorted(numbers))


def check_elements(atoms_list: Sequence[Atoms], what: str, known: set[int], known_what: str) -> None:
    """ValueError naming ``what``, the first structure and the elements missing from ``known``."""
    for index, atoms in enumerate(atoms_list):
        missing = set(int(z) for z in atoms.numbers) - known
        if missing:
            raise ValueError(
                f"{what} structure {index} ({atoms.get_chemical_formula()}) holds element(s) {_symbols(missing)} that "
                f"{known_what} lacks ({_symbols(known) or 'none'}): its errors would be meaningless. Add such "
                f"structures to the initial set, or remove them from the {what}"
            )


def check_run_inputs(model, reference, train: Sequence[Atoms], validation: Sequence[Atoms],
                     test: Sequence[Atoms], build: bool = False) -> None:
    """Everything about a run's inputs that can be checked before anything is written or paid:
    the reference is importable and takes its keywords (``build``: and builds), periodic cells are sound, and the
    validation and test sets hold only elements of the training set and of the model's
    ``species`` (when it declares them)."""
    from .label import as_spec

    spec = as_spec(reference)
    if spec is not None:
        spec.check(build=build)
    for what, atoms_list in (("initial set", train), ("validation set", validation), ("test set", test)):
        check_cells(atoms_list, what)
    species = getattr(model, "species", None)
    if species is not None:
        known = {int(z) for z in species}
        for what, atoms_list in (("initial set", train), ("validation set", validation), ("test set", test)):
            check_elements(atoms_list, what, known, f"the model (species {sorted(known)})")
    elements = {int(z) for atoms in train for z in atoms.numbers}
    for what, atoms_list in (("validation set", validation), ("test set", test)):
        check_elements(atoms_list, what, elements, "the training set")
