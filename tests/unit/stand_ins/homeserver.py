"""Stand-in for the deployed proxy in tests/unit/test_up_dev.py: on 127.0.0.1:PORT, the answers
of a logged-out Synapse behind the dev stack's proxy for what render.check_clients asks."""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
ANSWERS = {
    "/.well-known/matrix/client": (200, {"m.homeserver": {"base_url": f"http://localhost:{PORT}"}}),
    "/_matrix/client/versions": (200, {"versions": ["v1.11"],
                                       "unstable_features": {"org.matrix.simplified_msc3575": True}}),
    "/_matrix/client/v3/login": (200, {"flows": [{"type": "m.login.password"}]}),
    "/_matrix/client/v1/media/config": (401, {"errcode": "M_MISSING_TOKEN", "error": "Missing access token"}),
}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, body = ANSWERS.get(self.path.split("?")[0], (404, {"errcode": "M_UNRECOGNIZED"}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
