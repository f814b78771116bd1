"""A tiny stand-in for the Hugging Face Hub's upload API, on 127.0.0.1 only, for offline tests.

    with FakeHub(tmp_path / "hub") as hub:
        HfApi(endpoint=hub.url, token="test").upload_folder(...)
        hub.repo_dir("me/pruner")       # the uploaded files, as plain files

It answers the calls that `HfApi.create_repo` and `HfApi.upload_folder` make for small files:
`POST /api/repos/create`, `POST /api/validate-yaml` (a README's front matter must be a YAML mapping),
`POST /api/models/{repo}/preupload/{rev}` (every file goes in the request body: `uploadMode: "regular"`) and
`POST /api/models/{repo}/commit/{rev}` (NDJSON: a header, then base64 files).
Anything else is a 404. It is bounded: bodies over `max_body` bytes are refused, and the server shuts itself
down after `lifetime` seconds even if the test forgets to.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

HOST = "127.0.0.1"
_PREUPLOAD = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)$")
_FRONT_MATTER = re.compile(r"^---\n(?P<meta>.*?)\n---\n", re.DOTALL)
_COMMIT = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)$")


class FakeHub:
    """A fake Hub serving on `url` and storing repositories under `root`; records every request in `calls`."""

    def __init__(self, root, lifetime: float = 120.0, max_body: int = 64 * 2**20):
        self.root, self.lifetime, self.max_body = Path(root), lifetime, max_body
        self.calls: list[tuple[str, str]] = []
        self.repos: dict[str, dict] = {}
        self.server = ThreadingHTTPServer((HOST, 0), _handler(self))
        self.url = f"http://{HOST}:{self.server.server_address[1]}"
        self._timer = threading.Timer(lifetime, self.stop)

    def start(self) -> "FakeHub":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    __enter__ = start

    def __exit__(self, *exc) -> None:
        self.stop()

    def repo_dir(self, repo_id: str) -> Path:
        return self.root / repo_id

    # ---------------------------------------------------------------- API

    def create_repo(self, body: dict) -> tuple[int, dict]:
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        # huggingface_hub sends `visibility` ("private" / "public"), or nothing for the namespace's default.
        self.repos.setdefault(repo_id, {"visibility": body.get("visibility"), "commits": 0})
        self.repo_dir(repo_id).mkdir(parents=True, exist_ok=True)
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}

    def validate_yaml(self, body: dict) -> tuple[int, dict]:
        front = _FRONT_MATTER.match(body["content"])
        try:
            meta = yaml.safe_load(front["meta"]) if front else None
        except yaml.YAMLError as error:
            return 400, {"errors": [{"message": str(error)}]}
        if not isinstance(meta, dict):
            return 400, {"errors": [{"message": "metadata must be a mapping"}]}
        return 200, {"errors": [], "warnings": []}

    def preupload(self, repo_id: str, body: dict) -> tuple[int, dict]:
        if repo_id not in self.repos:
            return 404, {"error": f"repository {repo_id} not found"}
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in body["files"]]
        return 200, {"files": files}

    def commit(self, repo_id: str, lines: list[dict]) -> tuple[int, dict]:
        if repo_id not in self.repos:
            return 404, {"error": f"repository {repo_id} not found"}
        for line in lines:
            if line["key"] == "file":
                self._store(repo_id, line["value"])
            elif line["key"] != "header":
                return 400, {"error": f"unsupported commit operation {line['key']!r}"}
        self.repos[repo_id]["commits"] += 1
        oid = f"{self.repos[repo_id]['commits']:040x}"
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid}

    def _store(self, repo_id: str, value: dict) -> None:
        path = (self.repo_dir(repo_id) / value["path"]).resolve()
        if not path.is_relative_to(self.repo_dir(repo_id).resolve()):
            raise ValueError(f"path {value['path']!r} leaves the repository")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(value["content"]))


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_POST(self) -> None:
            hub.calls.append(("POST", self.path))
            length = int(self.headers.get("Content-Length", 0))
            if length > hub.max_body:
                return self._reply(413, {"error": "body too large"})
            raw = self.rfile.read(length)
            path = self.path.split("?", 1)[0]
            if path == "/api/repos/create":
                return self._reply(*hub.create_repo(json.loads(raw)))
            if path == "/api/validate-yaml":
                return self._reply(*hub.validate_yaml(json.loads(raw)))
            if match := _PREUPLOAD.match(path):
                return self._reply(*hub.preupload(match["repo"], json.loads(raw)))
            if match := _COMMIT.match(path):
                lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
                return self._reply(*hub.commit(match["repo"], lines))
            self._reply(404, {"error": f"no route for POST {path}"})

        def do_GET(self) -> None:
            hub.calls.append(("GET", self.path))
            self._reply(404, {"error": f"no route for GET {self.path}"})

        do_HEAD = do_GET

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
