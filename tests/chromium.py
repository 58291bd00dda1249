"""A headless Chromium driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``): the page is
really laid out, run and painted, and every console message, uncaught exception and failed load is seen. No
dependency beyond the browser itself (playwright or selenium would add a driver and a download for one test)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


class Page:
    """One tab of a fresh headless browser at ``width`` x ``height`` CSS pixels. Use as a context manager."""

    def __init__(self, exe: str, width: int = 1280, height: int = 800, timeout: float = 60):
        self.timeout, self.events, self._id, self._buf = timeout, [], 0, b""
        self._profile = tempfile.TemporaryDirectory(prefix="featcache-chromium-")
        cmd_r, self._cmd_w = os.pipe()  # we write commands, the browser reads them on fd 3
        self._res_r, res_w = os.pipe()  # the browser answers on fd 4

        def fds() -> None:
            for fd, target in ((cmd_r, 3), (res_w, 4)):
                if fd == target:  # dup2 onto itself keeps close-on-exec (a fresh process's first pipe is fd 3)
                    os.set_inheritable(fd, True)
                else:
                    os.dup2(fd, target)

        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
                f"--user-data-dir={self._profile.name}", f"--window-size={width},{height}", "about:blank"]
        # its own session: close() can end the browser's helper processes too; stderr unread, so not piped
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=fds, close_fds=False,
                                     start_new_session=True)
        os.close(cmd_r)
        os.close(res_w)
        try:
            target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.call(f"{domain}.enable")
            self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                             "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()  # a browser that failed to start must not outlive the test
            raise

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError, TimeoutError, RuntimeError):  # already gone
            self._call("Browser.close")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the browser and any renderer or GPU process it left
        self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._res_r)
        self._profile.cleanup()

    # -- the protocol: JSON messages separated by NUL bytes
    def _send(self, method: str, params: dict | None, session: str | None) -> int:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        return self._id

    def _next(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._res_r], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self._res_r, 1 << 20) if ready else b""
            if not chunk:
                raise TimeoutError("no answer from the browser" if not ready else "the browser closed its pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def _call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        wanted, deadline = self._send(method, params, session), time.monotonic() + self.timeout
        while True:
            if time.monotonic() > deadline:  # a stream of events must not keep an answer waiting forever
                raise TimeoutError(f"no answer to {method} from the browser")
            msg = self._next(deadline)
            if msg.get("id") == wanted:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def call(self, method: str, params: dict | None = None) -> dict:
        return self._call(method, params, self.session)

    def wait_for(self, event: str, since: int = 0) -> dict:
        """The first ``event`` among the events from index ``since`` on, waiting for it if need be."""
        deadline = time.monotonic() + self.timeout
        seen = next((e for e in self.events[since:] if e["method"] == event), None)
        while seen is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the browser sent no {event}")
            msg = self._next(deadline)
            if "method" in msg:
                self.events.append(msg)
                seen = msg if msg["method"] == event else None
        return seen

    # -- what a test asks
    def open(self, path: Path) -> None:
        since = len(self.events)  # an earlier page's load event must not count for this one
        self.call("Page.navigate", {"url": path.resolve().as_uri()})
        self.wait_for("Page.loadEventFired", since)

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression!r} threw: {res['exceptionDetails']}")
        return res["result"].get("value")

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, failed loads and every load that left the file."""
        out = []
        for e in self.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                out.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p['args']]}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('text')} {p['exceptionDetails'].get('exception')}")
            elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"log {p['entry']['level']}: {p['entry']['text']} {p['entry'].get('url', '')}")
            elif m == "Network.loadingFailed":
                out.append(f"failed load: {p.get('errorText')} ({p.get('type')})")
            elif m == "Network.requestWillBeSent" and not p["request"]["url"].startswith(("file:", "data:")):
                out.append(f"network request: {p['request']['url']}")
        return out

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", params)["data"]))
        return path
