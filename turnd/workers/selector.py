"""Which worker a client flow reaches: a classic BPF program on each UDP listener's SO_REUSEPORT
group.

The kernel runs the program for every datagram that arrives at the group, and its result is the
index of the socket that gets it. The index is a hash of the client's address and port, modulo
the number of workers. It is the same for every datagram of a flow for as long as the group holds
the same sockets in the same order, and the supervisor makes sure it does: it binds every socket
of the group itself, in slot order, and keeps them all open whatever happens to the workers
(the kernel compacts the group when a socket closes, which would move flows). A worker that is
restarted gets the same socket again, with whatever queued while it was down; an upgrade hands
the same sockets to the new workers. So a flow stays on the worker that holds its allocation.

The program reads the IP header through the network-header offset (``SKF_NET_OFF``): for IPv4
the source address and, past the IHL, the UDP source port; for IPv6 the four words of the source
address and the port after the fixed header (a datagram with extension headers hashes what sits
there instead, the same for every datagram of its flow). :func:`expected_slot` computes the same
hash in Python (tests, and ``turnctl`` to say which worker a client lands on).
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct

#: setsockopt option of a classic BPF reuseport selector (asm-generic/socket.h).
SO_ATTACH_REUSEPORT_CBPF = 51
#: Negative offsets from here address the network header (linux/filter.h).
SKF_NET_OFF = -0x100000

# Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
_LD, _LDX, _ST, _ALU, _RET, _MISC = 0x00, 0x01, 0x02, 0x04, 0x06, 0x07
_W, _H, _B = 0x00, 0x08, 0x10
_ABS, _IND, _MEM, _MSH = 0x20, 0x40, 0x60, 0xA0
_MUL, _RSH, _MOD, _XOR = 0x20, 0x70, 0x90, 0xA0
_K, _X, _A = 0x00, 0x08, 0x10
_TAX = 0x00

_GOLDEN = 0x9E3779B1
_MIX = 0x85EBCA6B
_MASK = 0xFFFFFFFF


def _net(offset: int) -> int:
    return (SKF_NET_OFF + offset) & _MASK


def _finish(count: int) -> list[tuple[int, int]]:
    """A holds the source address (folded) in M[0] and the port: mix, modulo, return."""
    return [
        (_ALU | _MUL | _K, _GOLDEN),  # A = port * golden
        (_MISC | _TAX, 0),  # X = A
        (_LD | _MEM, 0),  # A = address
        (_ALU | _XOR | _X, 0),  # A ^= X
        (_ALU | _MUL | _K, _MIX),
        (_ST, 1),  # M[1] = A
        (_ALU | _RSH | _K, 16),
        (_MISC | _TAX, 0),
        (_LD | _MEM, 1),
        (_ALU | _XOR | _X, 0),  # A ^= A >> 16
        (_ALU | _MOD | _K, count),
        (_RET | _A, 0),
    ]


def program(family: socket.AddressFamily, count: int) -> list[tuple[int, int]]:
    """The selector for ``count`` workers as (code, k) pairs (jt, jf are always 0)."""
    if count < 1:
        raise ValueError("a reuseport group needs at least one socket")
    if family == socket.AF_INET:
        head = [
            (_LD | _W | _ABS, _net(12)),  # source address
            (_ST, 0),
            (_LDX | _B | _MSH, _net(0)),  # X = IHL * 4
            (_LD | _H | _IND, _net(0)),  # A = UDP source port
        ]
    else:
        head = [(_LD | _W | _ABS, _net(8))]
        for offset in (12, 16, 20):
            head += [(_MISC | _TAX, 0), (_LD | _W | _ABS, _net(offset)), (_ALU | _XOR | _X, 0)]
        head += [(_ST, 0), (_LD | _H | _ABS, _net(40))]
    return head + _finish(count)


def attach(sock: socket.socket, count: int) -> None:
    """Attach the selector to the reuseport group of ``sock`` (bound already). OSError when the
    kernel refuses it (then the kernel's own hash picks the socket, which moves flows when the
    group changes)."""
    instructions = program(socket.AddressFamily(sock.family), count)
    raw = b"".join(struct.pack("=HBBI", code, 0, 0, k) for code, k in instructions)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("@HP", len(instructions), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def expected_slot(host: str, port: int, count: int) -> int:
    """The worker the selector gives a client at ``host``:``port`` (the same arithmetic)."""
    packed = ipaddress.ip_address(host).packed
    address = 0
    for index in range(0, len(packed), 4):
        address ^= int.from_bytes(packed[index : index + 4], "big")
    value = (port * _GOLDEN) & _MASK
    value = ((address ^ value) * _MIX) & _MASK
    value ^= value >> 16
    return value % count
