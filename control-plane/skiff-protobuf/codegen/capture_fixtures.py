#!/usr/bin/env python3
"""Re-capture tests/fixtures from the real kubectl (loopback only, no cluster needed).

Starts a plain-HTTP stub on 127.0.0.1 that answers GET /version with the minor version under
test and records every POST body, then runs each command below twice through /usr/bin/kubectl
(the version dispatcher): once against "v1.33.0" (kubectl 1.33 sends protobuf -> NAME.pb) and
once against "v1.31.0" (kubectl 1.31 sends JSON -> NAME.kubectl-1.31.json).

Usage (from the repository root):
  python3 control-plane/skiff-protobuf/codegen/capture_fixtures.py [--port 18765]
"""

import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures")

COMMANDS = [
    ("create_deployment", "create deployment web --image=nginx --replicas=3"),
    ("create_deployment_port", "create deployment web2 --image=nginx:1.27 --port=8080 --replicas=0"),
    ("create_namespace", "create namespace x"),
    ("create_configmap", "create configmap c --from-literal=a=b --from-file=text.txt --from-file=bin.dat"),
    ("create_secret_generic", "create secret generic s --from-literal=k=v --type=Opaque"),
    ("create_secret_docker_registry",
     "create secret docker-registry reg --docker-server=r.example --docker-username=u --docker-password=p"),
    ("create_service_nodeport", "create service nodeport n --tcp=80:8080 --node-port=30080"),
    ("create_service_clusterip", "create service clusterip c --tcp=443:8443 --tcp=80:http"),
    ("create_service_headless", "create service clusterip h --clusterip=None"),
    ("create_serviceaccount", "create serviceaccount sa"),
]

# Separate --cache-dir per version: the dispatcher caches the /version answer.
STATE = {"minor": "33", "bodies": []}

KINDS = {
    "deployments": ("apps/v1", "Deployment"),
    "namespaces": ("v1", "Namespace"),
    "configmaps": ("v1", "ConfigMap"),
    "secrets": ("v1", "Secret"),
    "services": ("v1", "Service"),
    "serviceaccounts": ("v1", "ServiceAccount"),
}


class Stub(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.startswith("/version"):
            m = STATE["minor"]
            return self.reply(200, {"major": "1", "minor": m, "gitVersion": f"v1.{m}.0"})
        self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        STATE["bodies"].append((self.headers.get("Content-Type", ""), body))
        # The minimal create response kubectl accepts (kubectl-wire.md section 1).
        segs = self.path.split("?")[0].strip("/").split("/")
        md = {"name": "x"}
        if "namespaces" in segs[:-1]:
            md["namespace"] = segs[segs.index("namespaces") + 1]
        api_version, kind = KINDS[segs[-1]]
        self.reply(201, {"kind": kind, "apiVersion": api_version, "metadata": md})

    def log_message(self, *args):
        pass


def main():
    port = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else 18765
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as work:
        with open(os.path.join(work, "text.txt"), "w") as f:
            f.write("line1\nline2\n")
        with open(os.path.join(work, "bin.dat"), "wb") as f:
            f.write(b"hello\x00\xff\xfe binary")
        for minor, suffix in (("33", ".pb"), ("31", ".kubectl-1.31.json")):
            STATE["minor"] = minor
            for name, cmd in COMMANDS:
                STATE["bodies"].clear()
                argv = ["/usr/bin/kubectl", "--server", f"http://127.0.0.1:{port}",
                        "--kubeconfig", "/dev/null", "--cache-dir", os.path.join(work, "cache" + minor)]
                subprocess.run(argv + cmd.split(), cwd=work, check=True, timeout=60,
                               stdout=subprocess.DEVNULL)
                (content_type, body), = STATE["bodies"]
                want = "protobuf" if suffix == ".pb" else "json"
                assert want in content_type, (name, minor, content_type)
                with open(os.path.join(FIXTURES, name + suffix), "wb") as f:
                    f.write(body)
                print(f"{name}{suffix}: {len(body)} bytes ({content_type})")
    server.shutdown()


if __name__ == "__main__":
    main()
