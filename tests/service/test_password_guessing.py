"""Online password guessing against a real turnd over UDP (issue 20, item 6): a source past its
failed-authentication budget is not answered, the right password from it included, while the
same user from another address is served at once."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest

from testkit.daemon import PASSWORD, USER, Daemon, start_turnd
from testkit.sync import TurnClient, error_code

#: Three failures, then none back within the test (an hour per failure).
LIMITS = """
[limits]
auth_failure_burst = 3
auth_failure_interval = 3600
"""
#: How long a client waits for an answer that a throttled source must not get.
NO_ANSWER_WAIT = 2.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    running = start_turnd(tmp_path_factory.mktemp("turnd"), LIMITS)
    yield running
    assert running.stop() == 0


def test_a_guessing_source_is_throttled_and_the_user_elsewhere_is_not(daemon: Daemon) -> None:
    """Three wrong passwords from 127.0.0.1 get 401; the fourth and then the right password from
    there get nothing; the right password from 127.0.0.2 allocates; the drops are counted."""
    server = (daemon.host, daemon.port)
    with TurnClient(server, USER, PASSWORD + "x", timeout=NO_ANSWER_WAIT) as guesser:
        assert [error_code(guesser.allocate()) for _ in range(3)] == [401] * 3
        with pytest.raises(TimeoutError):
            guesser.allocate()
    with TurnClient(server, USER, PASSWORD, timeout=NO_ANSWER_WAIT) as same_source:
        with pytest.raises(TimeoutError):
            same_source.allocate()  # its 401 challenge comes; the signed retry is dropped
        assert same_source.nonce is not None
    with TurnClient(server, USER, PASSWORD, bind="127.0.0.2") as elsewhere:
        assert error_code(elsewhere.allocate()) is None
    url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    throttled = [line for line in text.splitlines() if 'reason="throttled"' in line]
    assert throttled and float(throttled[0].split()[-1]) >= 2, throttled
