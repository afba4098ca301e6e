"""A stand-in for ``vllm.entrypoints.openai.api_server`` in the supervisor's unit
tests: same flags, same endpoints (/health, /metrics, /v1/models, completions
and chat, streamed or not), answers in microseconds. It also forks a child that
sleeps, so tests can check that stopping the server leaves no process behind.

Like vLLM, it takes /v1 requests only with ``Authorization: Bearer
$VLLM_API_KEY`` when that variable is set (every path but /health and
/metrics with the agent's ``--middleware`` key guard). Behaviour switches (environment):
FAKE_VLLM_EXIT=N exits with code N at once
(a crash loop); FAKE_VLLM_CHILD_PIDFILE=path writes the child's pid there;
FAKE_VLLM_ARGV=path writes its arguments there, one per line;
FAKE_VLLM_DELAY=S waits S seconds before a non-streamed answer (a run long
enough to kill its server in the middle).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

METRICS = """# HELP vllm:num_requests_running Number of requests running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{model_name="{name}"}} {running}
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{model_name="{name}"}} 0.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{model_name="{name}"}} 0.25
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{{model_name="{name}"}} {tokens}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--served-model-name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    parser.add_argument("--middleware", action="append", default=[])
    args, _ = parser.parse_known_args()
    # the agent's key guard (hexamesh.engine.keyguard) guards every path but these
    guard_all = "hexamesh.engine.keyguard.EngineKeyGuard" in args.middleware
    if "FAKE_VLLM_ARGV" in os.environ:
        with open(os.environ["FAKE_VLLM_ARGV"], "w") as f:
            f.write("\n".join(sys.argv[1:]))
    if "FAKE_VLLM_EXIT" in os.environ:
        # vLLM's last words, as a failed start prints them: a traceback's tail
        print("Traceback (most recent call last):", flush=True)
        print("ValueError: crashing as told (FAKE_VLLM_EXIT)", flush=True)
        print("fake vllm: exiting", flush=True)
        sys.exit(int(os.environ["FAKE_VLLM_EXIT"]))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    if "FAKE_VLLM_CHILD_PIDFILE" in os.environ:
        with open(os.environ["FAKE_VLLM_CHILD_PIDFILE"], "w") as f:
            f.write(str(child.pid))
    name = args.served_model_name
    state = {"tokens": 0, "running": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def _send(self, code: int, body: object, ctype: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _refused(self) -> bool:
            """vLLM's API key check: /v1 paths need VLLM_API_KEY when it is set."""
            key = os.environ.get("VLLM_API_KEY")
            wrong = self.headers.get("authorization") != f"Bearer {key}"
            guarded = (
                self.path not in ("/health", "/metrics")
                if guard_all
                else self.path.startswith("/v1")
            )
            if key and guarded and wrong:
                self._send(401, {"error": "Unauthorized"})
                return True
            return False

        def do_GET(self) -> None:
            if self._refused():
                return
            if self.path == "/health":
                self._send(200, b"", "text/plain")
            elif self.path == "/metrics":
                text = METRICS.format(name=name, running=1.0, tokens=float(state["tokens"]))
                text += f"fake_vllm_answering {state['running']}\n"  # held answers (tests)
                self._send(200, text.encode(), "text/plain")
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            if self._refused():
                return
            if body.get("model") != name:
                self._send(
                    404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}
                )
                return
            n = int(body.get("max_tokens") or 4)
            chat = self.path.endswith("/chat/completions")
            state["tokens"] += n
            if not body.get("stream"):
                state["running"] += 1
                time.sleep(float(os.environ.get("FAKE_VLLM_DELAY", "0")))
                state["running"] -= 1
                choice = {"index": 0, "finish_reason": "length"}
                if chat:
                    choice["message"] = {"role": "assistant", "content": "tok " * n}
                else:
                    choice["text"] = "tok " * n
                self._send(200, {"id": "x", "choices": [choice], "usage": {"completion_tokens": n}})
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            for _ in range(n):
                delta = {"delta": {"content": "tok "}} if chat else {"text": "tok "}
                chunk = {"id": "x", "choices": [{"index": 0, **delta}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.close_connection = True

    print(f"fake vllm serving {name} on {args.host}:{args.port}", flush=True)
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
