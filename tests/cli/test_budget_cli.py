"""`tokenmeter budget reset ID` against a real local HTTP receiver standing in for the worker
API (its endpoint is another part's; the CLI's side is the request it makes and what it
prints)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pipeline.cli import main


class Receiver(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, self.headers["Content-Type"], body))
        known = self.path == "/api/budgets/b1/reset"
        answer = ({"budget_id": "b1", "cleared": ["anomaly"]} if known
                  else {"error": "no budget 'nope'"})
        data = json.dumps(answer).encode()
        self.send_response(200 if known else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Receiver.seen = []
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_reset_posts_the_id_as_json_and_prints_the_answer(
        api: int, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--web-host", "127.0.0.1", "--web-port", str(api)]
    assert main(["budget", "reset", "b1", *flags]) == 0
    assert Receiver.seen == [("/api/budgets/b1/reset", "application/json", {"budget_id": "b1"})]
    assert json.loads(capsys.readouterr().out) == {"budget_id": "b1", "cleared": ["anomaly"]}
    assert main(["budget", "reset", "nope", *flags]) == 1
    err = capsys.readouterr().err
    assert "budget reset 'nope' failed" in err and "404" in err and "no budget 'nope'" in err
    assert main(["budget", "reset", *flags]) == 1
    assert "usage: tokenmeter budget reset ID" in capsys.readouterr().err
