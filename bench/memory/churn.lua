-- wrk script: every request a new id, gen-<run>-<thread>-<n>: distinct across threads and runs.
-- Each carries X-Forwarded-For: 10.x.y.z, cycling over 65536 addresses (taskgate runs with
-- TASKGATE_TRUST_FORWARDED=true: its per-client budget of upstream calls, 20/s, would
-- otherwise refuse the misses of a load test from one address).
-- wrk ... -s churn.lua URL -- RUN
local n, tid = 0, 0
local next_thread = 0
function setup(thread)
    thread:set("tid", next_thread)
    next_thread = next_thread + 1
end
function init(args)
    run = args[1] or "0"
end
function request()
    n = n + 1
    local k = n * 2 + tid
    return wrk.format("GET", "/task/gen-" .. run .. "-" .. tid .. "-" .. n,
        { ["X-Forwarded-For"] = "10." .. tid .. "." .. math.floor(k / 256) % 256 .. "." .. k % 256 })
end
