"""Screenshot MLflow's runs table of a search as a person sees it from the address the search prints.

    python -m search.docs.mlflow_screenshot sqlite:///asc-demo/runs/mlflow.db demo out.png

Starts `mlflow ui` on loopback, opens the experiment's trials in headless Chromium (it must be
installed: `chromium` on the PATH) at the address `search run` prints (the runs view every search
sets up for its experiment: the trials, best first, with their figures and parameters
as columns), closes the side panels, saves the PNG and stops both processes by their pids. It
speaks to Chromium over the DevTools protocol; the few lines of WebSocket below are written by hand
because the standard library has none and the project does not need a WebSocket package anywhere
else. A tool for the docs' picture (search/docs/mlflow_runs.png), not part of the search.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow.tracking import MlflowClient

from search.tracking import runs_url


class DevTools:
    """The smallest DevTools client: one WebSocket to one page, requests answered by id."""

    def __init__(self, ws_url: str):
        rest = ws_url.split("://", 1)[1]
        hostport, path = rest.split("/", 1)
        host, port = hostport.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"DevTools refused the WebSocket: {head[:200]!r}")
        self.next_id = 0

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise RuntimeError("DevTools closed the connection")
            out += chunk
        return out

    def _frame(self) -> bytes:
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._read(8))[0]
        payload = self._read(n)
        return payload if b0 & 0x80 else payload + self._frame()  # a fragmented message: read on

    def call(self, method: str, **params):
        self.next_id += 1
        data = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        mask = os.urandom(4)
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
                                if n < 65536 else bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[k % 4] for k, b in enumerate(data)))
        while True:  # events arrive in between: skip them
            message = json.loads(self._frame())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                         awaitPromise=True).get("result", {}).get("value")


def _wait(url: str, seconds: float = 60) -> None:
    end = time.time() + seconds
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url}: no answer in {seconds:.0f} s")


def _until(tools: DevTools, what: str, ready, seconds: float = 60) -> None:
    end = time.time() + seconds
    while not ready():
        if time.time() > end:
            raise RuntimeError(f"the MLflow page did not show {what} in {seconds:.0f} s")
        time.sleep(0.5)
    time.sleep(2)  # let the table finish drawing


def main(uri: str, experiment: str, out: str, port: int = 5079, debug_port: int = 9339) -> None:
    if shutil.which("chromium") is None:
        raise SystemExit("error: chromium is not on the PATH; install it (Debian: apt install chromium) and run again")
    exp = MlflowClient(uri).get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"error: {uri}: no experiment {experiment!r}")
    work = Path(tempfile.mkdtemp())
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                           "--port", str(port)], stdout=open(work / "ui.log", "w"), stderr=subprocess.STDOUT)
    browser = None
    try:
        _wait(f"http://127.0.0.1:{port}/health")
        browser = subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                    f"--user-data-dir={work / 'profile'}", "--window-size=1600,900",
                                    f"--remote-debugging-port={debug_port}", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=open(work / "chromium.log", "w"))
        _wait(f"http://127.0.0.1:{debug_port}/json/version")
        with urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json") as response:
            page = next(t for t in json.loads(response.read()) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        # the search's own view of its trials (search.tracking.runs_view), as the URL it prints opens it
        tools.call("Page.navigate", url=runs_url(f"http://127.0.0.1:{port}", exp.experiment_id))
        _until(tools, "the trials' columns", lambda: tools.js(
            "Array.from(document.querySelectorAll('[role=columnheader]')).some(h => h.textContent.includes('objective'))"))
        tools.js("""(() => { for (const b of document.querySelectorAll('button[aria-label]'))
                       if (/close/i.test(b.getAttribute('aria-label'))) b.click(); })()""")
        time.sleep(2)
        shot = tools.call("Page.captureScreenshot", format="png")
        Path(out).write_bytes(base64.b64decode(shot["data"]))
        print(f"screenshot: {out}")
    finally:
        for proc in (browser, ui):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m search.docs.mlflow_screenshot",
                                     description="Screenshot MLflow's runs table of a search (headless Chromium).")
    parser.add_argument("uri", help="the MLflow tracking URI the search recorded to (sqlite:///.../mlflow.db)")
    parser.add_argument("experiment", help="the search's name (its MLflow experiment)")
    parser.add_argument("out", help="the PNG file to write")
    args = parser.parse_args()
    main(args.uri, args.experiment, args.out)
