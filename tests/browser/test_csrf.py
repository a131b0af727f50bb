"""Cross-site request forgery in real Chromium.

A browser logged in to the UI opens a page served from *another port of the same host*: the
same site, so ``SameSite=Strict`` still sends the session cookie. That page tries every way a
page can write without the server's consent: an auto-submitted ``text/plain`` form (the attack
once seen to run a command), ``fetch`` in ``no-cors`` mode, ``fetch`` asking for JSON (a CORS
preflight the server never grants), and a WebSocket. Nothing runs: no batch is created, the
marker file the command would write never appears, and the UI itself still works.
"""

from __future__ import annotations

import http.server
import pathlib
import threading
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from .support import FleetServer, Session
from .test_ui import api, log_in, start_batch

pytestmark = pytest.mark.browser

ATTACK = """<!doctype html>
<html><head><title>cute cats</title></head><body>
<iframe name="sink" id="sink"></iframe>
<form id="form" method="POST" action="{origin}/api/batch_commands" enctype="text/plain"
      target="sink">
  <input name='{{"command_content": "touch {marker}", "target_vps_ids": [1, 2, 3], "x": "'
         value='"}}'>
</form>
<script>
const target = "{origin}/api/batch_commands";
const body = JSON.stringify({{command_content: "touch {marker}", target_vps_ids: [1, 2, 3]}});
const results = {{}};
async function attempt(name, init) {{
  try {{
    const r = await fetch(target, {{method: "POST", credentials: "include", body, ...init}});
    results[name] = "status " + r.status + " (" + r.type + ")";
  }} catch (e) {{
    results[name] = "blocked: " + e.name;
  }}
}}
function socket() {{
  return new Promise((resolve) => {{
    const ws = new WebSocket("{ws_origin}/ws/vps");
    ws.onmessage = () => {{ results.websocket = "message received"; ws.close(); resolve(); }};
    ws.onerror = () => {{ results.websocket = results.websocket || "refused"; resolve(); }};
    ws.onclose = () => resolve();
  }});
}}
window.addEventListener("load", async () => {{
  const formDone = new Promise((resolve) => {{
    document.getElementById("sink").addEventListener("load", resolve, {{once: true}});
  }});
  document.getElementById("form").submit();
  const as = (mode, type) => ({{mode, headers: {{"Content-Type": type}}}});
  await attempt("no-cors text/plain", as("no-cors", "text/plain"));
  await attempt("no-cors json", as("no-cors", "application/json"));
  await attempt("cors json", as("cors", "application/json"));
  await attempt("no-cors form", as("no-cors", "application/x-www-form-urlencoded"));
  await socket();
  await formDone;
  window.attackResults = results;
  document.title = "attack finished";
}});
</script>
</body></html>
"""


@pytest.fixture
def attacker(fleet_server: FleetServer, tmp_path: pathlib.Path) -> Iterator[tuple[str, str]]:
    """A page on another loopback port; yields (its URL, the marker path its command writes)."""
    marker = str(tmp_path / "pwned")
    page = ATTACK.format(
        origin=fleet_server.origin,
        ws_origin=fleet_server.origin.replace("http://", "ws://"),
        marker=marker,
    ).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/cats.html", marker
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _batch_total(server: FleetServer) -> int:
    page = api(server, "GET", "/api/batch_commands?limit=1")
    assert isinstance(page, dict)
    return int(page["total"])


def test_a_page_on_another_port_cannot_run_anything(
    session: Session, attacker: tuple[str, str]
) -> None:
    url, marker = attacker
    page = log_in(session)
    before = _batch_total(session.server)
    evil = page.context.new_page()  # same browser, same cookie jar: the victim's session
    try:
        evil.goto(url)
        expect(evil).to_have_title("attack finished")
        results = evil.evaluate("window.attackResults")
    finally:
        evil.close()
    # The simple requests reached the server with the cookie and were refused; the JSON one
    # never left the browser (no CORS grant for its preflight); the WebSocket was refused.
    assert results["cors json"].startswith("blocked"), results
    assert results["websocket"] == "refused", results
    for name in ("no-cors text/plain", "no-cors json", "no-cors form"):
        assert results[name] == "status 0 (opaque)", results
    assert _batch_total(session.server) == before
    assert not pathlib.Path(marker).exists()
    # The same cookie from the UI's own page still writes: the refusals were the origin's.
    start_batch(page, "true")
    assert _batch_total(session.server) == before + 1
