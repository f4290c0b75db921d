"""The calls-per-second budget, shared by every worker: paced slots kept in Redis.

Each batch asks for a slot: a start time at which it may be submitted. One Lua script
(Redis' own clock, atomic) keeps the campaign's "theoretical arrival time" and spaces the
batches `count / rate` apart, so however many workers dispatch, no one-second window holds
more than `rate` dials. `campaigns.scheduling.pacing_slot` is the pure reference model this
script follows; the submit job waits for its slot (`_defer_until`).

Slots are planned times; a submit job may start late (a busy worker, a slow poll) and the
next one on time, which would put more than `rate` calls into one second. So right before
the POST, `admit` checks a sliding log of what was actually sent (a sorted set in Redis):
a batch goes only when the calls sent in the last `ADMIT_WINDOW` seconds plus its own stay
within `rate`; otherwise it waits for the oldest to leave the window.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from redis.asyncio import Redis

from campaigns.scheduling import PACING_MARGIN

SLOT = """
local rate = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local lead = tonumber(ARGV[3])
local horizon = tonumber(ARGV[4])
local margin = tonumber(ARGV[5])
local t = redis.call('TIME')
-- Seconds relative to a base kept in the key: a double printed by tostring() keeps only 14
-- digits, which would round an epoch time stamp to the millisecond.
local base = tonumber(redis.call('HGET', KEYS[1], 'base'))
if base == nil then
  base = tonumber(t[1])
  redis.call('HSET', KEYS[1], 'base', t[1], 'tat', '0')
end
local now = (tonumber(t[1]) - base) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat'))
if count <= 0 or rate <= 0 then return {0, ''} end
local start = math.max(now + lead, tat)
if start - now > horizon then return {0, ''} end
redis.call('HSET', KEYS[1], 'tat', tostring(start + count / rate * margin))
redis.call('EXPIRE', KEYS[1], 3600)
return {count, tostring(base + start)}
"""

GIVE_BACK = """
-- Return the unused tail of the latest slot (only if no later slot was handed out).
local expected = tonumber(ARGV[1])
local unused = tonumber(ARGV[2])
local base = tonumber(redis.call('HGET', KEYS[1], 'base'))
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat'))
if base == nil or tat == nil then return 0 end
if math.abs((base + tat) - expected) > 0.0005 then return 0 end
redis.call('HSET', KEYS[1], 'tat', tostring(tat - unused))
return 1
"""

ADMIT = """
local rate = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local member = ARGV[4]
local force = ARGV[5] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. tostring(now - window))
local sent = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local total = 0
for i = 1, #sent, 2 do
  total = total + tonumber(string.match(sent[i], '^(%d+):'))
end
-- A batch larger than the rate goes alone (an empty window), never waits for ever.
if force or total == 0 or total + count <= rate then
  redis.call('ZADD', KEYS[1], now, tostring(count) .. ':' .. member)
  redis.call('EXPIRE', KEYS[1], 60)
  return '0'
end
-- Wait until enough of the oldest sends have left the window.
local over = total + count - rate
for i = 1, #sent, 2 do
  over = over - tonumber(string.match(sent[i], '^(%d+):'))
  if over <= 0 then
    return tostring(tonumber(sent[i + 1]) + window - now)
  end
end
return tostring(window)
"""

# The admission window: a second plus room for the jitter between the check and the
# moment the provider counts the call (the POST's own latency, which varies by tens of
# milliseconds on a loaded machine). At full rate it costs a few per cent of throughput,
# within the ±5 % pacing target.
ADMIT_WINDOW = 1.05

# Slots start at least this far ahead (room to commit the claim and enqueue the job) and
# at most this far ahead (the dispatcher claims no more than that in advance).
LEAD_SECONDS = 0.2
HORIZON_SECONDS = 1.5


def pacer_key(campaign_id: int) -> str:
    return f"campaigns:pace:{campaign_id}"


def sent_key(campaign_id: int) -> str:
    return f"campaigns:sent:{campaign_id}"


class Pacer:
    """Hands out paced submission slots for a campaign's batches."""

    def __init__(
        self, redis: Redis, *, lead: float = LEAD_SECONDS, horizon: float = HORIZON_SECONDS
    ) -> None:
        self._slot = redis.register_script(SLOT)
        self._give = redis.register_script(GIVE_BACK)
        self._admit = redis.register_script(ADMIT)
        self.lead = lead
        self.horizon = horizon

    async def slot(self, campaign_id: int, *, rate: float, count: int) -> datetime | None:
        """The time a batch of `count` calls may be submitted, or None: come back later."""
        granted, start = await self._slot(
            keys=[pacer_key(campaign_id)],
            args=[rate, count, self.lead, self.horizon, PACING_MARGIN],
        )
        if int(granted) <= 0:
            return None
        return datetime.fromtimestamp(float(start), UTC)

    async def give_back(
        self, campaign_id: int, *, start: datetime, rate: float, asked: int, used: int
    ) -> None:
        """A batch used fewer calls than its slot: free the rest for the next batch."""
        if used >= asked:
            return
        expected = start.timestamp() + asked / rate * PACING_MARGIN
        await self._give(
            keys=[pacer_key(campaign_id)],
            args=[expected, (asked - used) / rate * PACING_MARGIN],
        )

    async def admit(
        self, campaign_id: int, *, rate: float, count: int, batch_id: str, limit: float = 30.0
    ) -> float:
        """Wait until `count` more calls fit in the sliding window, then record them as
        sent. Returns the seconds waited. Gives up waiting after `limit` seconds (and
        records the batch anyway: a stuck clock must not stall a campaign for ever)."""
        waited = 0.0
        while True:
            force = "1" if waited >= limit else "0"
            wait = float(
                await self._admit(
                    keys=[sent_key(campaign_id)],
                    args=[rate, count, ADMIT_WINDOW, batch_id, force],
                )
            )
            if wait <= 0:
                return waited
            wait = min(wait + 0.001, limit - waited)
            await asyncio.sleep(wait)
            waited += wait
