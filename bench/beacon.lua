-- wrk script for the tracker benchmark: POST /t with a realistic one-event beacon (about 350 bytes).
--   wrk ... -s bench/beacon.lua http://127.0.0.1:PORT/t -- <run nonce: 8 hex digits> <number of visitors>
-- Every request carries a new event id (run nonce, wrk thread, per-thread counter), so the service really
-- stores every event instead of dropping it as a duplicate; visitors rotate over a few thousand ids.

local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
end

local nonce, visitors, counter, headers
local URL = "https://shop.example.com/products/blue-shoes?utm_source=newsletter"
local REF = "https://www.google.com/"
local TITLE = "Blue shoes \226\128\147 Example Shop" -- an en dash, as UTF-8

function init(args)
  nonce = args[1] or "00000000"
  visitors = tonumber(args[2] or "4096")
  counter = 0
  headers = {
    ["Content-Type"] = "text/plain",  -- what navigator.sendBeacon sends: no CORS preflight
    ["User-Agent"] = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
      .. "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    ["Origin"] = "https://shop.example.com",  -- a cross-origin beacon, as from a customer's site
  }
end

function request()
  counter = counter + 1
  local t = tid or 0
  local vid = string.format("5e1f0b7a-0c2d-4e3f-8a4b-%012x", (counter * 2 + t) % visitors)
  local id = string.format("%s-%04x-4000-8000-%012x", nonce, t, counter)
  local now = os.time() * 1000
  local body = string.format(
    '{"vid":"%s","sent_at":%d,"events":[{"id":"%s","type":"page_view","ts":%d,"url":"%s","ref":"%s",'
      .. '"title":"%s","props":{"category":"shoes","price":59.9}}]}',
    vid, now, id, now - 120, URL, REF, TITLE)
  return wrk.format("POST", nil, headers, body)
end
