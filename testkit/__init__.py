"""What tests and bench share: one sans-I/O TURN client and its drivers, and the daemon launcher.

* ``client``: the TURN client itself (messages out, answers in, the 401/438 dance), no I/O;
* ``memory``: its driver against an in-process ``TurnServer`` core, and a small core world;
* ``links``: UDP, TCP and TLS client sockets that move whole frames;
* ``sync``: the blocking socket driver, and a UDP echo peer;
* ``aio``: the asyncio driver;
* ``daemon``: a real turnd process on loopback with a temporary config.

Nothing here is imported by the server; bench and tests import it, never each other.
"""
