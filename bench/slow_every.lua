-- wrk script for bench/run.sh: handlers that block on a "backend".
--
-- Every Nth request is GET /slow, the rest GET the URL's own path. The
-- hello examples answer /slow after sleeping HELLO_SLOW_MS milliseconds,
-- so with N = 10 (the default) one request in ten holds its handler that
-- long. N comes from the script's argument:
--   wrk -t1 -c100 -d5s -s bench/slow_every.lua http://127.0.0.1:PORT/hello.txt -- 10
-- Counted per wrk thread (the benchmark runs one), over all connections.

local every, count = 10, 0
local fast, slow

function init(args)
   every = tonumber(args[1]) or every
   fast = wrk.format(nil, wrk.path)
   slow = wrk.format(nil, "/slow")
end

function request()
   count = count + 1
   if count % every == 0 then
      return slow
   end
   return fast
end
