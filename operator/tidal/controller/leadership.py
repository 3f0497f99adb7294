"""Two or more operator replicas: the one holding the Lease runs kopf and the autoscaler, the others
stand by. A standby answers /healthz (it is alive) but not /readyz, so the operator's Service sends
the activator's wake-up calls only to the leader.
"""

from __future__ import annotations

import http.server
import logging
import os
import signal
import socket
import threading

from ..clients.kube import load_api_client
from ..clients.lease import LeaderElector

log = logging.getLogger("tidal.leader")


STANDBY_METRICS = (b"# HELP tidal_operator_leading 1 in the operator process that acts (the leader); a standby "
                   b"reports 0.\n# TYPE tidal_operator_leading gauge\ntidal_operator_leading 0.0\n")


class _StandbyHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        alive = self.path.startswith("/healthz")
        body = b'{"ok": true, "leader": false}' if alive else b'{"ok": false, "reason": "standing by"}'
        if self.path.startswith("/metrics"):  # so that "no leader" is an alert, not a missing series
            alive, body = True, STANDBY_METRICS
        self.send_response(200 if alive else 503)
        self.send_header("Content-Type", "text/plain; version=0.0.4" if body is STANDBY_METRICS
                         else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # probes every few seconds would drown the log
        pass


def _standby_server(host: str, port: int | None) -> http.server.ThreadingHTTPServer | None:
    if not port:
        return None
    server = http.server.ThreadingHTTPServer((host, port), _StandbyHandler)
    threading.Thread(target=server.serve_forever, name="standby-http", daemon=True).start()
    return server


def run_as_leader(run, args) -> int:
    """Wait for the Lease, then run(stop_flag=...) until it returns or leadership is lost.

    Exit code 0 after a clean stop (the Lease is released for an immediate handover), 1 when
    leadership was lost: the process must end, as client-go's controllers do, because its caches and
    timers belong to a term that is over; the Deployment restarts it as a standby.
    """
    identity = f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.getpid()}"
    elector = LeaderElector(load_api_client(args.kubeconfig), args.leader_election_namespace,
                            args.leader_election_id, identity, lease_duration_s=args.lease_duration,
                            renew_deadline_s=args.lease_duration * 2 / 3, retry_period_s=max(0.5, args.lease_duration / 7.5))
    standby = _standby_server(args.http_host, args.http_port)
    stopping = threading.Event()

    def stop_standing_by(signum, frame):  # SIGTERM while standing by: stop, and never take the Lease
        stopping.set()
        elector.stop()
    previous = signal.signal(signal.SIGTERM, stop_standing_by)
    try:
        elector.acquire()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if standby:
            standby.shutdown()
            standby.server_close()
    if stopping.is_set():
        elector.release()  # in case the Lease was taken just before the signal
        return 0
    stop_flag, lost = threading.Event(), threading.Event()

    def on_lost():
        lost.set()
        stop_flag.set()
    elector.keep(on_lost)
    try:
        run(stop_flag=stop_flag)
    finally:
        if not lost.is_set():
            elector.release()
    return 1 if lost.is_set() else 0
