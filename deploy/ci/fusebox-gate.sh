#!/bin/sh
# Error-budget gate for a deploy pipeline: ask the fleet's SLO counters before (and after) a rollout.
#
#   FUSEBOX_STORE=redis://redis.fusebox:6379 deploy/ci/fusebox-gate.sh ROUTE [extra fusebox gate options]
#   FUSEBOX_STORE=... deploy/ci/fusebox-gate.sh --compare canary=chat-canary,stable=chat
#
# Environment:
#   FUSEBOX_STORE       the shared store the sidecars write to (required; keep credentials in a CI secret)
#   FUSEBOX             how to run Fusebox (default: `fusebox`; e.g. "docker run --rm ghcr.io/fusebox/fusebox:0.1.0")
#   ROLLBACK_CMD        run on ROLLBACK (e.g. "kubectl rollout undo deployment/agent"); unset: only fail the step
#   GATE_ON_NO_DATA     proceed | halt (default halt): what "not enough data" means for this pipeline
#   GATE_REPORT         where the JSON verdict goes (default fusebox-gate.json), for the pipeline's artifacts
#
# Exit status of this script: 0 go on, 1 stop (HALT, store down, no data with GATE_ON_NO_DATA=halt),
# 2 rolled back (or rollback needed), 3 usage error.
set -u

if [ $# -eq 0 ]; then
  echo "usage: $0 ROUTE [fusebox gate options] | $0 --compare canary=R1,stable=R2 [options]" >&2
  exit 3
fi
if [ -z "${FUSEBOX_STORE:-}" ]; then
  echo "set FUSEBOX_STORE to the redis:// URL of the shared store" >&2
  exit 3
fi
fusebox=${FUSEBOX:-fusebox}
report=${GATE_REPORT:-fusebox-gate.json}

case $1 in
  -*) target="" ;;
  *) target="--route $1"; shift ;;
esac

# One read of the counters: the verdict acted on is the one saved for the artifacts (and a store that is down
# costs one timeout, not two). The JSON goes to the log too.
# shellcheck disable=SC2086  # $fusebox and $target are word lists on purpose
$fusebox gate --store "$FUSEBOX_STORE" $target "$@" --json > "$report"
status=$?
[ -s "$report" ] && cat "$report" || rm -f "$report"

case $status in
  0)
    echo "fusebox gate: PROCEED"
    exit 0
    ;;
  10)
    echo "fusebox gate: HALT: the error budget is low or burning; not rolling out further" >&2
    exit 1
    ;;
  20)
    echo "fusebox gate: ROLLBACK: the error budget is spent or burning fast" >&2
    if [ -n "${ROLLBACK_CMD:-}" ]; then
      echo "running: $ROLLBACK_CMD" >&2
      sh -c "$ROLLBACK_CMD" || echo "rollback command failed" >&2
    fi
    exit 2
    ;;
  30)
    if [ "${GATE_ON_NO_DATA:-halt}" = proceed ]; then
      echo "fusebox gate: not enough data; GATE_ON_NO_DATA=proceed, going on" >&2
      exit 0
    fi
    echo "fusebox gate: not enough data to judge; stopping (set GATE_ON_NO_DATA=proceed to go on)" >&2
    exit 1
    ;;
  31)
    echo "fusebox gate: the SLO store is unreachable; stopping" >&2
    exit 1
    ;;
  126|127)
    echo "fusebox gate: cannot run '$fusebox' (set FUSEBOX to how Fusebox runs here)" >&2
    exit 3
    ;;
  *)
    echo "fusebox gate: usage error (exit $status)" >&2
    exit 3
    ;;
esac
