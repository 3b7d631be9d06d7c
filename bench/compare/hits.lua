-- wrk script: GET PREFIX0 .. PREFIX{N-1} in turn, each thread from a different start.
-- wrk ... -s hits.lua URL -- PREFIX N [xff]
-- With "xff", each request also carries X-Forwarded-For: 10.0.x.y, cycling over 4096
-- addresses independently of the ids (for taskgate with TASKGATE_TRUST_FORWARDED=true: its
-- per-client budget of upstream calls, 20/s, would otherwise refuse a load test's misses).
local reqs, i = {}, 0
local next_thread = 0

function setup(thread)
    thread:set("offset", next_thread * 7919)
    next_thread = next_thread + 1
end

function init(args)
    local prefix, n, xff = args[1], tonumber(args[2]), args[3] == "xff"
    local count = xff and math.max(n, 4096) or n
    for k = 0, count - 1 do
        local headers = nil
        if xff then
            headers = { ["X-Forwarded-For"] = "10.0." .. math.floor(k / 256) % 16 .. "." .. k % 256 }
        end
        reqs[#reqs + 1] = wrk.format("GET", prefix .. (k % n), headers)
    end
    i = (offset or 0) % #reqs
end

function request()
    i = i % #reqs + 1
    return reqs[i]
end
