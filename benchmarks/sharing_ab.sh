#!/usr/bin/env bash
# sharing_ab.sh: the per-request cost of rate shaping and the metadata cache, A/B in one run.
# Two proxies on core 0 (defaults: shaping and cache on; both off), the simulator and wrk on
# core 1; wrk -c50 for 4 s each, interleaved, 3 rounds, on a /dap/ path that is no rate-limit
# class (classified, then forwarded) and on a non-DAP path. Proxy CPU from /proc/PID/stat.
#   benchmarks/sharing_ab.sh     (Linux; needs wrk, taskset, the project in .venv)
set -u
. /work/main/.venv/bin/activate
taskset -c 1 instructure-auth-proxy simulate --port 19000 --no-rate-limits --log-level error > /tmp/ab-sim.log 2>&1 &
SIM=$!
sleep 2
common="DAP_CLIENT_ID=us-east-1#demo-client DAP_CLIENT_SECRET=demo-secret DAP_PROXY_UPSTREAM=http://127.0.0.1:19000 DAP_PROXY_LOG_LEVEL=warning"
env $common DAP_PROXY_LISTEN=127.0.0.1:19101 taskset -c 0 instructure-auth-proxy serve > /tmp/ab-on.log 2>&1 &
ON=$!
env $common DAP_PROXY_LISTEN=127.0.0.1:19102 DAP_PROXY_RATE_LIMITS_ENABLED=false DAP_PROXY_CACHE_ENABLED=false taskset -c 0 instructure-auth-proxy serve > /tmp/ab-off.log 2>&1 &
OFF=$!
sleep 3
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
for path in /dap/query/canvas/table/x/y /small; do
for round in 1 2 3; do
  for v in on off; do
    if [ $v = on ]; then pid=$ON; port=19101; else pid=$OFF; port=19102; fi
    c0=$(cpu $pid)
    reqs=$(taskset -c 1 wrk -t1 -c50 -d4s http://127.0.0.1:$port$path 2>/dev/null | awk '/requests in/{print $1}')
    c1=$(cpu $pid)
    echo "$path round=$round $v requests=$reqs cpu_ticks=$((c1-c0)) req_per_tick=$(python3 -c "print(round($reqs/max(1,$((c1-c0))),1))")"
  done
done
done
kill $ON $OFF $SIM
