"""Fuzzing the whole core: mutated requests and peer datagrams never break the server.

The seeds, mutators, contract and storms are :mod:`testkit.fuzz` (shared with bench.fuzz); see
its docstring. Fixed seed (derandomize) and bounded sizes keep this file to seconds;
``python -m bench.fuzz`` runs the same properties with random seeds for as long as asked.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stun import attributes as at
from stun.channeldata import PacketKind, classify
from stun.message import Method, decode
from testkit.fuzz import (
    FUZZ,
    PEERS,
    STORMS,
    TUPLES,
    Seeds,
    decode_or_reject,
    load_seeds,
    mutants,
    reseal,
    run_packet,
    run_storm,
    storm_events,
)
from testkit.vectors import FuzzMaterial, StunVector


@pytest.fixture(scope="module")
def seeds(stun_vectors: dict[str, StunVector], fuzz_material: FuzzMaterial) -> Seeds:
    return load_seeds(stun_vectors, fuzz_material)


# --- tests ---------------------------------------------------------------------------------------


def test_seeds_hold_every_corpus_and_each_kind_of_client_packet(seeds: Seeds) -> None:
    """The mutators start from all the shared material and from real client packets of every
    request and data kind the core serves."""
    assert {name: len(group) > 0 for name, group in seeds.by_origin.items()} == {
        "coturn": True,
        "rfc-vectors": True,
        "pion-channel-data": True,
        "captures": True,
        "client": True,
    }
    kinds = set()
    for data in seeds.by_origin["client"]:
        if classify(data) is PacketKind.CHANNEL_DATA:
            kinds.add("channel-data")
        else:
            kinds.add(Method(decode(data).method).name)
    assert kinds >= {
        "ALLOCATE",
        "REFRESH",
        "CREATE_PERMISSION",
        "CHANNEL_BIND",
        "SEND",
        "channel-data",
        "CONNECT",
        "CONNECTION_BIND",
    }


def test_resealed_client_packets_still_authenticate(seeds: Seeds) -> None:
    """Re-sealing a client's own signed request reproduces its integrity and fingerprint byte
    for byte, so re-sealed mutants carry what the real client would have sent."""
    stun = [d for d in seeds.by_origin["client"] if classify(d) is PacketKind.STUN]
    signed = [d for d in stun if decode(d).has(at.Fingerprint)]
    assert signed
    for data in signed:
        assert bytes(reseal(bytearray(data))) == data


@FUZZ
@given(data=st.data())
def test_mutants_decode_or_raise_only_the_codec_error(seeds: Seeds, data: st.DataObject) -> None:
    """Every mutant decodes, parses as ChannelData and deframes, or raises StunDecodeError."""
    for _ in range(4):
        decode_or_reject(data.draw(mutants(seeds)))


@FUZZ
@given(
    data=st.data(),
    five_tuple=st.integers(0, len(TUPLES) - 1),
    peer=st.integers(0, len(PEERS) - 1),
)
def test_each_mutant_gets_an_answer_or_a_counted_drop(
    seeds: Seeds, data: st.DataObject, five_tuple: int, peer: int
) -> None:
    """A mutant from any client and a mutated peer datagram at a live relay are answered with
    well-formed actions, or dropped with a counter."""
    run_packet(five_tuple, data.draw(mutants(seeds)), peer, data.draw(mutants(seeds)))


@STORMS
@given(data=st.data())
def test_after_a_storm_the_legitimate_client_still_refreshes_and_relays(
    seeds: Seeds, data: st.DataObject
) -> None:
    """Mutants from every 5-tuple, peer datagrams, random relay, connection and timer callbacks
    never raise or produce malformed output, and the server still serves its client afterwards."""
    run_storm(data.draw(storm_events(seeds)))
