"""Writing files so that nothing is ever half-written, and cleaning up after writers that died.

* ``atomic_write_bytes`` / ``atomic_write_text``: every file edgekit writes to a path a
  user gave (results, reports, profiles, JUnit, manifests, bundles' files) goes through
  them. A regular file (or none yet): a unique temporary file beside the target, fsync,
  then ``os.replace``; concurrent writers never clash, a failed write leaves the old file
  as it was. What is at the path is respected, never replaced: a symbolic link is
  followed and its target written atomically (one another user planted in a shared
  sticky folder such as /tmp is refused, as the kernel's protected_symlinks does);
  a character device or FIFO (``--json /dev/stdout``, ``/dev/null``, a named pipe) is
  written in place; this process's own descriptors (/dev/stdout, /dev/stderr,
  /dev/fd/N) are written through the descriptor; a folder, block device or socket is
  refused. An OSError is one ``WriteError`` line naming the path.
* Staging folders: everything edgekit builds (artifact folders, derived caches, bundles,
  bench work folders) is written inside a ``.tmp-...`` folder that names its writer
  (host, boot, process id and start time), then renamed into place. The next run removes
  staging folders whose writer is provably dead and leaves a live writer's alone.
* Derived caches (ONNX Runtime and OpenVINO CPU forms, OpenVINO IR, TensorRT engines) are
  hashed when written: ``<file>.edgekit.json`` records the file's SHA-256, what it was
  made from and by which version of the code. One made from something else is rebuilt;
  one whose bytes changed since is an error naming the file.

Standard library only: the on-device runner imports it.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import json
import os
import re
import shutil
import socket
import stat as _stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from .core import EXIT_REFUSED, EdgekitError, sha256_file

PathLike = Union[str, "os.PathLike[str]"]

STAGING_PREFIX = ".tmp-"
OWNER_FILE = ".edgekit-writer.json"
ORPHAN_AGE_S = 600  # a staging folder without an owner file (older edgekit, or a writer killed at birth)
RECORD_SUFFIX = ".edgekit.json"


class TamperedError(EdgekitError):
    """A file edgekit wrote and hashed no longer has that hash (an unusable input: exit 2,
    as an artifact that is not intact)."""

    exit_code = EXIT_REFUSED


# --------------------------------------------------------------------------- who is writing


def _boot_id() -> Optional[str]:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_time(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name may hold spaces


def writer_identity() -> dict[str, Any]:
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def writer_is_dead(owner: dict[str, Any]) -> bool:
    """True only when the writer cannot be running: same host, and a new boot since, or no
    such process, or its process id now belongs to another process."""
    if owner.get("host") != socket.gethostname():
        return False  # another machine writing to a shared folder: cannot tell
    boot = _boot_id()
    if owner.get("boot") and boot and owner["boot"] != boot:
        return True
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    start = _start_time(pid)
    return bool(owner.get("start") and start and start != owner["start"])


# --------------------------------------------------------------------------- staging folders


def make_staging_dir(parent: Path, name: str, remove_orphans: bool = True) -> Path:
    """A fresh ``parent/.tmp-<name>-XXXX`` folder owned by this process (dead writers'
    folders in ``parent`` are removed first, see clean_stale)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    clean_stale(parent, remove_orphans)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{name}-", dir=parent))
    try:
        (staging / OWNER_FILE).write_text(json.dumps(writer_identity()))
        staging.chmod(0o755)  # mkdtemp makes it private
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def release_staging_dir(staging: Path) -> None:
    """Drop the owner file before the folder is renamed into place."""
    with contextlib.suppress(FileNotFoundError):
        (Path(staging) / OWNER_FILE).unlink()


def clean_stale(parent: Path, remove_orphans: bool = True) -> list[Path]:
    """Remove the staging folders under ``parent`` whose writer is dead; return them.
    Folders without an owner file count as dead after ORPHAN_AGE_S only where every
    ``.tmp-`` folder is edgekit's (``remove_orphans``; not in a shared temp folder)."""
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(STAGING_PREFIX) or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        try:
            owner = json.loads((path / OWNER_FILE).read_text())
            dead = writer_is_dead(owner) if isinstance(owner, dict) else False
        except FileNotFoundError:
            dead = remove_orphans and time.time() - entry.stat(follow_symlinks=False).st_mtime > ORPHAN_AGE_S
        except (OSError, ValueError):
            dead = False
        if dead:
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path)
    return removed


@contextlib.contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces ``path`` atomically, on
    failure (or interruption) nothing is left behind."""
    path = Path(path)
    try:
        staging = make_staging_dir(path.parent, path.name[:60])
    except OSError as e:  # a read-only or full folder: one line naming the file
        raise WriteError(path, write_error_reason(e), e.errno) from None
    try:
        target = staging / path.name
        yield target
        os.replace(target, path)
    except OSError as e:
        raise WriteError(path, write_error_reason(e), e.errno) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def work_folder(name: str) -> Iterator[Path]:
    """A private folder in the system's temporary folder for one run's work files, removed
    afterwards (also on Ctrl-C or SIGTERM); a run killed outright leaves it to the next."""
    folder = make_staging_dir(Path(tempfile.gettempdir()), f"edgekit-{name}", remove_orphans=False)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def move_aside(folder: Path, why: str) -> Path:
    """Rename ``folder`` to ``<name>.<why>-<time>`` beside it (never delete what a user may
    have put there); returns the new path."""
    folder = Path(folder)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = folder.with_name(f"{folder.name}.{why}-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}.{why}-{stamp}-{n}")
    os.replace(folder, target)
    return target


# --------------------------------------------------------------------------- derived caches


def record_path(file: Path) -> Path:
    return Path(file).with_name(Path(file).name + RECORD_SUFFIX)


def record_derived(file: Path, made_from: dict[str, Any]) -> None:
    """Hash ``file`` (just written) and record it with what it was made from."""
    record = {"sha256": sha256_file(file), "made_from": made_from}
    atomic_write_text(record_path(file), json.dumps(record, indent=2, sort_keys=True) + "\n")


def _record(file: Path) -> Optional[dict[str, Any]]:
    """``file``'s record, or None where it is missing or unreadable."""
    try:
        record = json.loads(record_path(file).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def derived_problem(file: Path) -> Optional[str]:
    """What is wrong with the derived ``file`` (None: it matches the SHA-256 its record holds)."""
    file = Path(file)
    if not file.is_file():
        return "missing"
    record = _record(file)
    if record is None:
        return f"no {record_path(file).name}"
    if sha256_file(file) != record.get("sha256"):
        return "changed since edgekit wrote it"
    return None


def derived_is_current(file: Path, made_from: dict[str, Any]) -> bool:
    """Whether ``file`` can be reused: False when it is missing, unrecorded or made from
    something else (rebuild it); TamperedError when its bytes changed since it was written."""
    file = Path(file)
    if not file.is_file():
        return False
    record = _record(file)  # None: written by an older edgekit, or its record was lost: rebuild
    if record is None or record.get("made_from") != made_from:
        return False
    if sha256_file(file) != record.get("sha256"):
        raise TamperedError(
            f"{file} does not match the SHA-256 edgekit recorded when it wrote it; it was changed since. "
            f"Delete it (and {record_path(file).name}) to have it rebuilt"
        )
    return True


@contextlib.contextmanager
def writing_derived(file: Path, what: str, export_makes_it: bool = True) -> Iterator[None]:
    """Around the write of a derived cache beside an artifact (a CPU form, an IR): a
    folder edgekit cannot write (read-only storage, a full disk) is one WriteError line
    naming the folder and what to do, not an OSError from deep inside."""
    file = Path(file)
    try:
        yield
    except (WriteError, OSError) as e:
        reason = e.reason if isinstance(e, WriteError) else write_error_reason(e)
        folder = file.parent
        raise WriteError(
            file, reason, getattr(e, "errno", None),
            f"cannot write {what} {file.name} beside the artifact in {folder} ({reason}): it is made on first use and is missing "
            "or out of date there; make the folder writable"
            + (f" and run `edgekit export {folder}` once (it makes every CPU form)" if export_makes_it else "")
            + ", or copy the artifact folder somewhere writable and use the copy",
        ) from None


# --------------------------------------------------------------------------- atomic writes


class WriteError(EdgekitError):
    """A file that could not be written: one line naming the path and the reason."""

    def __init__(self, path: PathLike, reason: str, errno: Optional[int] = None, message: Optional[str] = None):
        self.path = Path(path)
        self.reason = reason
        self.errno = errno
        super().__init__(message or f"cannot write {os.fspath(path)}: {reason}")


def write_error_reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


_umask_cache: Optional[int] = None


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (no race with threads)."""
    global _umask_cache
    if _umask_cache is None:
        try:
            with open("/proc/self/status") as f:
                line = next(l for l in f if l.startswith("Umask:"))
            _umask_cache = int(line.split()[1], 8)
        except (OSError, StopIteration, ValueError, IndexError):
            current = os.umask(0o022)
            os.umask(current)
            _umask_cache = current
    return _umask_cache


def _target_mode(path: Path) -> int:
    """The mode a plain write would give: the old file's, else 0666 less the umask (mkstemp makes 0600)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable where the platform allows; a failure here loses nothing."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


FIFO_WAIT_S = 10.0  # how long a write to a FIFO waits for a process to open it for reading
MAX_LINK_HOPS = 40
_OWN_FD = re.compile(r"/dev/(?P<std>stdout|stderr)|/dev/fd/(?P<fd>\d+)|/proc/(?P<pid>self|\d+)/fd/(?P<pfd>\d+)")


def _own_descriptor(path: Path) -> Optional[int]:
    """The descriptor ``path`` names when it is one of this process's own (/dev/stdout,
    /dev/stderr, /dev/fd/N, /proc/self/fd/N): written through the descriptor itself, so
    ``--json /dev/stdout`` continues the stream (a pipe, a terminal, a file the shell
    opened) instead of opening or replacing what the link points to."""
    if os.name != "posix":
        return None
    m = _OWN_FD.fullmatch(os.path.normpath(os.fspath(path)))
    if m is None:
        return None
    if m["std"]:
        return 1 if m["std"] == "stdout" else 2
    if m["fd"]:
        return int(m["fd"])
    if m["pid"] != "self" and int(m["pid"]) != os.getpid():
        return None  # another process's descriptor: an ordinary (magic) link
    return int(m["pfd"])


def _write_descriptor(fd: int, data: bytes) -> None:
    for stream in (sys.stdout, sys.stderr):  # what Python buffered for this descriptor goes first
        with contextlib.suppress(Exception):
            if stream is not None and stream.fileno() == fd:
                stream.flush()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _check_link(link: Path, st: os.stat_result) -> None:
    """Refuse to follow a link another user made in a shared sticky folder (/tmp): the
    classic way to make a privileged writer overwrite a file of the attacker's choosing.
    The kernel's protected_symlinks rule: followed when the link is the writer's own or
    the folder owner's."""
    try:
        folder = os.stat(link.parent)
    except OSError:
        return
    shared = folder.st_mode & _stat.S_ISVTX and folder.st_mode & _stat.S_IWOTH
    if shared and st.st_uid not in (os.geteuid(), folder.st_uid):
        raise WriteError(link, f"it is a symbolic link another user (uid {st.st_uid}) made in the shared folder {link.parent}; "
                               "edgekit does not follow it: write to its target directly if you mean to")


def _follow_links(path: Path) -> Path:
    """Where a write to ``path`` lands: symbolic links at the last component followed hop by
    hop, as open() would (the folders above resolve by themselves)."""
    current = path
    for _ in range(MAX_LINK_HOPS):
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return current
        if not _stat.S_ISLNK(st.st_mode):
            return current
        _check_link(current, st)
        current = Path(os.path.join(os.path.dirname(current), os.readlink(current)))  # an absolute target replaces the folder
    raise WriteError(path, "too many levels of symbolic links", _errno.ELOOP)


def _write_in_place(path: Path, data: bytes, fifo: bool) -> bool:
    """Write a character device or FIFO as it is (no temporary file, no rename). A FIFO is
    opened without blocking and waits FIFO_WAIT_S for a reader, never forever. Returns
    False when the path turned into a regular file meanwhile (write it atomically)."""
    flags = os.O_WRONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0) | (os.O_NONBLOCK if fifo else 0)
    deadline = time.monotonic() + FIFO_WAIT_S
    while True:
        try:
            fd = os.open(path, flags)
            break
        except OSError as e:
            if not (fifo and e.errno == _errno.ENXIO):
                raise
            if time.monotonic() >= deadline:
                raise WriteError(path, f"it is a FIFO and no process opened it for reading within {FIFO_WAIT_S:g} s", e.errno) from None
            time.sleep(0.05)
    try:
        if _stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        if fifo:
            os.set_blocking(fd, True)
        _write_descriptor(fd, data)
    finally:
        os.close(fd)
    return True


def _kind(mode: int) -> Optional[str]:
    """What a file that edgekit will not write is ('a folder'...); None for those it writes."""
    if _stat.S_ISDIR(mode):
        return "a folder"
    if _stat.S_ISBLK(mode):
        return "a block device"
    if _stat.S_ISSOCK(mode):
        return "a socket"
    if _stat.S_ISREG(mode) or _stat.S_ISCHR(mode) or _stat.S_ISFIFO(mode):
        return None
    return "not a regular file"


def _replace_atomically(path: Path, data: bytes, old: Optional[os.stat_result]) -> None:
    tmp: Optional[str] = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:80]}.", suffix=".tmp", dir=path.parent)
        try:
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            f.write(data)
            f.flush()
            mode = _target_mode(path)
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            if old is not None and hasattr(os, "fchown") and os.geteuid() == 0:  # root rewriting a user's file: still theirs
                with contextlib.suppress(OSError):
                    os.fchown(f.fileno(), old.st_uid, old.st_gid)
            os.fsync(f.fileno())
        if not hasattr(os, "fchmod"):
            os.chmod(tmp, mode)
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    _fsync_dir(path.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path``; return ``Path(path)``. The one function through which
    edgekit writes a file at a path a user gave.

    A regular file (or nothing yet) is written all or nothing: missing parent folders are
    created, a unique temporary file beside the target (``tempfile.mkstemp``) is written,
    fsynced, given the mode (and, for root, the owner) the old file had, then
    ``os.replace``d over the target. What is at the path is never replaced by something
    else: a symbolic link is followed and its target written so (a link another user
    made in a shared sticky folder is refused); a character device or FIFO is written
    in place (``/dev/null``; ``/dev/full`` fails with "No space left on device"; a FIFO
    waits FIFO_WAIT_S for a reader); this process's own descriptors (``/dev/stdout``,
    ``/dev/stderr``, ``/dev/fd/N``) are written through the descriptor; a folder, block
    device or socket is refused. On any OSError (read-only folder, full disk, no
    permission) the temporary file is removed, the old file stays as it was, and
    :class:`WriteError` (an EdgekitError, exit 1) says ``cannot write PATH: REASON``. An
    interrupt (Ctrl-C) also removes the temporary file.
    """
    given = Path(path)
    try:
        fd = _own_descriptor(given)
        if fd is not None:
            _write_descriptor(fd, data)
            return given
        target = _follow_links(given)
        try:
            old: Optional[os.stat_result] = os.stat(target)
        except FileNotFoundError:
            old = None
        if old is not None:
            kind = _kind(old.st_mode)
            if kind == "a folder":  # the system's own words, as a rename onto it would say
                raise WriteError(given, os.strerror(_errno.EISDIR), _errno.EISDIR)
            if kind is not None:
                raise WriteError(given, f"it is {kind}; edgekit writes regular files, character devices (/dev/stdout) and FIFOs only")
            if not _stat.S_ISREG(old.st_mode) and _write_in_place(target, data, _stat.S_ISFIFO(old.st_mode)):
                return given
        _replace_atomically(target, data, old)
    except OSError as e:
        raise WriteError(given, write_error_reason(e), e.errno) from None
    return given


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` for text; newlines are written as given (no translation)."""
    return atomic_write_bytes(path, text.encode(encoding))


def ensure_dir(path: PathLike) -> Path:
    """``mkdir -p`` with the one-line WriteError instead of a traceback."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(path, write_error_reason(e), e.errno) from None
    return path
