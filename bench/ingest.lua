-- wrk script for bench/ingest.py: POST gzip'd batches, each with a unique batch_id.
--
--   wrk -t1 -cC -dS -s bench/ingest.lua URL -- ingest BLOB INDEX TOKEN RUNID
--   wrk -t1 -cC -dS -s bench/ingest.lua URL -- get /healthz
--
-- The Python side pre-compresses one body prefix per host (the whole JSON batch up to its
-- sample's time, `..."ts":`) as a raw deflate stream ending on a byte boundary (Z_SYNC_FLUSH),
-- and gives its CRC-32 and length. Per request this script appends the unique tail
-- `T}],"sent_at":T,"batch_id":"ID"}` (T: now) as a final *stored* deflate block and writes the gzip
-- trailer, updating the CRC over the ~70 tail bytes only. So every body is valid gzip, is as
-- small as the agent's, and costs wrk a string concatenation, not a compression.
--
-- done() prints one line `BENCHJSON {...}` with wrk's latency percentiles and the status
-- counts from every thread.

local bit = require("bit")
local band, bxor, bnot, rshift, tobit = bit.band, bit.bxor, bit.bnot, bit.rshift, bit.tobit

local CRC = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if band(c, 1) == 1 then c = bxor(rshift(c, 1), 0xEDB88320) else c = rshift(c, 1) end
  end
  CRC[i] = c
end

local function crc_update(crc, s)
  local c = bnot(crc)
  for i = 1, #s do
    c = bxor(CRC[band(bxor(c, s:byte(i)), 0xFF)], rshift(c, 8))
  end
  return bnot(c)
end

local function le32(x)
  x = tobit(x)
  return string.char(band(x, 0xFF), band(rshift(x, 8), 0xFF), band(rshift(x, 16), 0xFF),
    band(rshift(x, 24), 0xFF))
end

local function le16(x)
  return string.char(band(x, 0xFF), band(rshift(x, 8), 0xFF))
end

local GZIP_HEADER = "\31\139\8\0\0\0\0\0\0\255"

-- main state: hand out thread ids, keep the threads to sum their counters in done()
local threads = {}
local next_tid = 1

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

-- per-thread state
local mode, path, headers, prefixes, crcs, sizes, nbodies, runid
local seq = 0

function init(args)
  mode = args[1]
  ok, stored, duplicate, failed, busy = 0, 0, 0, 0, 0
  statuses = ""
  if mode == "get" then
    path = args[2]
    return
  end
  path = "/api/v1/ingest"
  local blob = assert(io.open(args[2], "rb")):read("*a")
  prefixes, crcs, sizes = {}, {}, {}
  local offset = 1
  for line in io.lines(args[3]) do
    local clen, crc, rawlen = line:match("^(%d+) (%d+) (%d+)$")
    clen = tonumber(clen)
    table.insert(prefixes, blob:sub(offset, offset + clen - 1))
    table.insert(crcs, tobit(tonumber(crc)))
    table.insert(sizes, tonumber(rawlen))
    offset = offset + clen
  end
  nbodies = #prefixes
  headers = {
    ["Authorization"] = "Bearer " .. args[4],
    ["Content-Type"] = "application/json",
    ["Content-Encoding"] = "gzip",
  }
  runid = args[5]
  seq = (tid - 1) * 7919  -- threads start on different hosts
end

function request()
  if mode == "get" then
    return wrk.format("GET", path)
  end
  seq = seq + 1
  local k = seq % nbodies + 1
  local now = os.time()
  local tail = string.format('%d}],"sent_at":%d,"batch_id":"%s-t%d-%d"}', now, now, runid, tid, seq)
  local body = GZIP_HEADER .. prefixes[k] .. "\1" .. le16(#tail) .. le16(0xFFFF - #tail) .. tail
    .. le32(crc_update(crcs[k], tail)) .. le32(sizes[k] + #tail)
  return wrk.format("POST", path, headers, body)
end

function response(status, hdrs, body)
  if status >= 200 and status < 300 then
    ok = ok + 1
    if mode ~= "get" then
      if body:find('"status":"stored"', 1, true) then
        stored = stored + 1
      else
        duplicate = duplicate + 1
      end
    end
  elseif status == 503 then
    busy = busy + 1  -- back-pressure: the store is behind (a real agent retries later)
  else
    failed = failed + 1
    if #statuses < 200 then statuses = statuses .. status .. " " end
  end
end

function done(summary, latency, requests)
  local o, s, d, f, b, st = 0, 0, 0, 0, 0, ""
  for _, t in ipairs(threads) do
    o = o + t:get("ok")
    s = s + t:get("stored")
    d = d + t:get("duplicate")
    f = f + t:get("failed")
    b = b + t:get("busy")
    st = st .. t:get("statuses")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"duration_us":%d,"requests":%d,"ok":%d,"stored":%d,"duplicate":%d,'
      .. '"failed":%d,"busy":%d,"statuses":"%s","socket_errors":%d,"timeouts":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%d}\n',
    summary.duration, summary.requests, o, s, d, f, b, st,
    e.connect + e.read + e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency.max, latency.mean))
end
