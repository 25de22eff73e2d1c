-- Request headers for wrk: each argument after "--" is one "Name: value" header, added to
-- wrk's request (benchmarks/static.py passes a browser's headers this way). wrk still builds
-- the request once, so the load generator's cost per request does not change; the headers go
-- out in the order of Lua's table, which servers do not depend on.
init = function(args)
   for _, line in ipairs(args) do
      local name, value = line:match("^([^:]+):%s*(.*)$")
      if name == nil then
         error("not a header: " .. line)
      end
      wrk.headers[name] = value
   end
end
