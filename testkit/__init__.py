"""What tests and bench share, so that bench never imports the test suite.

* ``client``: the one TURN client (messages out, answers in, the 401/438 dance), no I/O;
* ``memory``: its driver against an in-process ``TurnServer`` core, and a core world;
* ``links``: UDP, TCP and TLS client sockets that move whole frames;
* ``sync``: the blocking socket driver, and a UDP echo peer;
* ``aio``: the asyncio driver;
* ``daemon``: a real turnd process on loopback with a temporary config;
* ``coturn``: coturn's programs (turnserver, turnutils_*) and the parsers of their output;
* ``vectors``: the shared STUN vectors, fuzz corpora and captures;
* ``fuzz``: the core's fuzz properties (seeds, mutators, contract, storms);
* ``cluster_bed``, ``cluster_nodes``: the network-namespace test bed and turnd nodes on it.

Nothing here is imported by the server.
"""
