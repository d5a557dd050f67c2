#!/usr/bin/env bash
# Run a command once another process has ended: long trainings on the same 2 cores, one after the other.
#   bash experiments/queue_after.sh PID COMMAND...
set -euo pipefail
PID=${1:?usage: $0 PID COMMAND...}
shift
while kill -0 "$PID" 2>/dev/null; do sleep 20; done
exec "$@"
