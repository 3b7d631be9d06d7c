-- wrk script: GET PREFIX0 .. PREFIX{N-1} in turn, each thread from a different start.
-- wrk ... -s hits.lua URL -- PREFIX N
local reqs, i = {}, 0
local next_thread = 0

function setup(thread)
    thread:set("offset", next_thread * 7919)
    next_thread = next_thread + 1
end

function init(args)
    local prefix, n = args[1], tonumber(args[2])
    for k = 0, n - 1 do
        reqs[#reqs + 1] = wrk.format("GET", prefix .. k)
    end
    i = (offset or 0) % #reqs
end

function request()
    i = i % #reqs + 1
    return reqs[i]
end
