"""A stand-in for an OpenAI-compatible inference server (vLLM's API), since no model weights
can be fetched here: `/v1/models` lists the model it was started with, and
`/v1/chat/completions` answers in the API's shape, echoing the last message. It records
the headers each request brought, so a test can see what reached the pod."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .jsonhttp import send_json


class FakeOpenAI:
    def __init__(self, model: str) -> None:
        self.model = model
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, code: int, body: Any) -> None:
                send_json(self, code, body)

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path, dict(self.headers)))
                if self.path == "/v1/models":
                    self.reply(200, {"object": "list", "data": [
                        {"id": fake.model, "object": "model", "owned_by": "vllm"}]})
                else:
                    self.reply(404, {"error": {"message": "Not Found", "code": 404}})

            def do_POST(self) -> None:
                fake.requests.append(("POST", self.path, dict(self.headers)))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    self.reply(404, {"error": {"message": "Not Found", "code": 404}})
                    return
                if body.get("model") != fake.model:
                    self.reply(404, {"error": {"message": f"The model `{body.get('model')}` "
                                               "does not exist.", "code": 404}})
                    return
                said = body["messages"][-1]["content"]
                self.reply(200, {
                    "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                    "model": fake.model, "choices": [{
                        "index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": f"echo: {said}"}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
