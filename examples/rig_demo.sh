#!/usr/bin/env bash
# The rig end to end, as a user runs it: the virtual pump served on a real pty, a clinician's
# session over that pty with the command-line programmer, then the full conformance suite
# against the same pty, with a JUnit file and an HTML report.
#
#   bash examples/rig_demo.sh [OUTPUT_DIR]      (pumprig on PATH; `make demo` runs it)
set -euo pipefail

out=${1:-build/demo}
mkdir -p "$out"
work=$(mktemp -d)
server=
cleanup() {
    if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

pumprig keys generate --out "$work/pump.keys" --label demo-pump >/dev/null
pumprig serve --pty --state "$work/pump.state" --key-file "$work/pump.keys" >"$work/url" 2>"$work/serve.log" &
server=$!
for _ in $(seq 300); do [ -s "$work/url" ] && break; sleep 0.1; done
url=$(head -n 1 "$work/url")
[ -n "$url" ] || { echo "pumprig serve printed no URL:" >&2; cat "$work/serve.log" >&2; exit 1; }
echo "== the virtual pump is served on $url, with its own key set"

run() { echo; echo "\$ $*"; "$@"; }
pumprig() { command pumprig --url "$url" --key-file "$work/pump.keys" "$@"; }
run pumprig interrogate
run pumprig refill --aspirated-ml 0 --added-ml 20 --concentration-ug-per-ml 500 \
    --needle-in-reservoir --aspiration-confirmed --yes
run pumprig program continuous --dose-ug-per-day 300 --concentration-ug-per-ml 500 --yes
run pumprig bolus priming --volume-ul 200 --duration 30m --yes
run pumprig status

echo
echo "== the conformance suite, full profile, against $url"
run command pumprig conform --url "$url" --key-file "$work/pump.keys" --profile full --junit "$out/junit.xml" --report "$out"
