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

--- Records a new state, tells the user about a new error, and fires `User DiffgemmaStatus`.
---@param state string loading|ready|busy|error|stopped
---@param message string|nil
function M.set(state, message)
  local previous = M.current.state
  M.current = { state = state, message = message }
  if state ~= 'busy' then
    M.append_log(('status: %s%s'):format(state, message and message ~= '' and (' (' .. message .. ')') or ''))
  end
  if state == 'error' and previous ~= 'error' then
    vim.notify('diffgemma: ' .. (message or 'the server reported an error'), vim.log.levels.ERROR)
  end
  vim.api.nvim_exec_autocmds('User', { pattern = 'DiffgemmaStatus', modeline = false })
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
