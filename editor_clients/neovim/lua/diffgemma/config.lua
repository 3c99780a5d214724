-- Options of require('diffgemma').setup() and their defaults (documented in doc/diffgemma.txt).
local M = {}

M.defaults = {
  -- The language server; `--stdio` makes it talk LSP over stdin/stdout.
  cmd = { 'diffgemma-lsp', '--stdio' },
  -- Buffers of these filetypes get the server (the languages it parses; others work line by line).
  filetypes = {
    'python', 'javascript', 'javascriptreact', 'typescript', 'typescriptreact',
    'go', 'rust', 'java', 'c', 'cpp',
  },
  -- Server settings in its camelCase names (see :help diffgemma-settings), e.g. { model = '/path/to/ckpt' }
  -- or { model = 'https://gpu-box:8000/v1' } (:help diffgemma-remote).
  settings = {},
  -- Completions on when Neovim starts (:Diffgemma toggle switches them).
  enabled = true,
  -- Neovim 0.12+: use the built-in vim.lsp.inline_completion. false: the plugin's own ghost text everywhere.
  native = true,
  -- The plugin's own ghost text (Neovim < 0.12, or native = false): wait this long after typing.
  debounce_ms = 150,
  -- Insert-mode keys (false to leave a key alone). Without a suggestion, a key does what it did before.
  keymaps = {
    accept = '<Tab>',
    accept_word = '<M-Right>',
    accept_line = '<M-Down>',
    next = '<M-]>',
    prev = '<M-[>',
    dismiss = '<C-]>',
  },
}

-- The server's settings (lsp_server/settings.py), camelCase on the wire. The last five are for a remote model
-- (model = a server's base URL, e.g. 'http://gpu-box:8000/v1').
M.server_settings = {
  'model', 'device', 'dtype', 'engineMode', 'compile', 'quantization',
  'canvasLength', 'maxPromptTokens', 'maxNewTokens', 'denoisingSteps',
  'candidates', 'documentCandidates', 'rerank', 'seed', 'threads', 'enabledLanguages', 'cacheSize',
  'canvasNotifications',
  'apiKey', 'remoteModel', 'requestTimeout', 'tlsVerify', 'tokenizer',
}

-- Sent unless the user sets them: Neovim draws no denoising preview, so the server need not stream canvases.
M.client_server_settings = { canvasNotifications = false }

local function fail(message)
  error('diffgemma.setup: ' .. message, 3)
end

local function check_type(name, value, expected)
  if type(value) ~= expected then
    fail(('%s must be a %s, got %s'):format(name, expected, vim.inspect(value)))
  end
end

local function check_string_list(name, value)
  check_type(name, value, 'table')
  for _, item in ipairs(value) do
    check_type(name .. ' entries', item, 'string')
  end
end

--- The defaults with `opts` applied; raises a clear error for a misspelt or mistyped option.
---@param opts table|nil
---@return table
function M.resolve(opts)
  opts = opts or {}
  check_type('the options', opts, 'table')
  for key in pairs(opts) do
    if M.defaults[key] == nil then
      fail(('unknown option %q; known options: %s'):format(key, table.concat(vim.tbl_keys(M.defaults), ', ')))
    end
  end
  local config = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts)
  -- Lists replace the default, they are not merged index by index.
  config.cmd = opts.cmd or M.defaults.cmd
  config.filetypes = opts.filetypes or M.defaults.filetypes
  check_string_list('cmd', config.cmd)
  if #config.cmd == 0 then
    fail('cmd must name the server executable')
  end
  check_string_list('filetypes', config.filetypes)
  check_type('settings', config.settings, 'table')
  for key in pairs(config.settings) do
    if not vim.tbl_contains(M.server_settings, key) then
      fail(('unknown server setting %q; known settings: %s'):format(key, table.concat(M.server_settings, ', ')))
    end
  end
  check_type('enabled', config.enabled, 'boolean')
  check_type('native', config.native, 'boolean')
  check_type('debounce_ms', config.debounce_ms, 'number')
  check_type('keymaps', config.keymaps, 'table')
  for action, key in pairs(config.keymaps) do
    if M.defaults.keymaps[action] == nil then
      fail(('unknown keymap %q; known keymaps: %s'):format(action, table.concat(vim.tbl_keys(M.defaults.keymaps), ', ')))
    end
    if key ~= false and type(key) ~= 'string' then
      fail(('keymaps.%s must be a key (string) or false, got %s'):format(action, vim.inspect(key)))
    end
  end
  return config
end

--- The settings sent to the server: the user's over the client defaults.
---@param config table resolved config
---@return table
function M.settings_for_server(config)
  return vim.tbl_extend('force', M.client_server_settings, config.settings)
end

return M
