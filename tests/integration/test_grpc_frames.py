"""Big HTTP/2 frames on an agent stream, spoken with h2 directly over a socket.

After a successful handshake the server accepts DATA frames of up to ``rpc.MAX_FRAME_BYTES``.
h2 (4.4.1) sets its frame buffer's limit once per ``receive_data`` call, so a peer whose
SETTINGS ACK and first big frame reach the server in one read must still be served (the server
raises its inbound limit before it advertises the new size).
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import httpx
import trio

from fleet.proto import agent_service as pb
from fleet.server import rpc
from fleet.server.serve import Endpoints
from fleet.wire import METHOD_PATH
from tests.hostile import handshake, message

from .conftest import add_vps, wait_batch


async def _until(
    sock: trio.SocketStream, conn: h2.connection.H2Connection, done: type, count: int = 1
) -> list[h2.events.Event]:
    """Read and handle frames until ``count`` events of type ``done`` arrived (the server's
    frames are acknowledged as they come, except what the caller leaves unsent)."""
    seen: list[h2.events.Event] = []
    while sum(isinstance(event, done) for event in seen) < count:
        data = await sock.receive_some(65536)
        assert data, "the server closed the connection"
        events = conn.receive_data(data)
        assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in events), events
        seen += events
    return seen


async def test_settings_ack_and_a_big_frame_in_one_read(
    server: Endpoints, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(20):
        vps = await add_vps(client, "a")
        host, port = server.grpc_address.rsplit(":", 1)
        sock = await trio.open_tcp_stream(host, int(port))
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(
            1,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", METHOD_PATH),
                (":authority", server.grpc_address),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        conn.send_data(1, handshake(vps["id"], vps["agent_secret"]))
        await sock.send_all(conn.data_to_send())
        # The server's own SETTINGS, then (after the handshake) the big frame size, then its
        # answer: everything up to there is acknowledged except that last SETTINGS frame.
        await _until(sock, conn, h2.events.RemoteSettingsChanged)
        await sock.send_all(conn.data_to_send())
        events = await _until(sock, conn, h2.events.DataReceived)
        assert any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events)
        assert conn.max_outbound_frame_size == rpc.MAX_FRAME_BYTES
        response = await client.post(
            "/api/batch_commands", json={"command_content": "x", "target_vps_ids": [vps["id"]]}
        )
        batch_id = response.json()["batch_command_id"]
        events = await _until(sock, conn, h2.events.DataReceived)
        data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        request = pb.MessageToAgent.FromString(data[5:]).batch_agent_command_request
        assert request is not None
        out = pb.BatchCommandOutputStream(
            command_id=request.command_id, stream_type=1, chunk=b"q" * 30_000
        )
        done = pb.BatchCommandResult(command_id=request.command_id, status=1)
        conn.send_data(
            1,
            message(vps["id"], vps["agent_secret"], batch_command_output_stream=out)
            + message(vps["id"], vps["agent_secret"], batch_command_result=done),
        )
        # The SETTINGS ACK and one DATA frame of 30 KB (over the 16 KiB default, small enough
        # to reach the server in one read) in a single write.
        await sock.send_all(conn.data_to_send())
        batch = await wait_batch(server, batch_id)
        assert batch["overall_status"] == "COMPLETED_SUCCESSFULLY"
        assert batch["tasks"][0]["stdout_bytes"] == 30_000
        await sock.aclose()
