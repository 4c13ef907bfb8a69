#!/usr/bin/env bash
# The "How it is checked" steps of issue 30, run from the project root with nothing else on the
# default ports: start `make run` and wait for SERVING; find no CUDA lines; a manifest from /tmp
# is refused naming its path; a folder of two broken files ends in a state other than SUCCEEDED;
# Ctrl-C to the process group leaves no process of the stack within 10 s; the README's first 60
# lines say how to stop. Prints one PASS/FAIL line per step; exits 1 when any step failed.
set -u
cd "$(dirname "$0")/.."
START_TIMEOUT_S=${START_TIMEOUT_S:-300}  # seconds for the banner: TensorFlow loads twice
STOP_LIMIT_S=10                          # seconds Ctrl-C may take to end everything
LOG=$(mktemp /tmp/first-hour-run.XXXXXX.log)
WORK=$(mktemp -d /tmp/first-hour.XXXXXX)
BROKEN=var/batch-input/first-hour-broken-$$
CLI=.venv/bin/dermserve
failures=0

step() {  # step NAME STATUS [DETAIL]
  if [ "$2" = 0 ]; then echo "PASS  $1${3:+: $3}"; else echo "FAIL  $1${3:+: $3}"; failures=$((failures + 1)); fi
}

setsid make run >"$LOG" 2>&1 &
MAKE_PID=$!  # setsid: make leads its own process group, as in a terminal

started=$(date +%s)
until grep -q "^Stop: Ctrl-C" "$LOG"; do
  if ! kill -0 "$MAKE_PID" 2>/dev/null || [ $(( $(date +%s) - started )) -ge "$START_TIMEOUT_S" ]; then
    step "make run says SERVING" 1 "no banner; the log's end:"; tail -20 "$LOG"; exit 1
  fi
  sleep 1  # a poll of another process's output: the banner is its only signal
done
.venv/bin/python -c 'import grpc, sys; from devtools.stack.health import wait_until_serving
sys.exit(0 if wait_until_serving(grpc.insecure_channel("127.0.0.1:50051"), 10, lambda: False) else 1)'
step "make run says SERVING" $? "banner after $(( $(date +%s) - started )) s, health SERVING"

cuda=$(grep -icE "cuda|cuinit|onednn" "$LOG")
step "no CUDA or oneDNN lines" "$([ "$cuda" = 0 ] && echo 0 || echo 1)" "$cuda such lines"
unnamed=$(sed '/^dermserve is serving\./,/^Stop: Ctrl-C/d' "$LOG" | grep -v '^$' \
  | grep -cvE '^(redis |front |worker|web   |stack ) \| |^\.venv/bin/python -m devtools\.stack')
step "every line names its process" "$([ "$unnamed" = 0 ] && echo 0 || echo 1)" "$unnamed without"

printf 'path\nISIC_0024306.jpg\n' >"$WORK/manifest.csv"
"$CLI" batch submit "$WORK/manifest.csv" --no-wait >"$WORK/out" 2>"$WORK/err"
status=$?
step "a manifest from /tmp is refused naming its path" "$([ $status != 0 ] && grep -qF "$WORK/manifest.csv" "$WORK/err" && echo 0 || echo 1)" "$(tail -1 "$WORK/err")"

mkdir -p "$BROKEN"
printf 'not a JPEG' >"$BROKEN/broken_1.jpg"
printf '\xff\xd8\xff truncated' >"$BROKEN/broken_2.jpg"
"$CLI" batch submit "$BROKEN" >"$WORK/job.json" 2>"$WORK/job.err"
state=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["state"])' "$WORK/job.json" 2>/dev/null)
step "two broken files: not SUCCEEDED" "$([ -n "$state" ] && [ "$state" != BATCH_JOB_STATE_SUCCEEDED ] && echo 0 || echo 1)" "$state; $(grep '^job .*: ' "$WORK/job.err" | tail -1)"

"$CLI" classify ../shared/data/ham10000/images/ISIC_0024306.jpg >"$WORK/classify" 2>&1
step "the README's classify line" "$(grep -qE '^  (Result|Needs review):' "$WORK/classify" && echo 0 || echo 1)" "$(grep -E '^  (Result|Needs review):' "$WORK/classify")"

alive() {  # the pids among "$@" still running (an exited, unreaped one is state Z: gone)
  for pid in "$@"; do
    [ -r "/proc/$pid/stat" ] && [ "$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f1)" != Z ] && printf '%s ' "$pid"
  done
}
STACK_PID=$(cat var/run/stack.pid)
PIDS=("$MAKE_PID" "$STACK_PID" $(pgrep -P "$STACK_PID"))
sent=$(date +%s%N)
kill -INT -- "-$MAKE_PID"  # what Ctrl-C in the terminal sends: make's whole process group
while [ -n "$(alive "${PIDS[@]}")" ] && [ $(( ($(date +%s%N) - sent) / 1000000000 )) -lt 30 ]; do
  sleep 0.05
done
took_ms=$(( ($(date +%s%N) - sent) / 1000000 ))
left=$(alive "${PIDS[@]}")
wait "$MAKE_PID"
step "Ctrl-C ends everything within ${STOP_LIMIT_S} s" "$([ -z "$left" ] && [ "$took_ms" -lt $((STOP_LIMIT_S * 1000)) ] && echo 0 || echo 1)" "${took_ms} ms for make, the launcher and its $(( ${#PIDS[@]} - 2 )) children (pids ${PIDS[*]})${left:+; left: $left}"
step "the log ends with one stopped line" "$([ "$(grep -v '^$' "$LOG" | tail -1 | grep -c ' stopped$')" = 1 ] && [ "$(grep -cE '^stack  \| .* stopped$' "$LOG")" = 1 ] && echo 0 || echo 1)" "$(grep -v '^$' "$LOG" | tail -1)"

head -60 README.md | grep -q "make stop" && head -60 README.md | grep -q "Ctrl-C"
step "README's first 60 lines say how to stop" $? "$(head -60 README.md | grep -m1 -n 'make stop')"

rm -rf "$WORK" "$BROKEN"
echo "log: $LOG"
[ "$failures" = 0 ]
