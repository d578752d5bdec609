"""A real Jupyter kernel (ipykernel via jupyter_client) for tests, with message capture."""
from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field

from jupyter_client.manager import KernelManager


@dataclass
class Reply:
    msg_id: str
    status: str = ""
    outputs: list = field(default_factory=list)     # iopub messages of this cell
    user_expressions: dict = field(default_factory=dict)
    seconds: float = 0.0                               # submit -> execute_reply
    error: str = ""


class Kernel:
    """Start a kernel; `run(code)` executes a cell and collects its iopub messages.

    Every iopub message is also kept in `self.iopub` (in arrival order), so comm/widget
    updates sent from background threads after a cell ended can be inspected.
    """

    def __init__(self, cwd: str, env: dict | None = None):
        self.km = KernelManager(kernel_name="python3")
        import os
        self.km.start_kernel(cwd=cwd, env={**os.environ, **(env or {})})
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.iopub: list[dict] = []

    def drain(self, timeout: float = 0.05) -> None:
        while True:
            try:
                self.iopub.append(self.kc.get_iopub_msg(timeout=timeout))
            except queue.Empty:
                return

    def run(self, code: str, timeout: float = 300, user_expressions: dict | None = None) -> Reply:
        t0 = time.perf_counter()
        msg_id = self.kc.execute(code, user_expressions=user_expressions or {})
        reply = Reply(msg_id)
        deadline = time.time() + timeout
        got_reply = idle = False
        while not (got_reply and idle):
            if time.time() > deadline:
                raise TimeoutError(f"cell did not finish in {timeout} s: {code[:80]!r}")
            if not got_reply:
                try:
                    msg = self.kc.get_shell_msg(timeout=0.01)
                    if msg["parent_header"].get("msg_id") == msg_id:
                        got_reply = True
                        reply.seconds = time.perf_counter() - t0
                        reply.status = msg["content"]["status"]
                        reply.user_expressions = msg["content"].get("user_expressions", {})
                        if reply.status == "error":
                            reply.error = "\n".join(msg["content"].get("traceback", [])) or msg["content"].get("evalue", "")
                except queue.Empty:
                    pass
            try:
                msg = self.kc.get_iopub_msg(timeout=0.01)
            except queue.Empty:
                continue
            self.iopub.append(msg)
            if msg["parent_header"].get("msg_id") == msg_id:
                reply.outputs.append(msg)
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    idle = True
        return reply

    def value(self, expr: str, timeout: float = 60):
        """Evaluate an expression in the kernel; returns its repr's text/plain."""
        r = self.run("", user_expressions={"v": expr}, timeout=timeout)
        v = r.user_expressions["v"]
        if v["status"] != "ok":
            raise RuntimeError(f"{expr}: {v.get('ename')}: {v.get('evalue')}")
        return v["data"]["text/plain"]

    def wait_for(self, expr: str, timeout: float = 120) -> str:
        """Poll an expression until it is truthy (the kernel is idle between polls)."""
        deadline = time.time() + timeout
        while True:
            v = self.value(f"bool({expr})")
            if v == "True":
                return v
            if time.time() > deadline:
                raise TimeoutError(f"{expr} still false after {timeout} s")
            self.drain(0.05)

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def text_of(reply: Reply) -> str:
    """All text the cell printed or displayed (stream, text/plain, errors)."""
    parts = []
    for m in reply.outputs:
        c = m["content"]
        if m["msg_type"] == "stream":
            parts.append(c["text"])
        elif m["msg_type"] in ("display_data", "execute_result"):
            parts.append(c["data"].get("text/plain", ""))
        elif m["msg_type"] == "error":
            parts.append(c["ename"] + ": " + c["evalue"])
    return "\n".join(parts)


def comm_updates(msgs: list[dict], key: str) -> list:
    """Values of widget trait `key` in comm_msg 'update' messages, in arrival order."""
    out = []
    for m in msgs:
        if m["msg_type"] == "comm_msg":
            data = m["content"].get("data", {})
            if data.get("method") == "update" and key in data.get("state", {}):
                out.append(data["state"][key])
    return out
