#!/bin/sh
# Starts `titra-node serve` configured from the environment, so that one image serves every node
# (docker-compose.yml sets NODE_ID, PEERS and TITRA_CLUSTER_SECRET per node).
#   no arguments, or arguments starting with '-': serve, with those arguments added
#   anything else: run it as is (e.g. `titra-node recover --data-dir /data`, `sh`)
set -eu
case "${1-}" in
    "" | -*) ;;
    *) exec "$@" ;;
esac
: "${NODE_ID:?set NODE_ID, the id of this node (e.g. n1)}"
: "${TITRA_CLUSTER_SECRET:?set TITRA_CLUSTER_SECRET, the cluster secret (at least 16 characters)}"
# exec: the node is PID 1 and gets SIGTERM itself from `docker stop`, and shuts down cleanly.
exec titra-node serve \
    --node-id "$NODE_ID" \
    --listen "${LISTEN:-0.0.0.0:7070}" \
    --peer-listen "${PEER_LISTEN:-0.0.0.0:7170}" \
    --peers "${PEERS:-}" \
    --data-dir "${DATA_DIR:-/data}" \
    --log-level "${LOG_LEVEL:-INFO}" \
    "$@"
