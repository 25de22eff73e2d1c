-- pipelined test: 16 GET requests per write; wrk counts every response and sends the next
-- batch once all 16 have been answered.
local depth = 16

init = function(args)
   local r = {}
   for i = 1, depth do
      r[i] = wrk.format(nil, "/")
   end
   req = table.concat(r)
end

request = function()
   return req
end
