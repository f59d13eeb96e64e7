-- wrk script: POST a distinct Telegram update per request (unique update_id per thread).
-- wrk -t1 -c32 -d15s -s webhook.lua http://127.0.0.1:PORT/webhook/telegram/BOT
-- Environment: WEBHOOK_SECRET (the bot's secret), UPDATE_ID_BASE (offset between runs).
local counter = 0
local threads = {}

function setup(thread)
  thread:set("thread_base", #threads * 100000000 + tonumber(os.getenv("UPDATE_ID_BASE") or "0"))
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-Telegram-Bot-Api-Secret-Token"] = os.getenv("WEBHOOK_SECRET")
end

function request()
  counter = counter + 1
  local id = thread_base + counter
  local user = 1000 + counter % 500
  local body = '{"update_id":' .. id .. ',"message":{"message_id":' .. counter ..
    ',"from":{"id":' .. user .. ',"is_bot":false,"first_name":"Load"},' ..
    '"chat":{"id":' .. user .. ',"type":"private"},"date":1700000000,"text":"hello"}}'
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  io.write(string.format(
    "WRK requests=%d duration_us=%d non2xx=%d connect_errors=%d read_errors=%d timeouts=%d " ..
    "p50_us=%d p95_us=%d p99_us=%d max_us=%d\n",
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.timeout, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max))
end
