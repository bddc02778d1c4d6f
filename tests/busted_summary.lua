-- tests/busted_summary.lua: a busted output handler for people and scripts alike.
-- Prints each failure and error with its location and message, then as the
-- LAST line exactly `N passed, N failed` (errors count as failed), with
-- `, N skipped` appended when tests are pending. Use: busted -o tests/busted_summary.lua
local pretty = require "pl.pretty"

return function(options)
  local busted = require "busted"
  local handler = require("busted.outputHandlers.base")()

  local function text(message)
    if message == nil then return "Nil error" end
    if type(message) == "string" then return message end
    return pretty.write(message)
  end

  -- `file @ line`: where the failing `it` (or the describe/file that failed to load) is.
  local function where(t)
    local trace = t.element.trace or t.trace
    if trace and trace.short_src then
      return trace.short_src .. " @ " .. tostring(trace.currentline)
    end
    return "(unknown location)"
  end

  local function show(kind, t)
    io.write(string.format("%s: %s\n  %s\n", kind, t.name, where(t)))
    io.write("  ", (text(t.message):gsub("\n", "\n  ")), "\n")
    if options.verbose and t.trace and t.trace.traceback then
      io.write("  ", (t.trace.traceback:gsub("^\n", ""):gsub("\n", "\n  ")), "\n")
    end
    io.write("\n")
  end

  handler.suiteEnd = function()
    for _, t in ipairs(handler.failures) do show("FAIL", t) end
    for _, t in ipairs(handler.errors) do show("ERROR", t) end
    local line = string.format("%d passed, %d failed", handler.successesCount,
                               handler.failuresCount + handler.errorsCount)
    if handler.pendingsCount > 0 then
      line = line .. string.format(", %d skipped", handler.pendingsCount)
    end
    io.write(line, "\n")
    io.flush()
    return nil, true
  end

  busted.subscribe({ "suite", "end" }, handler.suiteEnd)
  return handler
end
