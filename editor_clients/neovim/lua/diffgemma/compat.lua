-- The few places where Neovim 0.7 to 0.12 differ for this plugin, behind one interface.
local M = {}

---@param version string e.g. "0.11"
---@return boolean
function M.has(version)
  return vim.fn.has('nvim-' .. version) == 1
end

-- 0.11 made client methods colon calls (the dot form is deprecated there).
local method_calls = M.has('0.11')

local function call(client, name, ...)
  if method_calls then
    return client[name](client, ...)
  end
  return client[name](...)
end

function M.request(client, method, params, handler, bufnr)
  return call(client, 'request', method, params, handler, bufnr)
end

function M.cancel_request(client, id)
  return call(client, 'cancel_request', id)
end

function M.stop(client)
  return call(client, 'stop')
end

--- Running clients named `name`.
---@param name string
---@return table[]
function M.clients(name)
  local get = vim.lsp.get_clients or vim.lsp.get_active_clients
  local found = {}
  for _, client in ipairs(get()) do
    if client.name == name then
      table.insert(found, client)
    end
  end
  return found
end

--- Byte index in `line` of an LSP `character` offset in `encoding` (utf-8, utf-16 or utf-32), clamped.
---@param line string
---@param character integer
---@param encoding string
---@return integer
function M.byte_col(line, character, encoding)
  if encoding == 'utf-8' then
    return math.min(character, #line)
  end
  local ok, col
  if M.has('0.11') then
    ok, col = pcall(vim.str_byteindex, line, encoding, character, false)
  else
    ok, col = pcall(vim.str_byteindex, line, character, encoding == 'utf-16')
  end
  return ok and col or #line
end

--- Neovim's health-report functions under their 0.10+ names.
function M.health()
  local health = vim.health or require('health')
  return {
    start = health.start or health.report_start,
    ok = health.ok or health.report_ok,
    info = health.info or health.report_info,
    warn = health.warn or health.report_warn,
    error = health.error or health.report_error,
  }
end

--- Whether Neovim has the built-in inline completion client (0.12+).
function M.native_inline_completion()
  return vim.lsp.inline_completion ~= nil
end

--- Whether extmarks can put virtual text between characters (0.10+).
M.inline_virtual_text = M.has('0.10')

return M
