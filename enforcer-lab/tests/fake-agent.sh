#!/bin/sh
# A stand-in for `enforcer run` that enforces nothing: it follows the lab's agent contract
# (reports each .generation it sees in the status file) so the lab machinery can be tested
# without the real datapath. FAKE_AGENT_MODE=exit: exit at once; =error: report an error;
# =silent: never report.
manifests= status=
while [ $# -gt 0 ]; do
    case "$1" in
        --manifests) manifests=$2; shift ;;
        --status-file) status=$2; shift ;;
    esac
    shift
done
echo "fake agent in $(readlink /proc/self/ns/net): manifests=$manifests status=$status" >&2
case "$FAKE_AGENT_MODE" in
    exit) echo "fake agent: failing on purpose" >&2; exit 3 ;;
esac
trap 'exit 0' TERM INT
while :; do
    g=$(cat "$manifests/.generation" 2>/dev/null)
    if [ -n "$g" ] && [ "$FAKE_AGENT_MODE" != silent ]; then
        if [ "$FAKE_AGENT_MODE" = error ]; then err='"bad manifest on purpose"'; else err=null; fi
        printf '{"generation":%s,"ready":true,"error":%s,"revision":0}\n' "$g" "$err" > "$status.tmp"
        mv "$status.tmp" "$status"
    fi
    sleep 0.02
done
