-- diffgemma.nvim: inline code completion (ghost text) from diffgemma-lsp. See :help diffgemma.
local compat = require('diffgemma.compat')
local config_module = require('diffgemma.config')
local server = require('diffgemma.server')
local status = require('diffgemma.status')

local M = {}

local config -- resolved options, nil until setup()
local backend -- diffgemma.native (0.12+) or diffgemma.ghost
local enabled = true

local function require_setup()
  if not config then
    error("diffgemma: call require('diffgemma').setup() first", 3)
  end
end

--- Runs `action(bufnr)` soon (keymaps are expressions: the buffer cannot change while they run) if a
--- suggestion is shown in the current buffer; returns whether one was.
local function when_visible(action)
  require_setup()
  local bufnr = vim.api.nvim_get_current_buf()
  if not enabled or not backend.visible(bufnr) then
    return false
  end
  vim.schedule(function()
    action(bufnr)
  end)
  return true
end

--- Accepts the whole suggestion. Returns false (doing nothing) when none is shown.
function M.accept()
  return when_visible(function(bufnr)
    backend.accept(bufnr, 'all')
  end)
end

--- Accepts the suggestion's next word.
function M.accept_word()
  return when_visible(function(bufnr)
    backend.accept(bufnr, 'word')
  end)
end

--- Accepts the rest of the suggestion's current line (or, at its end, the next line).
function M.accept_line()
  return when_visible(function(bufnr)
    backend.accept(bufnr, 'line')
  end)
end

--- Shows the next suggestion (with `candidates` above 1).
function M.next()
  return when_visible(function(bufnr)
    backend.cycle(bufnr, 1)
  end)
end

--- Shows the previous suggestion.
function M.prev()
  return when_visible(function(bufnr)
    backend.cycle(bufnr, -1)
  end)
end

--- Hides the suggestion until the next edit.
function M.dismiss()
  return when_visible(function(bufnr)
    backend.dismiss(bufnr)
  end)
end

local ACTIONS = {
  accept = { M.accept, 'Accept the diffgemma suggestion' },
  accept_word = { M.accept_word, 'Accept the next word of the diffgemma suggestion' },
  accept_line = { M.accept_line, 'Accept the next line of the diffgemma suggestion' },
  next = { M.next, 'Next diffgemma suggestion' },
  prev = { M.prev, 'Previous diffgemma suggestion' },
  dismiss = { M.dismiss, 'Dismiss the diffgemma suggestion' },
}

local function set_keymaps(bufnr)
  for action, lhs in pairs(config.keymaps) do
    if lhs then
      local run, description = ACTIONS[action][1], ACTIONS[action][2]
      vim.keymap.set('i', lhs, function()
        -- Without a suggestion the key does what it does by default.
        return run() and '' or lhs
      end, { buffer = bufnr, expr = true, desc = description })
    end
  end
end

local function on_attach(client, bufnr)
  backend.attach(client, bufnr)
  set_keymaps(bufnr)
end

-- The model is ready (after loading, or a restart): a buffer in insert mode gets the suggestion that its
-- request during the load could not (the server answers nothing then) without another keystroke.
status.subscribe(function(state, previous)
  if backend and enabled and state == 'ready' and previous ~= 'ready' and previous ~= 'busy' then
    backend.refresh()
  end
end)

local function define_highlights()
  vim.cmd('highlight default link DiffgemmaGhostText Comment')
  vim.cmd('highlight default link DiffgemmaGhostHint NonText')
end

--- Registers diffgemma-lsp for the configured filetypes and picks how suggestions are drawn.
---@param opts table|nil see :help diffgemma-setup
function M.setup(opts)
  config = config_module.resolve(opts)
  enabled = config.enabled
  if config.native and compat.native_inline_completion() then
    backend = require('diffgemma.native')
  else
    backend = require('diffgemma.ghost')
    backend.set_debounce(config.debounce_ms)
    define_highlights()
    vim.api.nvim_create_autocmd('ColorScheme', {
      group = vim.api.nvim_create_augroup('diffgemma.highlights', { clear = true }),
      callback = define_highlights,
    })
  end
  backend.set_enabled(enabled)
  server.register(config, on_attach)
end

--- 'native' (vim.lsp.inline_completion) or 'ghost' (the plugin's extmarks); nil before setup().
function M.mode()
  if not backend then
    return nil
  end
  return backend == require('diffgemma.native') and 'native' or 'ghost'
end

function M.is_enabled()
  return enabled
end

function M.enable()
  require_setup()
  enabled = true
  backend.set_enabled(true)
end

function M.disable()
  require_setup()
  enabled = false
  backend.set_enabled(false)
end

function M.toggle()
  if enabled then
    M.disable()
  else
    M.enable()
  end
end

function M.restart()
  require_setup()
  server.restart()
end

--- The server's state: { state = 'loading'|'ready'|'busy'|'error'|'stopped', message = string|nil }.
function M.status()
  return status.current
end

--- A short status for a statusline ('' while no server runs).
function M.statusline()
  return status.statusline()
end

--- The resolved options (for :checkhealth); nil before setup().
function M.config()
  return config
end

return M
