"""Stands in for `knotwork control`: listens on --listen and does nothing else."""

import argparse
import os
import socket
import time

parser = argparse.ArgumentParser()
parser.add_argument("--mesh")
parser.add_argument("--engine")
parser.add_argument("--listen", required=True)
parser.add_argument("--ca-listen")
args = parser.parse_args()
host, port = args.listen.rsplit(":", 1)
server = socket.create_server((host, int(port)))
print(f"fake control plane on {args.listen}, certificate service {args.ca_listen}, "
      f"metrics {os.environ.get('KNOTWORK_METRICS_LISTEN')}", flush=True)
while True:
    time.sleep(60)
