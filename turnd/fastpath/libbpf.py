"""The few libbpf calls turnd makes, through ctypes: open and load the relay object, attach its
program at TCX ingress, and read and write its maps.

libbpf (Debian's libbpf1, which iproute2 already needs) does the loading: ELF parsing, BTF, map
creation and relocations. A ctypes binding of a dozen calls is smaller than any Python BPF
package, and none of those on PyPI loads a CO-RE object with BTF-defined maps and spin locks.

The program is attached as a TCX link (``BPF_LINK_CREATE``, attach type ``BPF_TCX_INGRESS``, the
clsact ingress hook's link-based form since Linux 6.6): the kernel detaches it when the last file
descriptor closes, so a turnd killed by SIGKILL leaves no program and no map behind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from typing import Any

#: enum bpf_attach_type: BPF_TCX_INGRESS (include/uapi/linux/bpf.h, Linux 6.6).
BPF_TCX_INGRESS = 46
#: BPF_MAP_UPDATE_ELEM flags.
BPF_ANY = 0
BPF_NOEXIST = 1
#: The object's one program (relay.bpf.c).
PROGRAM = "turnd_relay"
#: Bytes kept of the verifier's log when a load fails (its last lines say why).
VERIFIER_LOG_BYTES = 1 << 20


class BpfError(Exception):
    """A libbpf call failed; the message says which and why."""

    def __init__(self, what: str, code: int, detail: str = "") -> None:
        self.errno = abs(code)
        reason = os.strerror(self.errno) if self.errno else "failed"
        super().__init__(f"{what}: {reason}" + (f" ({detail})" if detail else ""))


_lib: Any = None


def library() -> Any:
    """libbpf.so.1, loaded once; BpfError when it is not installed."""
    global _lib
    if _lib is not None:
        return _lib
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise BpfError("libbpf", errno.ENOENT, f"{name}: {exc}; install Debian's libbpf1") from None
    vp, cp, i, u32, u64 = (
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint32,
        ctypes.c_uint64,
    )
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "bpf_object__open_file": (vp, [cp, vp]),
        "bpf_object__load": (i, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_map_by_name": (vp, [vp, cp]),
        "bpf_object__find_program_by_name": (vp, [vp, cp]),
        "bpf_map__set_max_entries": (i, [vp, u32]),
        "bpf_map__fd": (i, [vp]),
        "bpf_map__key_size": (u32, [vp]),
        "bpf_map__value_size": (u32, [vp]),
        "bpf_program__fd": (i, [vp]),
        "bpf_program__set_log_buf": (i, [vp, cp, ctypes.c_size_t]),
        "bpf_program__set_log_level": (i, [vp, u32]),
        "bpf_link_create": (i, [i, i, i, vp]),
        "bpf_map_update_elem": (i, [i, vp, vp, u64]),
        "bpf_map_lookup_elem": (i, [i, vp, vp]),
        "bpf_map_delete_elem": (i, [i, vp]),
        "bpf_map_lookup_and_delete_elem": (i, [i, vp, vp]),
        "libbpf_num_possible_cpus": (i, []),
        "libbpf_set_print": (vp, [vp]),
    }
    for fname, (restype, argtypes) in signatures.items():
        func = getattr(lib, fname)
        func.restype = restype
        func.argtypes = argtypes
    lib.libbpf_set_print(None)  # libbpf's own stderr lines: what fails is raised instead
    _lib = lib
    return lib


def _check(what: str, result: int) -> int:
    """libbpf 1.x returns a negative errno on failure."""
    if result < 0:
        raise BpfError(what, result)
    return result


class BpfObject:
    """A loaded BPF object: its maps and programs by name; close() frees them."""

    def __init__(self, path: str, max_entries: dict[str, int]) -> None:
        lib = library()
        handle = lib.bpf_object__open_file(path.encode(), None)
        if not handle:
            raise BpfError(f"open {path}", -ctypes.get_errno())
        self._handle: int | None = handle
        try:
            for name, size in max_entries.items():
                _check(
                    f"set max_entries of {name}",
                    lib.bpf_map__set_max_entries(self._map(name), size),
                )
            log = ctypes.create_string_buffer(VERIFIER_LOG_BYTES)
            program = lib.bpf_object__find_program_by_name(handle, PROGRAM.encode())
            if not program:
                raise BpfError(f"program {PROGRAM} in {path}", errno.ENOENT)
            lib.bpf_program__set_log_buf(program, log, VERIFIER_LOG_BYTES)
            lib.bpf_program__set_log_level(program, 1)
            result = lib.bpf_object__load(handle)
            if result < 0:
                lines = log.value.decode(errors="replace").strip().splitlines()
                raise BpfError(f"load {path}", result, " / ".join(lines[-2:]))
        except BaseException:
            self.close()
            raise

    def _map(self, name: str) -> int:
        found = library().bpf_object__find_map_by_name(self._handle, name.encode())
        if not found:
            raise BpfError(f"map {name}", errno.ENOENT)
        return int(found)

    def map(self, name: str, key_size: int, value_size: int) -> BpfMap:
        """Map ``name``, whose key and value must have these sizes (the layouts of
        turnd.fastpath.maps): BpfError when the object's C structs say otherwise."""
        lib, found = library(), self._map(name)
        sizes = (lib.bpf_map__key_size(found), lib.bpf_map__value_size(found))
        if sizes != (key_size, value_size):
            raise BpfError(
                f"map {name}", errno.EINVAL, f"key and value of {sizes}, expected "
                f"{(key_size, value_size)}: the object and turnd disagree, rebuild it"
            )  # fmt: skip
        return BpfMap(_check(f"map {name}", lib.bpf_map__fd(found)), value_size, name)

    def program_fd(self, name: str) -> int:
        """The file descriptor of program ``name``."""
        program = library().bpf_object__find_program_by_name(self._handle, name.encode())
        if not program:
            raise BpfError(f"program {name}", errno.ENOENT)
        return _check(f"program {name}", library().bpf_program__fd(program))

    def close(self) -> None:
        """Free the maps and programs (a program still attached stays until its link closes)."""
        if self._handle is not None:
            library().bpf_object__close(self._handle)
            self._handle = None


def attach_tcx_ingress(program_fd: int, ifindex: int) -> int:
    """Attach ``program_fd`` at interface ``ifindex``'s ingress; the link's file descriptor
    (closing it detaches the program)."""
    return _check(
        f"attach to interface {ifindex} (TCX ingress)",
        library().bpf_link_create(program_fd, ifindex, BPF_TCX_INGRESS, None),
    )


class BpfMap:
    """One map of fixed key and value sizes."""

    def __init__(self, fd: int, value_size: int, name: str) -> None:
        self.fd = fd
        self.value_size = value_size
        self.name = name

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        """Write ``value`` under ``key``."""
        _check(f"update {self.name}", library().bpf_map_update_elem(self.fd, key, value, flags))

    def lookup(self, key: bytes) -> bytes | None:
        """The value under ``key``, or None."""
        return self._read(library().bpf_map_lookup_elem, "lookup", key)

    def pop(self, key: bytes) -> bytes | None:
        """Remove ``key``, atomically returning its last value (or None: it was not there)."""
        return self._read(library().bpf_map_lookup_and_delete_elem, "remove from", key)

    def _read(self, call: Any, what: str, key: bytes) -> bytes | None:
        out = ctypes.create_string_buffer(self.value_size)
        result = call(self.fd, key, out)
        if result == -errno.ENOENT:
            return None
        _check(f"{what} {self.name}", result)
        return out.raw

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; False when it was not there."""
        result = library().bpf_map_delete_elem(self.fd, key)
        if result == -errno.ENOENT:
            return False
        _check(f"delete from {self.name}", result)
        return True


def possible_cpus() -> int:
    """How many values a per-CPU map holds per key."""
    return _check("possible CPUs", library().libbpf_num_possible_cpus())
