-- :checkhealth diffgemma: Neovim's capabilities, the server command, the model and the running server.
local compat = require('diffgemma.compat')
local server = require('diffgemma.server')
local status = require('diffgemma.status')

local M = {}

-- How to get the server: it is not on PyPI; it installs from a clone of the repository.
local INSTALL_ADVICE = {
  'diffgemma-lsp is not on PyPI: clone the diffgemma-lsp repository and run `make install` in the clone '
    .. '(or `python -m venv .venv && .venv/bin/pip install -e .` there)',
  "then point cmd at it in setup(): cmd = { '/path/to/clone/.venv/bin/diffgemma-lsp', '--stdio' } "
    .. '(or put that .venv/bin on PATH)',
}

-- Long enough for `diffgemma-lsp --version`, which imports torch.
local VERSION_TIMEOUT_MS = 20000

--- `cmd` without --stdio, with --version: the server's version line, or nil and why not.
local function server_version(cmd)
  local version_cmd = vim.tbl_filter(function(arg)
    return arg ~= '--stdio'
  end, cmd)
  table.insert(version_cmd, '--version')
  local output = {}
  local job = vim.fn.jobstart(version_cmd, {
    stdout_buffered = true,
    stderr_buffered = true,
    on_stdout = function(_, data)
      vim.list_extend(output, data)
    end,
    on_stderr = function(_, data)
      vim.list_extend(output, data)
    end,
  })
  if job <= 0 then
    return nil, 'could not run ' .. table.concat(version_cmd, ' ')
  end
  local code = vim.fn.jobwait({ job }, VERSION_TIMEOUT_MS)[1]
  local text = vim.trim(table.concat(output, '\n'))
  if code == -1 then
    vim.fn.jobstop(job)
    return nil, ('%s did not answer within %d s'):format(table.concat(version_cmd, ' '), VERSION_TIMEOUT_MS / 1000)
  end
  if code ~= 0 then
    return nil, ('%s exited with %d: %s'):format(table.concat(version_cmd, ' '), code, text)
  end
  return text
end

function M.check()
  local health = compat.health()
  local config = require('diffgemma').config()

  health.start('diffgemma: Neovim')
  local version = vim.version()
  health.info(('Neovim %d.%d.%d'):format(version.major, version.minor, version.patch))
  if not compat.has('0.7') then
    health.error('Neovim 0.7 or newer is required')
  end
  if compat.native_inline_completion() then
    health.ok('vim.lsp.inline_completion is available (Neovim 0.12+): suggestions can be drawn natively')
  else
    health.info('no vim.lsp.inline_completion (Neovim < 0.12): the plugin draws ghost text with extmarks')
    health.info(compat.inline_virtual_text and 'inline virtual text is available (Neovim 0.10+)'
      or 'no inline virtual text (Neovim < 0.10): the first line of a suggestion overlays the line')
  end
  health.info(compat.has('0.11') and 'server registered with vim.lsp.config and vim.lsp.enable'
    or compat.has('0.8') and 'server started with vim.lsp.start from a FileType autocommand'
    or 'server started with vim.lsp.start_client from a FileType autocommand')

  health.start('diffgemma: setup')
  if not config then
    health.error("setup() was not called", { "Add require('diffgemma').setup() to your configuration" })
    return
  end
  health.ok(('suggestions drawn by %s; completions %s'):format(
    require('diffgemma').mode() == 'native' and 'vim.lsp.inline_completion' or 'the plugin (extmarks)',
    require('diffgemma').is_enabled() and 'enabled' or 'disabled (:Diffgemma enable)'))
  health.info('filetypes: ' .. table.concat(config.filetypes, ', '))

  health.start('diffgemma: server')
  local cmd = server.cmd()
  local problem = type(cmd) == 'table' and server.cmd_problem(cmd)
  if type(cmd) ~= 'table' then
    health.info('cmd is a function (set with vim.lsp.config): not checked')
  elseif not problem then
    health.ok(('%s found: %s'):format(cmd[1], vim.fn.exepath(cmd[1])))
    local server_version_text, version_problem = server_version(cmd)
    if server_version_text then
      health.ok(server_version_text)
    else
      health.error(version_problem)
    end
  else
    health.error(('the server command cannot run: %s'):format(problem), INSTALL_ADVICE)
  end

  health.start('diffgemma: model')
  local model = config.settings.model or 'embedded'
  local model_path = vim.fn.expand(model)
  if model == 'embedded' then
    health.ok('the embedded model packaged with diffgemma-lsp')
  elseif vim.fn.filereadable(model_path .. '/config.json') == 1 then
    health.ok('checkpoint ' .. model_path)
  else
    health.error(('settings.model %q is not a checkpoint directory (no config.json)'):format(model))
  end

  health.start('diffgemma: running server')
  local clients = server.clients()
  if #clients == 0 then
    if problem then
      health.error(('the server is not running: it cannot start, %s (see above)'):format(problem))
    elseif status.current.state == 'error' then
      health.error('the server is not running: ' .. (status.current.message or 'it failed'),
        { ':Diffgemma log shows what the server said', ':Diffgemma restart' })
    else
      health.info('the server is not running (it starts with the first buffer of a configured filetype)')
    end
    return
  end
  local current = status.current
  local line = ('server %s%s'):format(current.state, current.message and (': ' .. current.message) or '')
  if current.state == 'error' or current.state == 'stopped' then
    health.error(line, { ':Diffgemma log shows what the server said', ':Diffgemma restart' })
  elseif current.state == 'loading' then
    health.info(line)
  else
    health.ok(line)
  end
  local capabilities = clients[1].server_capabilities or {}
  if capabilities.inlineCompletionProvider then
    health.ok('the server offers textDocument/inlineCompletion')
  else
    health.error('the server does not offer textDocument/inlineCompletion')
  end
end

return M
