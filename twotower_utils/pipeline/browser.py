"""Look at an HTML report in a real browser: headless Chromium, network off, via DevTools.

`inspect_page` opens a local file in headless Chromium driven over the Chrome DevTools
protocol on a pipe (`--remote-debugging-pipe`: no port, no websocket library), with the
network emulated offline and every host name unresolvable, and returns what a reader would
meet: every request the page made, console errors and uncaught exceptions, each image's
rendered size, and a PNG screenshot. Used by tests/pipeline/test_browser.py; nothing here is
needed to run the project.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CHROMIUM_FLAGS", "PageReport", "find_chromium", "inspect_page"]

# Quiet, sandbox-free (we run as root in CI) and with nothing of Chromium's own phoning home.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-extensions",
                  "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
                  "--host-resolver-rules=MAP * ~NOTFOUND")
_IMAGES_JS = """JSON.stringify(Array.from(document.images).map(img => {
  const box = img.getBoundingClientRect();
  return {src: img.src.slice(0, 60), complete: img.complete, natural: img.naturalWidth,
          width: box.width, height: box.height};
}))"""


@dataclass
class PageReport:
    """What the browser saw: requests (URLs), errors (messages), images (sizes), screenshot."""

    url: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    title: str = ""
    screenshot: Path | None = None

    @property
    def remote_requests(self) -> list[str]:
        """Requests for anything but the page's own file and inline data."""
        return [u for u in self.requests if not u.startswith(("file:", "data:", "about:"))]


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary ($CHROMIUM, /usr/bin/chromium, or on PATH), or None."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", "chromium",
                      "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


def _onto_3_and_4(reader: int, writer: int) -> None:
    """In the child: put the pipe ends on fds 3 and 4 (via fds >= 10, so none is clobbered)."""
    import fcntl

    high_reader, high_writer = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (reader, writer))
    os.dup2(high_reader, 3)
    os.dup2(high_writer, 4)


class _DevTools:
    """The DevTools protocol over Chromium's pipe: NUL-terminated JSON messages on fds 3/4."""

    def __init__(self, binary: str, profile: Path, width: int, height: int):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies and events on fd 4.
        self.process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: _onto_3_and_4(to_chrome_r, from_chrome_w))
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.events: queue.Queue = queue.Queue()
        self._replies: dict[int, dict] = {}
        self._cond = threading.Condition()
        self._next = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._from_chrome, "rb", buffering=0) as stream:
            while chunk := stream.read(65536):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        with self._cond:
                            self._replies[message["id"]] = message
                            self._cond.notify_all()
                    else:
                        self.events.put(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        """Send one command and wait for its reply; raises RuntimeError on a protocol error."""
        self._next += 1
        message = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        with self._cond:
            if not self._cond.wait_for(lambda: self._next in self._replies, timeout):
                raise TimeoutError(f"no reply to {method} within {timeout} s")
            reply = self._replies.pop(self._next)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.send("Browser.close", timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._to_chrome)


def _record(report: PageReport, event: dict) -> bool:
    """Note one DevTools event in `report`; True when the page has finished loading."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Network.requestWillBeSent":
        report.requests.append(params["request"]["url"])
    elif method == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        report.errors.append(details.get("exception", {}).get("description")
                             or details.get("text", "exception"))
    elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        report.errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                      for a in params.get("args", [])))
    elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
        report.errors.append(f"{params['entry'].get('text')} ({params['entry'].get('url', '')})")
    return method == "Page.loadEventFired"


def inspect_page(path: str | Path, screenshot: str | Path | None = None,
                 width: int = 1280, height: int = 1000, timeout: float = 60.0,
                 max_height: int = 16000) -> PageReport:
    """Open `path` in headless Chromium with the network off and report what happened.

    Takes the HTML file, where to save a PNG screenshot of the page (its top `max_height`
    CSS pixels, at half scale; None: none), the window size and a load timeout in seconds.
    Raises FileNotFoundError when no Chromium is installed (see `find_chromium`) and
    TimeoutError when the page never loads.
    """
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium found: install Debian's chromium package")
    url = Path(path).resolve().as_uri()
    report = PageReport(url)
    with tempfile.TemporaryDirectory(prefix="twotower-chromium-") as profile:
        tools = _DevTools(binary, Path(profile), width, height)
        try:
            target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = tools.send("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Network", "Runtime", "Log", "Page"):
                tools.send(f"{domain}.enable", session=session)
            tools.send("Network.emulateNetworkConditions",
                       {"offline": True, "latency": 0, "downloadThroughput": -1,
                        "uploadThroughput": -1}, session=session)
            tools.send("Page.navigate", {"url": url}, session=session)
            deadline, loaded = time.monotonic() + timeout, False
            while not loaded:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{url} did not finish loading in {timeout} s")
                try:
                    loaded = _record(report, tools.events.get(timeout=remaining))
                except queue.Empty:
                    continue
            time.sleep(0.5)  # late console messages and image decodes
            while not tools.events.empty():
                _record(report, tools.events.get())
            result = tools.send("Runtime.evaluate", {"expression": _IMAGES_JS,
                                                     "returnByValue": True}, session=session)
            report.images = json.loads(result["result"]["value"])
            report.title = tools.send("Runtime.evaluate", {"expression": "document.title",
                                                           "returnByValue": True},
                                      session=session)["result"]["value"]
            if screenshot is not None:
                # The whole page (up to `max_height` CSS pixels) at half scale: the figures
                # sit far below the first screen of a report.
                size = tools.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
                clip = {"x": 0, "y": 0, "width": size["width"],
                        "height": min(size["height"], max_height), "scale": 0.5}
                shot = tools.send("Page.captureScreenshot",
                                  {"format": "png", "clip": clip, "captureBeyondViewport": True},
                                  session=session)
                report.screenshot = Path(screenshot)
                report.screenshot.write_bytes(base64.b64decode(shot["data"]))
        finally:
            tools.close()
    return report
