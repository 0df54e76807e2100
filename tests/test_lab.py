"""JupyterLab as a way in: a Jupyter server on loopback opens a stage notebook through its REST API and runs it top to
bottom on a kernel through the kernel API (websocket), with the `parameters` cell's defaults (what papermill runs
when given no parameters), as a reader would with Run All in JupyterLab."""
import json, os, shutil, socket, subprocess, sys, time, urllib.request, uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGE = "01_mixture"  # the cheapest stage whose defaults run on their own (it builds runs/dev from nothing)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


class Server:
    "A Jupyter server on 127.0.0.1 serving `root`, started and stopped by the test."
    def __init__(self, root):
        self.port, self.token = _free_port(), uuid.uuid4().hex
        self.log = Path(root).parent / "jupyter-server.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               "JUPYTER_RUNTIME_DIR": str(Path(root).parent / "jupyter-runtime")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
             "--ServerApp.open_browser=False", "--ServerApp.log_level=WARN", "--allow-root"],
            env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT, text=True)
        self.base = f"http://127.0.0.1:{self.port}"
        for _ in range(300):
            if self.proc.poll() is not None: raise RuntimeError(f"jupyter server exited:\n{self.log.read_text()}")
            try: self.api("GET", "/api/status"); break
            except OSError: time.sleep(0.1)
        else: raise RuntimeError("jupyter server did not start in 30 s")

    def api(self, method, path, body=None):
        req = urllib.request.Request(self.base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            data = r.read()
        return json.loads(data) if data else None

    def stop(self):
        try: self.api("POST", "/api/shutdown")
        except OSError: pass
        try: self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()


def execute(ws, session, code, timeout=600):
    "Run `code` on the kernel behind websocket `ws`; return (reply content, error outputs, stdout)."
    mid = uuid.uuid4().hex
    ws.send(json.dumps({"header": {"msg_id": mid, "username": "test", "session": session, "msg_type": "execute_request",
                                   "version": "5.3"}, "parent_header": {}, "metadata": {}, "channel": "shell",
                        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                                    "allow_stdin": False, "stop_on_error": True}}))
    reply, idle, errors, out = None, False, [], []
    end = time.time() + timeout
    while not (reply and idle):
        ws.settimeout(max(1, end - time.time()))
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != mid: continue
        t = msg["msg_type"]
        if t == "execute_reply": reply = msg["content"]
        elif t == "status" and msg["content"]["execution_state"] == "idle": idle = True
        elif t == "error": errors.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")
        elif t == "stream" and msg["content"]["name"] == "stdout": out.append(msg["content"]["text"])
    return reply, errors, "".join(out)


def test_stage_notebook_runs_in_a_jupyter_server(tmp_path):
    import websocket
    from longctx_nb.runner import stage_parameters
    root = tmp_path / "lab"; root.mkdir()
    shutil.copyfile(ROOT / "nbs" / f"{STAGE}.ipynb", root / f"{STAGE}.ipynb")
    srv = Server(root)
    try:
        nb = srv.api("GET", f"/api/contents/{STAGE}.ipynb?content=1")
        assert nb["type"] == "notebook"
        cells = [c for c in nb["content"]["cells"] if c["cell_type"] == "code"]
        sess = srv.api("POST", "/api/sessions", {"path": f"{STAGE}.ipynb", "type": "notebook", "name": STAGE,
                                                 "kernel": {"name": "python3"}})
        kid = sess["kernel"]["id"]
        ws = websocket.create_connection(f"ws://127.0.0.1:{srv.port}/api/kernels/{kid}/channels",
                                         header=[f"Authorization: token {srv.token}"], timeout=60)
        try:
            session = uuid.uuid4().hex
            for i, c in enumerate(cells):
                reply, errors, _ = execute(ws, session, c["source"])
                assert reply["status"] == "ok" and not errors, f"cell {i}: {errors or reply}\n{c['source'][:300]}"
            # the values the notebook ran with are the parameters cell's defaults, as the runner (papermill) reads them
            defaults = stage_parameters(ROOT / "nbs" / f"{STAGE}.ipynb")
            _, _, out = execute(ws, session, f"import json; print(json.dumps({{k: globals()[k] for k in {sorted(defaults)!r}}}, default=str))")
            assert json.loads(out) == json.loads(json.dumps(defaults, default=str))
        finally:
            ws.close()
            srv.api("DELETE", f"/api/sessions/{sess['id']}")
        assert (root / defaults["run_dir"] / STAGE / "figures").is_dir()
        assert srv.api("GET", "/api/kernels") == []
    finally:
        srv.stop()
    assert srv.proc.returncode is not None
