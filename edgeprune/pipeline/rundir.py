"""The run directory: what the user owns, stage artifacts that make a re-run resume, and
publication of results as one set.

Before any work, `check_out` refuses an ``--out`` that is a file, that cannot be written, or that
holds one of the run's inputs (its outputs, or a work folder wiped for new settings, would destroy
them). `OutLock` then holds ``OUT/.edgeprune.lock`` for the whole run, so a second run on the same
folder stops at once instead of resuming from the first one's stages and publishing a mixed set.

Stage results live in ``OUT/work/<stage>.json`` next to a ``config.json`` describing the settings
they were computed with. A re-run with the same settings reuses every finished stage and resumes at
the first missing one; different settings start the work folder afresh. The user-facing outputs in
``OUT/`` are replaced only when a run has finished: all are copied beside their destinations first,
then moved over them together, so a failed run leaves the previous set intact.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeprune import atomic
from edgeprune.errors import EdgepruneError

if TYPE_CHECKING:
    import torch

LOCK_NAME = ".edgeprune.lock"


def check_out(out: str | Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an --out that is a file, is not writable, or holds (or is inside) one of `inputs`
    (the model file, the data file or folder). Writes nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgepruneError(f"--out {out} is a file; give a folder for model.onnx, model.pt, report.json and the rest")
    target = out.resolve()
    for given in inputs:
        src = Path(given)
        if not src.exists():
            continue
        real = src.resolve()
        if real == target or target in real.parents:
            raise EdgepruneError(
                f"--out {out} contains the input {given}, which the run's outputs could overwrite; "
                "pick a folder that holds none of your inputs"
            )
        if src.is_dir() and real in target.parents:
            raise EdgepruneError(f"--out {out} is inside the input folder {given}; pick a folder outside it")
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise EdgepruneError(f"--out {out}: {existing} is a file, so the folder cannot be made; pick another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EdgepruneError(
            f"--out {out}: cannot write in {existing} (permission denied); pick a folder you can write to"
        )


class OutLock:
    """An exclusive lock on an output folder for one run (`flock` on OUT/.edgeprune.lock).

    The kernel drops a flock when its process dies, so a run killed with -9 leaves a lock file
    nobody holds: the next run takes it over (and says so), while a live run's lock stops a second
    one at once with its pid and command. Release deletes the file while still holding the flock,
    then closes it, so a finished, refused or interrupted run leaves nothing in --out. A run that
    opened the file just before it was deleted may then flock the deleted inode: `acquire` checks,
    once locked, that the path still names the inode it locked, and starts again if not, so two
    runs never hold locks on two different files of the same name."""

    def __init__(self, out: str | Path) -> None:
        self.path = Path(out) / LOCK_NAME
        self._fd: int | None = None
        self.taken_over: dict[str, Any] | None = None  # the holder a killed run left behind, if any

    def acquire(self) -> OutLock:
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise EdgepruneError(
                    f"cannot write in --out {self.path.parent} ({err.strerror}); pick a folder you can write to"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not self._names(fd):  # its holder deleted it on release since we opened it: open afresh
                    os.close(fd)
                    continue
                holder = _holder(fd)
                os.close(fd)
                who = (
                    f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
                    f"started {holder.get('started', '?')}: {holder.get('command', '?')}"
                )
                raise EdgepruneError(
                    f"--out {self.path.parent} is in use by another run ({who}); "
                    "wait for it to finish or pick another --out"
                ) from None
            if not self._names(fd):  # locked a file its holder deleted on release: lock the new one
                os.close(fd)
                continue
            break
        self.taken_over = _holder(fd) or None
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "command": " ".join(sys.argv),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                }
            ).encode(),
            0,
        )
        self._fd = fd
        return self

    def _names(self, fd: int) -> bool:
        """Whether the lock path still names the file open as `fd` (not deleted, not replaced)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        own = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)

    def release(self) -> None:
        """Delete the lock file while still holding it, then close it (closing drops the flock)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if self._names(fd):  # ours unless someone removed it by hand
                    self.path.unlink()
            except OSError:
                pass  # left behind: the next run takes it over, as after a kill -9
            finally:
                os.close(fd)


def _holder(fd: int) -> dict[str, Any]:
    """What the lock's holder wrote about itself ({} when empty: released cleanly, or never held)."""
    raw = os.pread(fd, 4096, 0)
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {"command": raw.decode(errors="replace")[:200]}


@contextlib.contextmanager
def locked(out: str | Path, enabled: bool = True) -> Iterator[OutLock | None]:
    """Hold the output folder's lock for the block (ranks other than 0 do not write, so do not lock)."""
    if not enabled:
        yield None
        return
    lock = OutLock(out).acquire()
    try:
        yield lock
    finally:
        lock.release()


class RunDir:
    def __init__(self, out: str | Path, config: dict[str, Any], write: bool = True) -> None:
        """`write=False` (ranks other than 0 under torchrun) computes stages without touching disk."""
        self.out = Path(out)
        self.work = self.out / "work"
        self.config = config
        self.write = write
        if not write:
            return
        cfg_path = self.work / "config.json"
        if cfg_path.exists():
            try:
                # compare as JSON: tuples in `config` (Settings.unprunable) read back as lists
                same = json.loads(cfg_path.read_text(encoding="utf-8")) == json.loads(json.dumps(config))
            except ValueError:
                same = False
            if not same:
                shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        atomic.write_json(cfg_path, config)

    def path(self, name: str) -> Path:
        return self.work / name

    def done(self, stage: str) -> bool:
        return self.path(f"{stage}.json").exists()

    def stage(self, stage: str, compute: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
        """The stage's result: loaded when a previous run finished it, else computed and saved.

        Returns (result, resumed).
        """
        p = self.path(f"{stage}.json")
        if p.exists():
            return json.loads(p.read_text(encoding="utf-8")), True
        result = compute()
        if self.write:
            atomic.write_json(p, result)
        return result, False

    def kept(
        self, stage: str, key: dict[str, Any], compute: Callable[[], dict[str, Any]]
    ) -> tuple[dict[str, Any], bool]:
        """Like `stage`, for results that depend on less than the whole config (a layerwise
        search's sensitivity map does not depend on the budget): kept in ``OUT/cache/`` under a
        hash of `key`, which a re-run with other settings does not wipe."""
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        p = self.out / "cache" / f"{stage}-{digest}.json"
        if p.exists():
            return json.loads(p.read_text(encoding="utf-8")), True
        result = compute()
        if self.write:
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_json(p, result)
        return result, False

    def publish(self, files: dict[str, Path]) -> None:
        """Copy finished work files (or folders: a Hugging Face model) to their user-facing names in
        OUT/ as one set: every copy is made beside its destination first, and only when all exist
        are they moved over the old ones (each file move atomic, in the order given: put the report,
        which lists the others' hashes, last), so a failure while copying leaves the earlier set whole.
        A folder is swapped in by two renames (the old one aside, the new one in), then the old removed."""
        staged: list[tuple[Path, Path]] = []
        try:
            for name, src in files.items():
                tmp = atomic.temp_beside(self.out / name)
                staged.append((tmp, self.out / name))
                if src.is_dir():
                    tmp.unlink()
                    shutil.copytree(src, tmp)
                else:
                    shutil.copyfile(src, tmp)
            for tmp, dest in staged:
                if tmp.is_dir():
                    _replace_folder(tmp, dest)
                else:
                    os.replace(tmp, dest)
        finally:
            for tmp, _ in staged:
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)


def _replace_folder(new: Path, dest: Path) -> None:
    """Move folder `new` to `dest`, replacing an earlier published folder there."""
    old = None
    if dest.exists():
        old = atomic.temp_beside(dest)
        old.unlink()
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def weights_sha256(model: torch.nn.Module) -> str:
    """What a run's stage results depend on of the model: its weights, name by name."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
