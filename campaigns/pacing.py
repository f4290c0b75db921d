"""The calls-per-second budget, shared by every worker: a token bucket in Redis.

The bucket refills at `rate` tokens a second up to `burst`; taking is atomic (one Lua
script, Redis' own clock), so any number of workers together never exceed the rate.
`campaigns.scheduling.token_bucket` is the pure reference model this script follows.
"""

from __future__ import annotations

from redis.asyncio import Redis

TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local state = redis.call('HMGET', KEYS[1], 'tokens', 'sec', 'usec')
local tokens = tonumber(state[1])
if tokens == nil then
  tokens = burst
else
  -- seconds and microseconds are kept apart: a double printed by tostring() keeps only
  -- 14 digits, which would round the time stamp to the millisecond.
  local elapsed = (tonumber(t[1]) - tonumber(state[2])) + (tonumber(t[2]) - tonumber(state[3])) / 1000000
  tokens = math.min(burst, tokens + math.max(0, elapsed) * rate)
end
local granted = math.min(want, math.floor(tokens))
if granted < 0 then granted = 0 end
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'sec', t[1], 'usec', t[2])
redis.call('EXPIRE', KEYS[1], 3600)
return granted
"""

GIVE_BACK = """
local burst = tonumber(ARGV[2])
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
if tokens == nil then return 0 end
tokens = math.min(burst, tokens + tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens))
return 1
"""


def bucket_key(campaign_id: int) -> str:
    return f"campaigns:pace:{campaign_id}"


class Pacer:
    """Takes and gives back tokens of a campaign's calls-per-second bucket."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._take = redis.register_script(TAKE)
        self._give = redis.register_script(GIVE_BACK)

    async def take(self, campaign_id: int, *, rate: float, burst: float, want: int) -> int:
        if want <= 0:
            return 0
        granted = await self._take(keys=[bucket_key(campaign_id)], args=[rate, burst, want])
        return int(granted)

    async def give_back(self, campaign_id: int, *, count: int, burst: float) -> None:
        if count > 0:
            await self._give(keys=[bucket_key(campaign_id)], args=[count, burst])
