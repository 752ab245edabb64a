"""``turnctl cluster``: the cluster as the node asked sees it (DESIGN.md, "The cluster").

Its view of the nodes (alive, dead, draining) and the forwarding counters, the relay port
slices each node owns, and which node owns a given client flow.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

import typer

from turnd.turnctl_daemon import answer
from turnd.turnctl_format import by_name, last_heard, spans, table, yes

app = typer.Typer(no_args_is_help=True, help="The cluster, as this node sees it.")

#: What ``cluster nodes`` says on a node whose [cluster] lists no nodes (turnd's 409 elsewhere).
NOT_A_CLUSTER = "not a cluster: [cluster] lists no nodes"


def _node_state(node: dict[str, Any]) -> str:
    if not node.get("alive"):
        return "dead"
    return "draining" if node.get("draining") else "alive"


@app.command("nodes")
def cluster_nodes(ctx: typer.Context) -> None:
    """List the configured nodes (alive, dead or draining) and the forwarding counters."""
    answer(ctx, "GET", "/v1/cluster/nodes", _print_nodes)


def _print_nodes(found: Any) -> None:
    if not found.get("enabled"):
        typer.echo(NOT_A_CLUSTER)
        return
    rows = [
        (
            node["node"],
            node["backbone"],
            _node_state(node),
            last_heard(node),
            node["relay_ports"],
            "(this node)" if node.get("self") else "",
        )
        for node in found.get("nodes", [])
    ]
    typer.echo(table(rows, ("NODE", "BACKBONE", "STATE", "LAST HEARD", "RELAY PORTS", "")))
    counters = found.get("counters", {})
    typer.echo(
        f"forwarded: {counters.get('forwarded_client', 0)} client,"
        f" {counters.get('forwarded_peer', 0)} peer;"
        f" second chance: {counters.get('second_chance', 0)};"
        f" backbone drops: {by_name(counters.get('drops'))}"
    )


@app.command("table")
def cluster_table(ctx: typer.Context) -> None:
    """Show which relay ports each node owns (its slices, adjacent ones merged)."""
    answer(ctx, "GET", "/v1/cluster/table", _print_table)


def _print_table(found: Any) -> None:
    typer.echo(
        f"relay ports {found['port_min']}-{found['port_max']} in slices of {found['slice_size']};"
        f" {found.get('catch_sockets', 0)} catch sockets on this node"
    )
    nodes = found.get("nodes", {})
    rows = [
        (int(node), sum(high - low + 1 for low, high in owned), spans(owned))
        for node, owned in sorted(nodes.items(), key=lambda item: int(item[0]))
    ]
    typer.echo(table(rows, ("NODE", "PORTS", "RANGES")))


@app.command("owner")
def cluster_owner(
    ctx: typer.Context,
    client: Annotated[str, typer.Argument(help="the client address, ip:port or [ipv6]:port")],
    server: Annotated[
        str | None,
        typer.Option(help="the server address the client sends to (default: turnd's UDP one)"),
    ] = None,
    transport: Annotated[str, typer.Option(help="the client transport: udp, tcp, tls")] = "udp",
) -> None:
    """Say which node owns a client flow, and whether this node holds its allocation."""
    query = {"client": client, "transport": transport}
    if server is not None:
        query["server"] = server

    def render(found: Any) -> None:
        typer.echo(found.get("flow", client))
        if found.get("node") is None:
            typer.echo("the node that accepted the connection (not this one) — allocation here: no")
            return
        state = "alive" if found.get("alive") else "dead"
        typer.echo(f"node {found['node']} ({state}) — allocation here: {yes(found.get('here'))}")

    answer(ctx, "GET", f"/v1/cluster/owner?{urlencode(query)}", render)
