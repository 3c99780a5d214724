-- The server's state (diffgemma/status) and its log (window/logMessage), for the statusline, :Diffgemma status,
-- :Diffgemma log and :checkhealth.
local M = {}

-- Messages kept for :Diffgemma log.
local LOG_LINES = 500

M.current = { state = 'stopped', message = 'the server is not running' }
M.log = {}

function M.append_log(line)
  table.insert(M.log, os.date('%H:%M:%S ') .. line)
  if #M.log > LOG_LINES then
    table.remove(M.log, 1)
  end
end

M.listeners = {} ---@type fun(state: string, previous: string)[]

--- Calls `callback(state, previous)` after every change of state (outside fast events).
function M.subscribe(callback)
  table.insert(M.listeners, callback)
end

-- The last error shown with vim.notify. A remote model's error comes and goes with the remote server: the same
-- reason again after a "ready" only changes the status. A new server or model load ("stopped", "loading") forgets it.
local notified_error

local function announce(state, message, previous)
  if state == 'stopped' or state == 'loading' then
    notified_error = nil
  elseif state == 'error' and previous ~= 'error' and message ~= notified_error then
    notified_error = message
    -- Soon, not now: an error message inside a command (the :edit whose FileType found no server to start)
    -- would make that command fail.
    vim.schedule(function()
      vim.notify('diffgemma: ' .. (message or 'the server reported an error'), vim.log.levels.ERROR)
    end)
  end
  for _, listener in ipairs(M.listeners) do
    local ok, err = pcall(listener, state, previous)
    if not ok then
      M.append_log('status listener failed: ' .. tostring(err))
    end
  end
  local opts = { pattern = 'DiffgemmaStatus', modeline = false }
  if vim.fn.has('nvim-0.8') == 1 then -- 0.7 has no autocommand data
    opts.data = { state = state, message = message, previous = previous }
  end
  vim.api.nvim_exec_autocmds('User', opts)
end

--- Records a new state, tells the user about a new error, and fires `User DiffgemmaStatus` (on 0.8+ with
--- data = { state, message, previous }). From a fast event (the server process exiting) the notification,
--- the listeners and the autocommand run soon after, with vim.schedule: the API is not allowed there.
---@param state string loading|ready|busy|error|stopped
---@param message string|nil
function M.set(state, message)
  local previous, previous_message = M.current.state, M.current.message
  M.current = { state = state, message = message }
  -- A remote server that is down is reported again at every request: each state and message is logged once.
  if state ~= 'busy' and not (state == previous and message == previous_message) then
    M.append_log(('status: %s%s'):format(state, message and message ~= '' and (' (' .. message .. ')') or ''))
  end
  if vim.in_fast_event() then
    vim.schedule(function()
      announce(state, message, previous)
    end)
  else
    announce(state, message, previous)
  end
end

local LOG_TYPES = { 'error', 'warning', 'info', 'log', 'debug' }

--- LSP handlers for the client: the custom status notification and the server's log messages.
function M.handlers()
  return {
    ['diffgemma/status'] = function(_, params)
      M.set(params.state, params.message)
    end,
    ['window/logMessage'] = function(err, params, ctx, handler_config)
      M.append_log(('%s: %s'):format(LOG_TYPES[params.type] or 'log', params.message))
      return vim.lsp.handlers['window/logMessage'](err, params, ctx, handler_config)
    end,
  }
end

--- A short text for a statusline: '' while no server runs.
---@return string
function M.statusline()
  local state = M.current.state
  if state == 'stopped' then
    return ''
  end
  return 'diffgemma: ' .. state
end

return M
