# -*- test-case-name: tests.test_files -*-
"""
Request paths below the root: checked (L{resolve}) and opened race-free
(L{open_inside}), so that no spelling and no change on disk leads outside.
Everything that opens or stats a request's path answers failures through
L{open_failed}.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

import attrs
from twisted.logger import Logger

from streamsvc.errors import HTTPError

log = Logger()

#: The errors opening or stat-ing a name can give that say something about
#: the name itself: it is not there (or not as a path can reach it: ENOTDIR,
#: ELOOP for a symlink met with O_NOFOLLOW, ENAMETOOLONG), it may not be read
#: (EACCES, EPERM), or it is a FIFO or socket that O_NONBLOCK cannot open
#: (ENXIO). The client is told 404, as for any name that is not servable.
NOT_SERVABLE_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.ENOTDIR,
        errno.ELOOP,
        errno.EACCES,
        errno.EPERM,
        errno.ENAMETOOLONG,
        errno.ENXIO,
    }
)

#: Seconds a client is asked to wait after a 503: running out of descriptors
#: or memory is usually over as soon as other responses finish.
RETRY_AFTER = 1


@attrs.frozen
class Target:
    """A request path, checked and resolved inside the root."""

    real: str
    segments: tuple[str, ...]
    slash: bool  # the URL ended with "/"
    is_dir: bool
    followed_link: bool = False  # a symlink on the way was resolved (to inside the root)


def is_safe_segment(segment: str) -> bool:
    return bool(segment) and not segment.startswith(".") and not any(
        c in segment for c in "/\\\x00"
    )


def inside(real: str, root: str) -> bool:
    """Whether C{real} (already resolved) is C{root} or below it, with no hidden component."""
    if real == root:
        return True
    if not real.startswith(root.rstrip(os.sep) + os.sep):
        return False
    return all(is_safe_segment(part) for part in os.path.relpath(real, root).split(os.sep))


def resolve(root: str, postpath: list[bytes]) -> Target:
    """
    Map the decoded URL segments below C{/files} to a real path inside C{root}.

    twisted.web has already percent-decoded each segment exactly once, so
    C{%2e%2e} arrives as C{..} and C{%2f} as a C{/} inside a segment; both are
    refused here, as are backslashes, NUL, empty segments and dotfiles.
    A double-encoded C{%252e%252e} stays the literal name C{%2e%2e}.

    The path is then walked one C{lstat} per segment: a symlink is resolved
    where it stands and must land inside the root (and not on a dotfile).
    That costs one system call per segment in the common case, where
    C{os.path.realpath} would re-walk the root's own components every time.

    @raise HTTPError: 404 for everything that is not a servable name (no hint as to why), 503 when the system
        fails to look (see L{open_failed}).
    """
    slash = bool(postpath) and postpath[-1] == b""
    raw = postpath[:-1] if slash else postpath
    # A name that is not UTF-8 on disk is read as the bytes it is (the
    # listing's href spells them): surrogate escapes give the OS the same
    # bytes back.
    segments = tuple(s.decode("utf-8", "surrogateescape") for s in raw)
    if not all(is_safe_segment(s) for s in segments):
        raise HTTPError(404, "not found")
    path = root
    mode = stat.S_IFDIR
    followed_link = False
    try:
        for segment in segments:
            if not stat.S_ISDIR(mode):
                raise HTTPError(404, "not found")
            path = os.path.join(path, segment)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                followed_link = True
                path = os.path.realpath(path)
                if not inside(path, root):
                    raise HTTPError(404, "not found")
                mode = os.stat(path).st_mode
    except OSError as error:
        raise open_failed(error, path) from None
    return Target(path, segments, slash, stat.S_ISDIR(mode), followed_link)


def open_failed(error: OSError, what: str) -> HTTPError:
    """
    The answer to C{error}, raised opening or stat-ing C{what} (a path, for
    the log only).

    Only an error about the name (L{NOT_SERVABLE_ERRNOS}) is a 404. Anything
    else (out of descriptors or memory, an I/O error...) says nothing about
    whether the file exists, and a 404 would tell clients and caches that it
    is gone: that is a 503 the client may retry soon and nobody may store,
    logged here once, with the errno and path that the body leaves out (the
    path is the server's business, the errno name of no use to a client).
    Every site that opens or stats a request's path goes through here, so
    they cannot drift apart.
    """
    if error.errno in NOT_SERVABLE_ERRNOS:
        return HTTPError(404, "not found")
    log.error(
        "could not open {what}: {errno_name} ({strerror})",
        what=what,
        errno_name=errno.errorcode.get(error.errno, str(error.errno)),
        strerror=error.strerror,
    )
    return HTTPError(
        503,
        "temporarily unable to serve this path",
        {b"retry-after": b"%d" % (RETRY_AFTER,), b"cache-control": b"no-store"},
    )


FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW
LIST_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY | os.O_NOFOLLOW
#: Folders on the way are only walked through: O_PATH needs search (x)
#: permission, not read, exactly like opening by the full path would.
WALK_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_CLOEXEC | os.O_DIRECTORY
HAS_DIR_FD = os.open in os.supports_dir_fd


def open_inside(target: Target, root: str, flags: int) -> int:
    """
    Open what C{target} names below C{root}, so that nothing outside the root
    can be opened whatever changes on disk meanwhile; C{OSError} otherwise.

    L{resolve} checked the path, but a folder on it could be swapped for a
    symlink before it is opened. So the usual path (no symlink in it) is
    opened one component at a time from the root, each with C{O_NOFOLLOW}: a
    component that has become a symlink fails to open instead of leading
    outside. A path through a symlink (inside the root, as L{resolve}
    checked) is opened by its resolved name and then checked once more by
    what the kernel says was opened (Linux's C{/proc/self/fd}); that costs
    more, and such paths are rare.
    """
    if target.followed_link or not HAS_DIR_FD:
        fd = os.open(target.real, flags)
        if not opened_inside(fd, root):
            os.close(fd)
            # ENOENT: to the client it is a name that is not servable (404).
            raise FileNotFoundError(errno.ENOENT, "opened outside the root", target.real)
        return fd
    if not target.segments:
        return os.open(root, flags & ~os.O_NOFOLLOW)  # the root itself may be a symlink
    dir_fd = os.open(root, WALK_FLAGS)
    try:
        for segment in target.segments[:-1]:
            next_fd = os.open(segment, WALK_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        return os.open(target.segments[-1], flags, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def open_regular(target: Target, root: str) -> tuple[BinaryIO, os.stat_result]:
    """
    Open the regular file C{target} names (see L{open_inside}); anything
    else is a 404, and a failure to open it is answered by L{open_failed}.
    C{O_NONBLOCK} keeps a FIFO from blocking the reactor.
    """
    try:
        fd = open_inside(target, root, FILE_FLAGS)
    except OSError as error:
        raise open_failed(error, target.real) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise HTTPError(404, "not found")
        return os.fdopen(fd, "rb", buffering=0), st
    except OSError as error:
        os.close(fd)
        raise open_failed(error, target.real) from None
    except BaseException:
        os.close(fd)
        raise


def opened_inside(fd: int, root: str) -> bool:
    """Whether the open file C{fd} is below C{root}, when the OS can tell us."""
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return True  # no /proc (not Linux): resolve()'s check is all there is
    return inside(real, root)




# --- the write side ------------------------------------------------------------

#: A folder that will hold a new file: opened for real (not O_PATH), because
#: the folder itself is fsync'ed once the new name is in it.
FOLDER_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY


def write_segments(postpath: list[bytes]) -> tuple[str, ...]:
    """
    The path segments of a file to write (PUT) or delete, checked.

    Stricter than L{resolve}, and louder: a write names a file, so a
    trailing slash, the root itself, an empty segment, a dot-name (every
    hidden and temporary name, C{.} and C{..} included), a backslash or NUL
    is a 400 that says so, and nothing is touched.
    """
    if not postpath or postpath == [b""]:
        raise HTTPError(409, "the root folder is not a file")
    if postpath[-1] == b"":
        raise HTTPError(409, "a path ending in / names a folder, not a file")
    try:
        segments = tuple(s.decode("utf-8") for s in postpath)
    except UnicodeDecodeError:
        raise HTTPError(400, "path is not valid UTF-8") from None
    for segment in segments:
        if not segment:
            raise HTTPError(400, "empty path segment")
        if segment.startswith("."):
            raise HTTPError(400, "names starting with a dot are not allowed")
        if not is_safe_segment(segment):
            raise HTTPError(400, "path segments may not contain /, \\ or NUL")
        if not is_plain_name(segment):
            raise HTTPError(400, "names may not contain control, line-break or text-direction characters")
    return segments


#: Line and paragraph separators, and the text-direction overrides and
#: isolates that make a listing show C{evil\u202etxt.exe} as C{evilexe.txt}.
_DECEPTIVE = frozenset("\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def is_plain_name(segment: str) -> bool:
    """
    Whether a name to be created is free of control characters (C0, DEL,
    C1: a newline in a name breaks every line-based tool and log that
    shows it) and of the characters that change how text around them is
    shown. Applied to the names a client writes; files put in place by
    other means are still served.
    """
    return not any(
        ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in _DECEPTIVE for c in segment
    )


def open_folder(root: str, folders: tuple[str, ...], *, create: bool) -> tuple[int, list[int]]:
    """
    Open, race-free, the folder below C{root} that C{folders} names, creating
    the missing ones when C{create}; return its descriptor (the caller's to
    close) and the depths (indices into C{folders}) of the folders created.

    The walk is L{open_inside}'s: one component at a time with
    C{O_NOFOLLOW}, so a folder swapped for a symlink meanwhile cannot lead
    outside. A symlink met on the way is followed only to a folder inside
    the root (checked on its resolved path and again on what was opened);
    any other leads nowhere (C{FileNotFoundError}, a 404 to the client). A
    file in the way is an L{HTTPError} 409.

    @raise OSError: as the system says (see L{streamsvc.files.upload}'s
        C{write_failed} for what the client is told).
    """
    fd = os.open(root, FOLDER_FLAGS)
    created: list[int] = []
    try:
        for depth, name in enumerate(folders):
            next_fd = _open_subfolder(fd, name, root, create)
            if next_fd < 0:
                created.append(depth)
                next_fd = ~next_fd
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd, created


def _open_subfolder(fd: int, name: str, root: str, create: bool) -> int:
    """The folder C{name} in C{fd}, opened; C{~fd} (negative) when created here."""
    try:
        return os.open(name, FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
    except FileNotFoundError:
        if not create:
            raise
        try:
            os.mkdir(name, 0o755, dir_fd=fd)
        except FileExistsError:
            # made meanwhile (another upload): use it
            return os.open(name, FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
        return ~os.open(name, FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
    except OSError as error:
        if error.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    # Not a folder: a symlink (followed only to inside the root) or a file.
    if not stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
        raise HTTPError(409, "a file is in the way of this path")
    try:
        here = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        # Without /proc the link cannot be checked: it leads nowhere.
        raise FileNotFoundError(errno.ENOENT, "symlink not followed", name) from None
    real = os.path.realpath(os.path.join(here, name))
    if not inside(real, root):
        raise FileNotFoundError(errno.ENOENT, "symlink leads outside the root", name)
    next_fd = os.open(real, FOLDER_FLAGS)
    if not opened_inside(next_fd, root):
        os.close(next_fd)
        raise FileNotFoundError(errno.ENOENT, "opened outside the root", name)
    return next_fd


def remove_empty_folders(root: str, folders: tuple[str, ...], created: list[int]) -> None:
    """
    Remove the folders an upload created (the depths L{open_folder} gave),
    deepest first, those still empty; opened the same race-free way, so
    nothing outside the root is touched. Errors are ignored: a folder
    another upload put a file in meanwhile simply stays.
    """
    for depth in sorted(created, reverse=True):
        try:
            fd, _ = open_folder(root, folders[:depth], create=False)
        except (OSError, HTTPError):
            continue
        try:
            os.rmdir(folders[depth], dir_fd=fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def fsync_folders(root: str, folders: tuple[str, ...], depths: list[int]) -> None:
    """
    C{fsync} the folders holding the folders an upload created (so their
    names survive a power loss as well as the file's does), opened as
    L{open_folder} opens them. Blocking: run it in a thread.
    """
    for depth in sorted(set(depths)):
        fd, _ = open_folder(root, folders[:depth], create=False)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
