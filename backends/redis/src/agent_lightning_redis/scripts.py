"""Lua scripts: every multi-key change runs as one script, so Redis applies it atomically.

Key layout under the store's prefix ``P`` (default ``agl:``):

* ``P ro:{id}``      hash: one rollout (``body`` JSON of its immutable fields, plus status,
  ``n`` attempt count, ``started``/``ended``/``error``, ``ver`` for compare-and-set, ``seq``
  creation order, ``tt`` task type, ``mode``, ``lease``/``tmo`` seconds)
* ``P at:{id}``      hash: attempt id -> attempt JSON (``lease_expires_at`` is derived on read)
* ``P aids``         hash: every attempt id -> its rollout id (attempt ids are unique across rollouts)
* ``P sp:{id}``      hash: ``{attempt id}:{span id}`` -> span JSON
* ``P rollouts``     zset: every rollout id by creation order
* ``P st:{status}``  zset: rollout ids with that status, by creation order
* ``P q:{mode}|{task type}`` zset: claimable rollouts, oldest first; ``P queues`` lists them
* ``P leases``       zset: rollout ids with a running attempt, by when it expires
* ``P ctr``          counter for creation/queue order
* ``P n``            hash: ``{status}|{mode}|{task type}`` -> how many rollouts have them (``count_rollouts``)
* ``P res:{id}``, ``P res:ver``, ``P res:latest``: resource snapshots
* ``P groups``       hash: subscription group -> ``*`` or JSON list of task types
* ``P finished``, ``P finished:{task type}``: streams of finished rollout ids (consumer groups)
* ``P dlv:{group}``  hash: rollout id -> ``{stream}\\n{entry id}`` of its delivery in flight
* ``P vis:{group}``  zset: rollout ids in flight, by redelivery deadline

Floats cross the Lua boundary only as strings written by Python (or, for the server's clock, by
``string.format`` to the microsecond), so they keep full precision. Leases are reckoned by the
server's clock (``TIME``), never by a client's.
"""

from __future__ import annotations

# Shared by several scripts: move a rollout between status/queue indexes and publish it when final.
_INDEX = r"""
local function reindex(p, rid, old, new, tt, mode, seq)
  if old == new then return end
  local member = mode .. '|' .. tt
  if old then
    redis.call('ZREM', p .. 'st:' .. old, rid)
    redis.call('HINCRBY', p .. 'n', old .. '|' .. member, -1)
  end
  redis.call('ZADD', p .. 'st:' .. new, seq, rid)
  redis.call('HINCRBY', p .. 'n', new .. '|' .. member, 1)
  local claimable_old = (old == 'queuing' or old == 'requeuing')
  local claimable_new = (new == 'queuing' or new == 'requeuing')
  if claimable_old and not claimable_new then
    redis.call('ZREM', p .. 'q:' .. member, rid)
  elseif claimable_new and not claimable_old then
    redis.call('SADD', p .. 'queues', member)
    redis.call('ZADD', p .. 'q:' .. member, redis.call('INCR', p .. 'ctr'), rid)
  end
  if new == 'succeeded' or new == 'failed' then
    redis.call('XADD', p .. 'finished', '*', 'rid', rid)
    redis.call('XADD', p .. 'finished:' .. tt, '*', 'rid', rid)
  end
end
"""

CREATE = (
    _INDEX
    + r"""
-- ARGV: prefix, count, then per rollout 11 values:
--   id, task type, mode, status, body, lease, timeout, started, attempt id, attempt json, lease deadline
local p = ARGV[1]
local count = tonumber(ARGV[2])
local dups = {}
for i = 0, count - 1 do
  local rid = ARGV[3 + i * 11]
  if redis.call('EXISTS', p .. 'ro:' .. rid) == 1 then table.insert(dups, rid) end
  local aid = ARGV[3 + i * 11 + 8]
  if aid ~= '' and redis.call('HEXISTS', p .. 'aids', aid) == 1 then table.insert(dups, 'attempt ' .. aid) end
end
if #dups > 0 then return {'dup', dups} end
for i = 0, count - 1 do
  local b = 3 + i * 11
  local rid, tt, mode, status = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local aid, ajson, deadline = ARGV[b + 8], ARGV[b + 9], ARGV[b + 10]
  local seq = redis.call('INCR', p .. 'ctr')
  local n = 0
  if aid ~= '' then n = 1 end
  redis.call('HSET', p .. 'ro:' .. rid, 'body', ARGV[b + 4], 'lease', ARGV[b + 5], 'tmo', ARGV[b + 6],
    'started', ARGV[b + 7], 'ended', '', 'status', status, 'n', n, 'ver', 1, 'seq', seq, 'tt', tt, 'mode', mode)
  redis.call('ZADD', p .. 'rollouts', seq, rid)
  reindex(p, rid, nil, status, tt, mode, seq)
  if aid ~= '' then
    redis.call('HSET', p .. 'at:' .. rid, aid, ajson)
    redis.call('HSET', p .. 'aids', aid, rid)
    redis.call('ZADD', p .. 'leases', deadline, rid)
  end
end
return {'ok', {}}
"""
)

UPDATE = (
    _INDEX
    + r"""
-- Compare-and-set of rollouts (each optionally with one attempt) computed in Python: all or none.
-- ARGV: prefix, count, then per rollout 10 values: id, expected ver, status, attempt count, started, ended,
--       error ('' = none, else '=' .. text), attempt id ('' = none), attempt json, lease op ('keep', 'del' or a
--       deadline). Returns {'ok'}, {'changed'} (a rollout changed since it was read: nothing written) or
--       {'missing', id}.
local p, count = ARGV[1], tonumber(ARGV[2])
local current = {}
for i = 0, count - 1 do
  local b = 3 + i * 10
  local cur = redis.call('HMGET', p .. 'ro:' .. ARGV[b], 'ver', 'status', 'tt', 'mode', 'seq')
  if not cur[1] then return {'missing', ARGV[b]} end
  if cur[1] ~= ARGV[b + 1] then return {'changed'} end
  current[i] = cur
end
for i = 0, count - 1 do
  local b = 3 + i * 10
  local rid, cur = ARGV[b], current[i]
  local rk = p .. 'ro:' .. rid
  redis.call('HSET', rk, 'status', ARGV[b + 2], 'n', ARGV[b + 3], 'started', ARGV[b + 4], 'ended', ARGV[b + 5])
  if ARGV[b + 6] == '' then redis.call('HDEL', rk, 'error') else redis.call('HSET', rk, 'error', ARGV[b + 6]) end
  redis.call('HINCRBY', rk, 'ver', 1)
  if ARGV[b + 7] ~= '' then redis.call('HSET', p .. 'at:' .. rid, ARGV[b + 7], ARGV[b + 8]) end
  if ARGV[b + 9] == 'del' then
    redis.call('ZREM', p .. 'leases', rid)
  elseif ARGV[b + 9] ~= 'keep' then
    redis.call('ZADD', p .. 'leases', ARGV[b + 9], rid)
  end
  reindex(p, rid, cur[2], ARGV[b + 2], cur[3], cur[4], cur[5])
end
return {'ok'}
"""
)

CLAIM = r"""
-- ARGV: prefix, most rollouts to claim (n), worker id as JSON, check expired leases ('1'/'0'),
--       number of task types (-1 = any), task types..., number of modes (-1 = any), modes..., n attempt ids.
-- The server's clock (TIME) starts the leases. Returns {'reap', now} when leases have expired, else
-- {'ok', {{rollout hash, attempt json}, ...}}: the oldest claimable rollouts, at most n.
local p, count, worker = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local t = redis.call('TIME')
local now = string.format('%d.%06d', t[1], t[2])
if ARGV[4] == '1' and #redis.call('ZRANGEBYSCORE', p .. 'leases', '-inf', '(' .. now, 'LIMIT', 0, 1) > 0 then
  return {'reap', now}
end
local i = 5
local ntt = tonumber(ARGV[i]); i = i + 1
local tts = nil
if ntt >= 0 then
  tts = {}
  for k = 1, ntt do tts[ARGV[i]] = true; i = i + 1 end
end
local nm = tonumber(ARGV[i]); i = i + 1
local modes = nil
if nm >= 0 then
  modes = {}
  for k = 1, nm do modes[ARGV[i]] = true; i = i + 1 end
end
local queues = {}
for _, member in ipairs(redis.call('SMEMBERS', p .. 'queues')) do
  local bar = string.find(member, '|', 1, true)
  local mode, tt = string.sub(member, 1, bar - 1), string.sub(member, bar + 1)
  if (modes == nil or modes[mode]) and (tts == nil or tts[tt]) then table.insert(queues, member) end
end
local claimed = {}
for c = 1, count do
  local best_key, best_score, best_id, best_member = nil, nil, nil, nil
  for q, member in ipairs(queues) do
    if member then
      local key = p .. 'q:' .. member
      local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      if #head > 0 then
        local score = tonumber(head[2])
        if best_score == nil or score < best_score then
          best_key, best_score, best_id, best_member = key, score, head[1], member
        end
      else
        redis.call('SREM', p .. 'queues', member)
        queues[q] = false
      end
    end
  end
  if best_id == nil then break end
  local aid = ARGV[i + c - 1]
  redis.call('ZREM', best_key, best_id)
  local rk = p .. 'ro:' .. best_id
  local f = redis.call('HMGET', rk, 'n', 'started', 'status', 'lease', 'tmo', 'seq')
  local n = tonumber(f[1]) + 1
  local started = f[2]
  if started == '' then started = now end
  redis.call('HSET', rk, 'status', 'running', 'n', n, 'started', started)
  redis.call('HINCRBY', rk, 'ver', 1)
  redis.call('ZREM', p .. 'st:' .. f[3], best_id)
  redis.call('ZADD', p .. 'st:running', f[6], best_id)
  redis.call('HINCRBY', p .. 'n', f[3] .. '|' .. best_member, -1)
  redis.call('HINCRBY', p .. 'n', 'running|' .. best_member, 1)
  local attempt = '{"rollout_id":' .. cjson.encode(best_id) .. ',"attempt_id":"' .. aid .. '","sequence":' .. n
    .. ',"worker_id":' .. worker .. ',"status":"running","started_at":' .. now .. ',"ended_at":null'
    .. ',"last_heartbeat_at":' .. now .. ',"error":null}'
  redis.call('HSET', p .. 'at:' .. best_id, aid, attempt)
  redis.call('HSET', p .. 'aids', aid, best_id)
  -- a lease an older release stored as inf or nan counts as the default (see agent_lightning.limits)
  local lease = tonumber(f[4])
  if lease == nil or lease ~= lease or lease <= 0 or lease > 1e9 then lease = 60 end
  local deadline = tonumber(now) + lease
  local tmo = tonumber(f[5])
  if tmo ~= nil and tmo == tmo and tmo > 0 and tmo <= 1e9 then deadline = math.min(deadline, tonumber(now) + tmo) end
  redis.call('ZADD', p .. 'leases', deadline, best_id)
  table.insert(claimed, {redis.call('HGETALL', rk), attempt})
end
return {'ok', claimed}
"""

SUCCEED = (
    _INDEX
    + r"""
-- The usual complete_attempt(..., 'succeeded'), for one attempt or a batch, in one step when every item is
-- the usual case: the attempt runs, its rollout runs, and the lease has not run out by the server's clock.
-- Otherwise nothing is written and it returns {'other'}: the caller takes the general path (load, transitions
-- in Python, compare-and-set), which reaps or raises as the rules say.
-- ARGV: prefix, count, then per attempt: rollout id, attempt id, error as JSON ('null' = none).
-- Returns {'ok', {rollout hash, ...}}.
local p, count = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = string.format('%d.%06d', t[1], t[2])
local found = {}
for i = 0, count - 1 do
  local rid, aid = ARGV[3 + i * 3], ARGV[4 + i * 3]
  local f = redis.call('HMGET', p .. 'ro:' .. rid, 'status', 'lease', 'tmo', 'tt', 'mode', 'seq')
  if f[1] ~= 'running' then return {'other'} end
  local attempt = redis.call('HGET', p .. 'at:' .. rid, aid)
  if not attempt or not string.find(attempt, '"status":"running"', 1, true) then return {'other'} end
  local started = tonumber(string.match(attempt, '"started_at":([^,}]+)'))
  local beat = tonumber(string.match(attempt, '"last_heartbeat_at":([^,}]+)'))
  local lease, tmo = tonumber(f[2]), tonumber(f[3])
  if started == nil or beat == nil or lease == nil or lease ~= lease or lease <= 0 or lease > 1e9 then
    return {'other'}
  end
  if tonumber(now) > beat + lease or (tmo ~= nil and tmo == tmo and tonumber(now) - started > tmo) then
    return {'other'}
  end
  found[i] = {f, attempt}
end
local out = {}
for i = 0, count - 1 do
  local rid, aid, err = ARGV[3 + i * 3], ARGV[4 + i * 3], ARGV[5 + i * 3]
  local f, attempt = found[i][1], found[i][2]
  local rk = p .. 'ro:' .. rid
  attempt = string.gsub(attempt, '"status":"running"', '"status":"succeeded"', 1)
  attempt = string.gsub(attempt, '"ended_at":null', '"ended_at":' .. now, 1)
  attempt = string.gsub(attempt, '"error":null', function() return '"error":' .. err end, 1)
  redis.call('HSET', p .. 'at:' .. rid, aid, attempt)
  redis.call('HSET', rk, 'status', 'succeeded', 'ended', now)
  redis.call('HDEL', rk, 'error')
  redis.call('HINCRBY', rk, 'ver', 1)
  redis.call('ZREM', p .. 'leases', rid)
  reindex(p, rid, 'running', 'succeeded', f[4], f[5], f[6])
  table.insert(out, redis.call('HGETALL', rk))
end
return {'ok', out}
"""
)

ADD_SPANS = r"""
-- ARGV: prefix, number of (rollout, attempt) pairs, pairs..., then per span: its pair's number (1-based),
--       field, span json, '1' if it is a reward span else '0'.
-- Returns {'ok'}, {'missing', rollout id, attempt id, rollout exists} or, when a span would change a
-- finished (succeeded/failed) attempt, {'refused', index of the span (0-based), '1' if it is stored}.
local p = ARGV[1]
local npairs = tonumber(ARGV[2])
local finished = {}
for i = 0, npairs - 1 do
  local rid, aid = ARGV[3 + i * 2], ARGV[4 + i * 2]
  local attempt = redis.call('HGET', p .. 'at:' .. rid, aid)
  if not attempt then
    return {'missing', rid, aid, redis.call('EXISTS', p .. 'ro:' .. rid)}
  end
  local status = cjson.decode(attempt)['status']
  if status == 'succeeded' or status == 'failed' then finished[i + 1] = true end
end
local first = 3 + npairs * 2
if next(finished) then
  for i = first, #ARGV, 4 do
    local pair = tonumber(ARGV[i])
    if finished[pair] then
      local stored = redis.call('HGET', p .. 'sp:' .. ARGV[3 + (pair - 1) * 2], ARGV[i + 1])
      if stored then
        if stored ~= ARGV[i + 2] then return {'refused', (i - first) / 4, '1'} end
      elseif ARGV[i + 3] == '1' then
        return {'refused', (i - first) / 4, '0'}
      end
    end
  end
end
for i = first, #ARGV, 4 do
  redis.call('HSET', p .. 'sp:' .. ARGV[3 + (tonumber(ARGV[i]) - 1) * 2], ARGV[i + 1], ARGV[i + 2])
end
return {'ok'}
"""

ADD_RESOURCES = r"""
-- ARGV: prefix, resources id, snapshot json (without its version); returns the version
local p = ARGV[1]
local version = redis.call('INCR', p .. 'res:ver')
redis.call('HSET', p .. 'res:' .. ARGV[2], 'v', version, 'body', ARGV[3])
redis.call('SET', p .. 'res:latest', ARGV[2])
return version
"""

SUBSCRIBE = r"""
-- ARGV: prefix, group, spec ('*' or a JSON list of task types), start id ('0' or '$'), streams...
local p, group, spec = ARGV[1], ARGV[2], ARGV[3]
local existing = redis.call('HGET', p .. 'groups', group)
if existing then
  if existing == spec then return {'exists'} end
  return {'mismatch', existing}
end
redis.call('HSET', p .. 'groups', group, spec)
for i = 5, #ARGV do
  local ok = pcall(redis.call, 'XGROUP', 'CREATE', ARGV[i], group, ARGV[4], 'MKSTREAM')
  if not ok then redis.call('XGROUP', 'SETID', ARGV[i], group, ARGV[4]) end
end
return {'created'}
"""

PULL = r"""
-- ARGV: prefix, group, consumer, (unused), visibility timeout in seconds, max count
-- Returns {'nogroup'} or {'ok', rollout ids, next redelivery deadline or '', streams, their last entry ids,
-- now}: deadlines are reckoned by the server's clock (TIME).
local p, group, consumer = ARGV[1], ARGV[2], ARGV[3]
local t = redis.call('TIME')
local now = string.format('%d.%06d', t[1], t[2])
local deadline = tostring(tonumber(now) + tonumber(ARGV[5]))
local max = tonumber(ARGV[6])
local spec = redis.call('HGET', p .. 'groups', group)
if not spec then return {'nogroup'} end
local streams = {}
if spec == '*' then
  streams = {p .. 'finished'}
else
  for _, tt in ipairs(cjson.decode(spec)) do table.insert(streams, p .. 'finished:' .. tt) end
end
local dk, vk = p .. 'dlv:' .. group, p .. 'vis:' .. group
local out = {}
for _, rid in ipairs(redis.call('ZRANGEBYSCORE', vk, '-inf', now, 'LIMIT', 0, max)) do
  local loc = redis.call('HGET', dk, rid)
  local nl = string.find(loc, '\n', 1, true)
  redis.call('XCLAIM', string.sub(loc, 1, nl - 1), group, consumer, 0, string.sub(loc, nl + 1), 'JUSTID')
  redis.call('ZADD', vk, deadline, rid)
  table.insert(out, rid)
end
for _, stream in ipairs(streams) do
  if #out >= max then break end
  local got = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', max - #out, 'STREAMS', stream, '>')
  if got then
    for _, entry in ipairs(got[1][2]) do
      local rid = entry[2][2]
      redis.call('HSET', dk, rid, stream .. '\n' .. entry[1])
      redis.call('ZADD', vk, deadline, rid)
      table.insert(out, rid)
    end
  end
end
local nxt = redis.call('ZRANGE', vk, 0, 0, 'WITHSCORES')
local last = {}
for _, stream in ipairs(streams) do
  local tail = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #tail > 0 then table.insert(last, tail[1][1]) else table.insert(last, '0-0') end
end
return {'ok', out, nxt[2] or '', streams, last, now}
"""

ACK = r"""
-- ARGV: prefix, group, rollout ids...; returns how many were in flight, or -1 for an unknown group
local p, group = ARGV[1], ARGV[2]
if redis.call('HEXISTS', p .. 'groups', group) == 0 then return -1 end
local dk, vk = p .. 'dlv:' .. group, p .. 'vis:' .. group
local n = 0
for i = 3, #ARGV do
  local loc = redis.call('HGET', dk, ARGV[i])
  if loc then
    local nl = string.find(loc, '\n', 1, true)
    redis.call('XACK', string.sub(loc, 1, nl - 1), group, string.sub(loc, nl + 1))
    redis.call('HDEL', dk, ARGV[i])
    redis.call('ZREM', vk, ARGV[i])
    n = n + 1
  end
end
return n
"""
