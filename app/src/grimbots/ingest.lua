-- Accept one Telegram update in a single round trip: dedupe at the door and enqueue an
-- RQ job exactly as rq.Queue.enqueue_job does (HSET job hash, SADD rq:queues, RPUSH).
-- KEYS[1] dedupe key   KEYS[2] rq:job:<id>   KEYS[3] rq:queue:<name>   KEYS[4] rq:queues
-- KEYS[5] this bot's admission counter for the current second
-- ARGV[1] dedupe TTL seconds   ARGV[2] job id   ARGV[3] created/enqueued timestamp
-- ARGV[4] job data (RQ-serialised call)   ARGV[5] job description
-- ARGV[6] updates admitted per bot and second (0: no limit)
-- Returns 1 when enqueued, 0 for a duplicate (nothing written besides the dedupe key and
-- its TTL), -1 when the bot is over its admission limit (nothing written: Telegram
-- retries it).

-- The job hash fields that are the same for every update, filled in from a real RQ Job
-- when the process starts (grimbots.telegram_ingest, grimbots.job_hash): sending them as
-- arguments on every request cost more client CPU than all the rest of the webhook.
local constant_fields = { --[[CONSTANT_JOB_FIELDS]] }

-- Before the dedupe key: a refused update must look new when Telegram sends it again.
local limit = tonumber(ARGV[6])
if limit > 0 then
  local admitted = redis.call('INCR', KEYS[5])
  if admitted == 1 then
    redis.call('EXPIRE', KEYS[5], 2)
  end
  if admitted > limit then
    return -1
  end
end
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  -- A repeat still writes (the TTL restarts): the WAIT pipelined after this script then
  -- confirms that a replica holds everything up to here, the first delivery included. A
  -- first delivery answered 503 because no replica acknowledged it in time must not be
  -- answered 200 on Telegram's retry while it still exists on the primary alone.
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  return 0
end
-- The dedupe key may have expired while the job is still known: still a duplicate.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('HSET', KEYS[2], 'created_at', ARGV[3], 'enqueued_at', ARGV[3], 'data', ARGV[4],
  'description', ARGV[5], unpack(constant_fields))
redis.call('SADD', KEYS[4], KEYS[3])
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
