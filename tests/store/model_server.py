"""A model server on 127.0.0.1 for `atelier models pull` tests: plain files (Range, a dropped
connection on demand) and the Hugging Face Hub routes huggingface_hub's snapshot_download uses."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class ModelServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}  # URL path → content
        self.drop_after: dict[str, int] = {}  # URL path → bytes sent before the first GET is cut off
        self.repos: dict[str, dict[str, bytes]] = {}  # hub repo id → {file name: content}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ModelServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool, cut: int | None = None):
                self.send_response(status)
                for key, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                if head:
                    return
                if cut is not None:  # promise the whole body, send part of it, hang up
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

            def _serve(self, head: bool):
                path = unquote(urlsplit(self.path).path)
                server.requests.append((self.command, path, self.headers.get("Range")))
                if path.startswith("/api/models/"):
                    return self._api(path[len("/api/models/"):], head)
                for repo, files in server.repos.items():
                    prefix = f"/{repo}/resolve/"
                    if path.startswith(prefix):
                        name = path[len(prefix):].split("/", 1)[1]
                        if name not in files:
                            return self._send(404, b"not found", {"X-Error-Code": "EntryNotFound"}, head)
                        body = files[name]
                        sha = hashlib.sha256(body).hexdigest()
                        return self._send(200, body, {"X-Repo-Commit": COMMIT, "ETag": f'"{sha}"',
                                                      "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(body)),
                                                      "Content-Type": "application/octet-stream"}, head)
                if path not in server.files:
                    return self._send(404, b"not found", {}, head)
                body = server.files[path]
                cut = server.drop_after.pop(path, None) if not head else None
                ranged = self.headers.get("Range")
                if ranged and ranged.startswith("bytes="):
                    start = int(ranged[len("bytes="):].split("-")[0])
                    if start >= len(body):
                        return self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"}, head)
                    return self._send(206, body[start:], {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}",
                                                          "Accept-Ranges": "bytes"}, head)
                self._send(200, body, {"Accept-Ranges": "bytes"}, head, cut)

            def _api(self, rest: str, head: bool):
                for repo, files in server.repos.items():
                    if not rest.startswith(repo + "/"):
                        continue
                    tail = rest[len(repo) + 1:]
                    if tail.startswith("revision/"):
                        body = {"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                "siblings": [{"rfilename": n} for n in sorted(files)]}
                    elif tail.startswith("tree/"):
                        body = [{"type": "file", "path": n, "size": len(b), "oid": hashlib.sha1(b).hexdigest(),
                                 "lfs": {"oid": hashlib.sha256(b).hexdigest(), "size": len(b), "pointerSize": 134}}
                                for n, b in sorted(files.items())]
                    else:
                        break
                    return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)
                self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound",
                                                                        "Content-Type": "application/json"}, head)

            def do_GET(self):
                self._serve(head=False)

            def do_HEAD(self):
                self._serve(head=True)

        return Handler
