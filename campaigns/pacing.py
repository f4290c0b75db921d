"""The calls-per-second budget, shared by every worker: paced slots kept in Redis.

Each batch asks for a slot: a start time at which it may be submitted. One Lua script
(Redis' own clock, atomic) keeps the campaign's "theoretical arrival time" and spaces the
batches `count / rate` apart, so however many workers dispatch, no one-second window holds
more than `rate` dials. `campaigns.scheduling.pacing_slot` is the pure reference model this
script follows; the submit job waits for its slot (`_defer_until`).
"""

from __future__ import annotations

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

# Slots start at least this far ahead (room to commit the claim and enqueue the job) and
# at most this far ahead (the dispatcher claims no more than that in advance).
LEAD_SECONDS = 0.2
HORIZON_SECONDS = 1.5


def pacer_key(campaign_id: int) -> str:
    return f"campaigns:pace:{campaign_id}"


class Pacer:
    """Hands out paced submission slots for a campaign's batches."""

    def __init__(
        self, redis: Redis, *, lead: float = LEAD_SECONDS, horizon: float = HORIZON_SECONDS
    ) -> None:
        self._slot = redis.register_script(SLOT)
        self._give = redis.register_script(GIVE_BACK)
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
