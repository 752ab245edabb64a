"""Workers: one turnd node as N processes (``[server] workers``).

A supervisor process (:mod:`turnd.workers.supervisor`) binds every listener once per worker in
one SO_REUSEPORT group, steers each client flow to a fixed worker with a classic BPF selector
(:mod:`turnd.workers.selector`), and starts the workers (:mod:`turnd.workers.worker`): each is a
whole :class:`turnd.service.TurnService` over its own slice of the relay ports, so no datagram
crosses processes. What spans the workers lives in the supervisor and reaches them over one RPC
channel each (:mod:`turnd.workers.rpc`): the control API and the metrics
(:mod:`turnd.workers.views`), the allocation counts the quotas need, revocations.
"""
