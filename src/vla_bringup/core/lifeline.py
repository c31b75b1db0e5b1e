"""A same-host death notice between two processes, delivered by the kernel within a millisecond.

DDS liveliness finds a dead process only when its lease runs out (0.5 s here; with the 0.1 s
lease of the time, up to 137 ms was measured on the 2-core machine), and a short lease raises
false alarms when a busy machine delays the assertions. The kernel knows at once when a process
dies:

- The watched process holds a robust, process-shared mutex in a memfd, passed to each watcher
  over an abstract Unix socket, and the watcher blocks on it. When the holder dies, however it
  dies, the kernel marks the mutex "owner died" and wakes the watcher while it tears the thread
  down: measured 0.2-0.3 ms after SIGKILL for processes of 10 MB to 1.5 GB.
- The end of the socket connection is the fallback where robust mutexes are not available (no
  glibc). It comes only after the kernel has freed the process's memory: 3 ms at 10 MB, 40 ms at
  300 MB, 113 ms at 1.5 GB on the same machine, which is why the mutex is the primary signal.

This is a fast path only. It says nothing about a process that is alive but stalled, and nothing
when the two run in different network namespaces (containers) or on different hosts: then the
watcher never connects and the DDS lease remains the only signal. Abstract socket names live in
the network namespace, so a name carries the ROS domain and the node name.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import socket
import threading
import time
from typing import Callable, Optional

HELLO = b"\x01"  # the watched side's one message: "I accepted you" (with the mutex's memfd)
_MUTEX_BYTES = 64  # a glibc pthread_mutex_t is 40 bytes on 64-bit Linux
_EOWNERDEAD, _ETIMEDOUT = 130, 110  # Linux errno values, returned (not set) by pthread calls


def lifeline_name(node_name: str, domain_id: Optional[str] = None) -> str:
    """The abstract socket name for a node in a ROS domain, e.g. 'vla_lifeline/0/policy'."""
    domain = os.environ.get("ROS_DOMAIN_ID", "0") if domain_id is None else domain_id
    return f"vla_lifeline/{domain or '0'}/{node_name.strip('/')}"


def _address(name: str) -> str:
    return "\0" + name  # a leading NUL byte: Linux's abstract namespace, no file to clean up


def _load_pthread():
    """glibc's pthread functions with robust mutexes, or None where they are missing."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        for name in ("pthread_mutexattr_setrobust", "pthread_mutexattr_setpshared",
                     "pthread_mutex_consistent", "pthread_mutex_timedlock"):
            getattr(libc, name)
        return libc if hasattr(os, "memfd_create") else None
    except (OSError, AttributeError):
        return None


_PTHREAD = _load_pthread()


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _SharedMutex:
    """A robust, process-shared pthread mutex in a memfd that can be sent to another process."""

    def __init__(self, fd: int) -> None:
        # The library as it was when this mutex was made: a mutex in use keeps working even if
        # the module's handle is swapped meanwhile (a test that simulates a libc without it).
        self.pthread = _PTHREAD
        self.fd = fd
        self.memory = mmap.mmap(fd, _MUTEX_BYTES)
        self.address = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(self.memory)))

    @classmethod
    def create(cls) -> "_SharedMutex":
        fd = os.memfd_create("vla_lifeline")
        os.ftruncate(fd, _MUTEX_BYTES)
        mutex = cls(fd)
        attr = ctypes.create_string_buffer(16)
        for call, args in (("pthread_mutexattr_init", ()), ("pthread_mutexattr_setpshared", (1,)),
                           ("pthread_mutexattr_setrobust", (1,))):
            if getattr(mutex.pthread, call)(attr, *args) != 0:
                raise OSError(f"{call} failed")
        if mutex.pthread.pthread_mutex_init(mutex.address, attr) != 0:
            raise OSError("pthread_mutex_init failed")
        return mutex

    def lock(self, timeout_s: float) -> int:
        """0 (the holder unlocked), EOWNERDEAD (the holder died) or ETIMEDOUT."""
        deadline = time.time() + timeout_s  # timedlock takes CLOCK_REALTIME
        when = _Timespec(int(deadline), int((deadline % 1.0) * 1e9))
        return self.pthread.pthread_mutex_timedlock(self.address, ctypes.byref(when))

    def release_after_lock(self, result: int) -> None:
        # Unlock before unmapping: a locked robust mutex stays on this thread's robust list.
        if result == _EOWNERDEAD:
            self.pthread.pthread_mutex_consistent(self.address)
        self.pthread.pthread_mutex_unlock(self.address)

    def close(self) -> None:
        self.address = None
        try:
            self.memory.close()
        except BufferError:
            pass  # a ctypes view still points into it; the process exit frees it
        os.close(self.fd)


class LifelineServer:
    """Held by the watched process: accepts watchers and hands each the mutex it holds.

    `start()` returns False (and the process runs on without a lifeline) when the name is taken,
    for instance by a second graph on the same host and domain, or off Linux.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.socket: Optional[socket.socket] = None
        self.watchers: list[socket.socket] = []
        self.lock = threading.Lock()  # close() against a connection accepted at the same moment
        self.mutex: Optional[_SharedMutex] = None
        self.closing = threading.Event()
        self.error = ""

    def start(self) -> bool:
        try:
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(_address(self.name))
            server.listen(8)
        except OSError as error:
            self.error = f"{self.name}: {error}"
            return False
        if _PTHREAD is not None:
            held = threading.Event()
            # Held by a thread of its own that lives as long as the process: a robust mutex is
            # "owner died" when its owning thread ends, not only when the process does.
            threading.Thread(target=self._hold, args=(held,), name="lifeline-hold",
                             daemon=True).start()
            held.wait()
        self.socket = server
        threading.Thread(target=self._accept, name="lifeline-accept", daemon=True).start()
        return True

    def _hold(self, held: threading.Event) -> None:
        try:
            mutex = _SharedMutex.create()
            if mutex.pthread.pthread_mutex_lock(mutex.address) == 0:
                self.mutex = mutex
        except OSError as error:
            self.error = f"no robust mutex, socket only: {error}"
        held.set()
        if self.mutex is not None:
            self.closing.wait()
            self.mutex.pthread.pthread_mutex_unlock(self.mutex.address)  # a clean shutdown

    def _accept(self) -> None:
        while self.socket is not None:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return  # closed
            with self.lock:
                if self.socket is None:
                    connection.close()
                    return
                self.watchers.append(connection)  # held open until this process exits
            try:
                socket.send_fds(connection, [HELLO], [self.mutex.fd] if self.mutex else [])
            except OSError:
                pass  # the watcher left again

    def close(self) -> None:
        with self.lock:
            server, self.socket = self.socket, None
            watchers, self.watchers = self.watchers, []
        self.closing.set()
        if server is not None:
            try:
                server.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone may not
            except OSError:
                pass
        for connection in [server, *watchers]:
            if connection is not None:
                connection.close()


class LifelineWatcher:
    """Held by the watching process: calls `on_lost()` once each time a watched process goes.

    It connects (and reconnects, every `retry_s`, so a respawned process is watched again), then
    blocks on the holder's mutex, or on the connection where there is no mutex. Only a greeted
    connection counts: a dying process's listening socket can still take a connection into its
    backlog, and that one ends unanswered. A clean `LifelineServer.close()` counts as gone too:
    the node is shutting down.
    """

    def __init__(self, name: str, on_lost: Callable[[], None],
                 on_connected: Callable[[], None] = lambda: None, retry_s: float = 0.5) -> None:
        self.name, self.on_lost, self.on_connected = name, on_lost, on_connected
        self.retry_s = retry_s
        self.connected = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="lifeline-watch", daemon=True)

    def start(self) -> "LifelineWatcher":
        self.thread.start()
        return self

    def _watch(self) -> None:
        while not self.stopping.is_set():
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            greeted = False
            try:
                connection.connect(_address(self.name))
                message, fds, _, _ = socket.recv_fds(connection, len(HELLO), 1)
                greeted = message == HELLO
                if greeted:
                    self.connected.set()
                    self.on_connected()
                    if fds and _PTHREAD is not None:
                        self._wait_on_mutex(_SharedMutex(fds[0]))
                    else:
                        for fd in fds:
                            os.close(fd)
                        while connection.recv(64):  # nothing more is ever sent; b"" is the end
                            pass
            except OSError:
                pass
            finally:
                connection.close()
                self.connected.clear()
            if greeted and not self.stopping.is_set():
                self.on_lost()
            self.stopping.wait(self.retry_s)

    def _wait_on_mutex(self, mutex: _SharedMutex) -> None:
        try:
            while not self.stopping.is_set():
                result = mutex.lock(timeout_s=0.5)  # timed, so that stop() is heard
                if result != _ETIMEDOUT:
                    mutex.release_after_lock(result)
                    return
        finally:
            mutex.close()

    def stop(self) -> None:
        self.stopping.set()
