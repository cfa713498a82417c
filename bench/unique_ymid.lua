-- wrk script: every request carries a ymid never sent before, so dedup does real work.
-- Usage: wrk ... URL -- RUN_NAME   (the run name keeps ymids unique across runs)
local prefix = "run"
local counter = 0

function init(args)
  prefix = (args[1] or "run") .. "-" .. tostring(math.random(1, 1000000000))
end

function request()
  counter = counter + 1
  return wrk.format(nil, wrk.path .. "&uid=" .. prefix .. "-" .. counter)
end
