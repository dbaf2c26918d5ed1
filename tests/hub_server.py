"""Stand-ins for the Hugging Face Hub API on 127.0.0.1.

:class:`HubRecorder` records every request and answers just enough of the API for ``HfApi.create_repo``,
``file_exists`` and ``upload_folder`` (regular, non-LFS uploads) to complete, keeping the uploaded files'
contents. :class:`SilentHub` accepts connections and never answers.
"""
import base64
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Tuple

SHA = 'a' * 40


class HubRecorder:
    """``hang_head``: record HEAD requests (``file_exists``) but answer none (until the ``with`` block ends,
    at most 10 s)."""

    def __init__(self, hang_head: bool = False) -> None:
        self.hang_head = hang_head
        self.release = threading.Event()
        self.requests: List[Tuple[str, str]] = []
        self.created: List[dict] = []
        self.commits: List[Dict[str, bytes]] = []
        self.commit_headers: List[dict] = []
        handler = self._handler()
        self.server = ThreadingHTTPServer(('127.0.0.1', 0), handler)
        self.endpoint = f'http://127.0.0.1:{self.server.server_address[1]}'
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> 'HubRecorder':
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, payload=None, headers=None) -> None:
                body = json.dumps(payload).encode() if payload is not None else b''
                self.send_response(code)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != 'HEAD':
                    self.wfile.write(body)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get('Content-Length', 0) or 0))

            def do_HEAD(self) -> None:
                recorder.requests.append(('HEAD', self.path))
                if recorder.hang_head:
                    recorder.release.wait(10)
                    return
                self._send(404, headers={'X-Error-Code': 'EntryNotFound', 'X-Error-Message': 'not found'})

            def do_GET(self) -> None:
                recorder.requests.append(('GET', self.path))
                m = re.match(r'^/api/models/([^/]+/[^/]+)', self.path)
                if m:
                    self._send(200, {'id': m.group(1), 'sha': SHA, 'siblings': [], 'private': False})
                else:
                    self._send(404, {'error': 'not found'}, {'X-Error-Code': 'EntryNotFound'})

            def do_POST(self) -> None:
                body = self._body()
                recorder.requests.append(('POST', self.path))
                if self.path == '/api/repos/create':
                    req = json.loads(body)
                    recorder.created.append(req)
                    name = f"{req.get('organization') or 'user'}/{req['name']}"
                    self._send(200, {'url': f'{recorder.endpoint}/{name}', 'name': name, 'id': name})
                    return
                if self.path == '/api/validate-yaml':
                    self._send(200, {'errors': [], 'warnings': []})
                    return
                m = re.match(r'^/api/models/([^/]+/[^/]+)/preupload/', self.path)
                if m:
                    files = json.loads(body)['files']
                    self._send(200, {'files': [
                        {'path': f['path'], 'uploadMode': 'regular', 'shouldIgnore': False} for f in files]})
                    return
                m = re.match(r'^/api/models/([^/]+/[^/]+)/commit/', self.path)
                if m:
                    files = {}
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item['key'] == 'header':
                            recorder.commit_headers.append(dict(item['value'], repo_id=m.group(1)))
                        elif item['key'] == 'file':
                            files[item['value']['path']] = base64.b64decode(item['value']['content'])
                    recorder.commits.append(files)
                    self._send(200, {'commitUrl': f'{recorder.endpoint}/{m.group(1)}/commit/{SHA}',
                                     'commitOid': SHA, 'pullRequestUrl': None})
                    return
                self._send(404, {'error': f'unhandled {self.path}'})

        return Handler


class SilentHub:
    """Accepts every connection on 127.0.0.1 and never answers: a Hub that hangs.

    The thread stops by itself after ``lifetime`` seconds (closing what it holds, so that a client without a
    timeout fails then instead of hanging the test run), or when the ``with`` block ends.
    """

    def __init__(self, lifetime: float = 10.0) -> None:
        self.lifetime = lifetime
        self.accepted = 0
        self.sock = socket.create_server(('127.0.0.1', 0))
        self.sock.settimeout(0.05)
        self.endpoint = f'http://127.0.0.1:{self.sock.getsockname()[1]}'
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        held = []
        deadline = time.monotonic() + self.lifetime
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    held.append(self.sock.accept()[0])
                    self.accepted += 1
                except socket.timeout:
                    continue
        finally:
            for conn in held:
                conn.close()
            self.sock.close()

    def __enter__(self) -> 'SilentHub':
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
