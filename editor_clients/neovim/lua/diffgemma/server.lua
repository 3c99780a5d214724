-- Registers diffgemma-lsp with Neovim's LSP client: vim.lsp.config/vim.lsp.enable on 0.11+, a FileType
-- autocommand with vim.lsp.start on 0.8-0.10 and vim.lsp.start_client on 0.7. One server serves every buffer
-- and project (no root directory), so the model is loaded once.
local compat = require('diffgemma.compat')
local config_module = require('diffgemma.config')
local status = require('diffgemma.status')

local M = {}

M.NAME = 'diffgemma'

local client_config -- built by register()
local filetypes = {}
local legacy_client_id -- 0.7: the one client started with start_client

local function capabilities()
  local result = vim.lsp.protocol.make_client_capabilities()
  -- Where the plugin draws ghost text itself (before 0.12) it is a client with inline completion; saying so
  -- keeps the server from also offering each suggestion in the completion menu.
  result.textDocument.inlineCompletion = result.textDocument.inlineCompletion or { dynamicRegistration = false }
  return result
end

--- Why `cmd` cannot be started (its program is missing or not executable), or nil when it can.
---@param cmd string[]
---@return string|nil
function M.cmd_problem(cmd)
  local program = cmd[1]
  if vim.fn.executable(program) == 1 then
    return nil
  end
  local path = vim.fn.expand(program)
  if program:sub(1, 1) == '~' and vim.fn.executable(path) == 1 then
    return ('%s starts with "~", which is not expanded: use vim.fn.expand() in cmd'):format(program)
  end
  if vim.fn.filereadable(path) == 1 or vim.fn.isdirectory(path) == 1 then
    return ('%s is not executable'):format(program)
  end
  if program:find('/', 1, true) then
    return ('%s is missing (no such file)'):format(program)
  end
  return ('%s is missing (not found on PATH)'):format(program)
end

local function command_line(cmd)
  return table.concat(cmd, ' ')
end

--- The command the server is started with: on 0.11+ what vim.lsp.config holds (lsp/diffgemma.lua may change it).
---@return string[]|function
function M.cmd()
  local cmd = compat.has('0.11') and vim.lsp.config[M.NAME] and vim.lsp.config[M.NAME].cmd
  return cmd or client_config.cmd
end

--- Reports that the server cannot start (status "error", shown once with vim.notify); returns whether it can.
local function check_cmd(cmd)
  if type(cmd) ~= 'table' then
    return true -- a function (vim.lsp.config): it starts the server its own way
  end
  local problem = M.cmd_problem(cmd)
  if problem then
    status.set('error', ('cannot start the server `%s`: %s. Set cmd in setup() to the diffgemma-lsp of your '
      .. 'clone (.venv/bin/diffgemma-lsp); see :checkhealth diffgemma'):format(command_line(cmd), problem))
  end
  return problem == nil
end

local initialized = {} ---@type table<integer, true> clients whose server answered initialize

local function build_client_config(config, on_attach)
  return {
    name = M.NAME,
    cmd = config.cmd,
    init_options = config_module.settings_for_server(config),
    capabilities = capabilities(),
    handlers = status.handlers(),
    on_init = function(client)
      initialized[client.id] = true
    end,
    on_attach = on_attach,
    on_exit = function(code, signal, client_id)
      legacy_client_id = nil
      local how = signal ~= 0 and ('signal ' .. signal) or ('code ' .. code)
      if client_id and not initialized[client_id] then
        -- Not a language server, or one that fails at startup: stopping quietly would leave the user guessing.
        status.set('error', ('the server `%s` exited (%s) before it initialized: is cmd diffgemma-lsp? '
          .. ':Diffgemma log and :checkhealth diffgemma'):format(command_line(config.cmd), how))
        return
      end
      if client_id then
        initialized[client_id] = nil
      end
      status.set('stopped', ('the server exited (%s)'):format(how))
    end,
  }
end

--- Starts the server if needed and attaches it to `bufnr`.
---@param bufnr integer
function M.attach(bufnr)
  if not check_cmd(M.cmd()) then
    return
  end
  if compat.has('0.11') then
    vim.lsp.start(vim.lsp.config[M.NAME], { bufnr = bufnr })
  elseif compat.has('0.8') then
    vim.lsp.start(client_config, { bufnr = bufnr })
  else
    if not legacy_client_id or not vim.lsp.get_client_by_id(legacy_client_id) then
      legacy_client_id = vim.lsp.start_client(client_config)
      if not legacy_client_id then
        status.set('error', 'could not start ' .. command_line(client_config.cmd))
        return
      end
    end
    vim.lsp.buf_attach_client(bufnr, legacy_client_id)
  end
end

local function is_file_buffer(bufnr)
  return vim.bo[bufnr].buftype == '' and vim.tbl_contains(filetypes, vim.bo[bufnr].filetype)
end

--- Registers the server for `config.filetypes`; `on_attach(client, bufnr)` runs for every attached buffer.
---@param config table resolved config
---@param on_attach fun(client: table, bufnr: integer)
function M.register(config, on_attach)
  client_config = build_client_config(config, on_attach)
  filetypes = config.filetypes
  local group = vim.api.nvim_create_augroup('diffgemma.server', { clear = true })
  if compat.has('0.11') then
    vim.lsp.config(M.NAME, vim.tbl_extend('force', client_config, { filetypes = config.filetypes }))
    vim.lsp.enable(M.NAME)
    -- vim.lsp.enable skips a command that is not executable without a word (it only logs): say so.
    vim.api.nvim_create_autocmd('FileType', {
      group = group,
      pattern = config.filetypes,
      callback = function(args)
        if is_file_buffer(args.buf) then
          check_cmd(M.cmd())
        end
      end,
    })
    for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
      if vim.api.nvim_buf_is_loaded(bufnr) and is_file_buffer(bufnr) then
        check_cmd(M.cmd())
        break
      end
    end
    return
  end
  vim.api.nvim_create_autocmd('FileType', {
    group = group,
    pattern = config.filetypes,
    callback = function(args)
      if is_file_buffer(args.buf) then
        M.attach(args.buf)
      end
    end,
  })
  -- Buffers opened before setup() (a lazily loaded plugin).
  for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(bufnr) and is_file_buffer(bufnr) then
      M.attach(bufnr)
    end
  end
end

--- The running diffgemma clients.
function M.clients()
  return compat.clients(M.NAME)
end

--- Stops the server and starts it again for the buffers it served.
function M.restart()
  local buffers = {}
  for _, client in ipairs(M.clients()) do
    for bufnr in pairs(client.attached_buffers) do
      table.insert(buffers, bufnr)
    end
    compat.stop(client)
  end
  local stopped = vim.wait(5000, function()
    return #M.clients() == 0
  end, 50)
  if not stopped then
    vim.notify('diffgemma: the server did not stop within 5 s; not restarted', vim.log.levels.ERROR)
    return
  end
  for _, bufnr in ipairs(buffers) do
    if vim.api.nvim_buf_is_valid(bufnr) then
      M.attach(bufnr)
    end
  end
end

return M
