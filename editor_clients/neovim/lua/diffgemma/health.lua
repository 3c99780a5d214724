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

--- A remote model: `model` an http(s) URL (lsp_server/settings.py's is_remote_model: the scheme decides).
--- Returns the scheme and the host (lower-case, without user info, port or IPv6 brackets; '' when missing), or nil.
---@param model string
---@return string|nil scheme
---@return string|nil host
function M.remote_model(model)
  local scheme = model:match('^%s*(%a[%w+.-]*):')
  scheme = scheme and scheme:lower()
  if scheme ~= 'http' and scheme ~= 'https' then
    return nil
  end
  local authority = (model:match('^%s*[^:]+://([^/?#]*)') or ''):gsub('^.*@', '')
  local host = authority:match('^%[([^%]]*)%]') or authority:match('^[^:]*')
  return scheme, host:lower()
end

--- Whether `host` is this machine (traffic to it never leaves it).
---@param host string
---@return boolean
function M.is_loopback(host)
  return host == 'localhost' or host:match('%.localhost$') ~= nil or host:match('^127%.%d+%.%d+%.%d+$') ~= nil
    or host == '::1' or host == '0:0:0:0:0:0:0:1' or host:match('^::ffff:127%.%d+%.%d+%.%d+$') ~= nil
end

local function text_setting(value)
  return type(value) == 'string' and vim.trim(value) ~= '' and value or nil
end

--- What :checkhealth says about the model settings, as { level = 'ok'|'info'|'warn'|'error', message, advice }
--- entries. `env_key` is $DIFFGEMMA_API_KEY, which the server uses when apiKey is not set. Never shows the key.
---@param settings table the server settings of setup()
---@param env_key string|nil
---@return table[]
function M.model_report(settings, env_key)
  local report = {}
  local function add(level, message, advice)
    table.insert(report, { level = level, message = message, advice = advice })
  end
  local model = text_setting(settings.model) or 'embedded'
  local scheme, host = M.remote_model(model)
  if not scheme then
    local model_path = vim.fn.expand(model)
    if model == 'embedded' then
      add('ok', 'the embedded model packaged with diffgemma-lsp')
    elseif vim.fn.filereadable(model_path .. '/config.json') == 1 then
      add('ok', 'checkpoint ' .. model_path)
    else
      add('error', ('settings.model %q is not a checkpoint directory (no config.json)'):format(model))
    end
    return report
  end
  if host == '' then
    add('error', ('settings.model %q is not a server URL: it names no host'):format(model),
      { "a remote model is a server's base URL, e.g. model = 'http://gpu-box:8000/v1'" })
    return report
  end
  local served = text_setting(settings.remoteModel)
  add('ok', ('remote model at %s (%s)'):format(model,
    served and ('served model %q'):format(served) or 'the only model its /v1/models lists'))
  -- The server takes $DIFFGEMMA_API_KEY when apiKey is null (or not a key it accepts).
  local key_source = text_setting(settings.apiKey) and 'settings.apiKey'
    or text_setting(env_key) and '$DIFFGEMMA_API_KEY' or nil
  add('info', key_source and ('API key: from %s (sent as a bearer token)'):format(key_source)
    or 'no API key (settings.apiKey or $DIFFGEMMA_API_KEY): requests carry no Authorization header')
  if scheme == 'http' and not M.is_loopback(host) then
    if key_source then
      add('warn', ('the API key (%s) travels unencrypted over http:// to %s, another machine'):format(
        key_source, host), { 'use the https:// URL of the server', 'or reach it through an SSH tunnel: '
          .. "ssh -L 8000:localhost:8000 " .. host .. ", then model = 'http://localhost:8000/v1'" })
    else
      add('info', ('%s is http:// to another machine: the code sent for completion travels unencrypted'):format(model))
    end
  end
  if scheme == 'https' and settings.tlsVerify == false then
    add('warn', "tlsVerify = false: the server's certificate is not checked, so anyone on the way can impersonate it",
      { 'add its CA to the bundle in $SSL_CERT_FILE instead' })
  end
  local tokenizer = text_setting(settings.tokenizer)
  if tokenizer then
    local path = vim.fn.expand(tokenizer)
    local file = vim.fn.isdirectory(path) == 1 and (path .. '/tokenizer.json') or path
    if vim.fn.filereadable(file) == 1 then
      add('ok', ('tokenizer %s: prompts are sent as token ids'):format(file))
    else
      add('error', ('settings.tokenizer %q: no tokenizer.json there'):format(tokenizer),
        { "the served model's tokenizer.json, or the checkpoint directory holding it" })
    end
  else
    add('info', 'no settings.tokenizer: prompts are sent as text')
  end
  return report
end

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
  for _, entry in ipairs(M.model_report(config.settings, vim.env.DIFFGEMMA_API_KEY)) do
    if entry.advice then
      health[entry.level](entry.message, entry.advice)
    else
      health[entry.level](entry.message)
    end
  end
  local remote = M.remote_model(text_setting(config.settings.model) or 'embedded') ~= nil
  local advice = { ':Diffgemma log shows what the server said', ':Diffgemma restart' }
  if remote then
    table.insert(advice, 1, ('check the remote server: %s/models should list its models'):format(
      (vim.trim(config.settings.model):gsub('/+$', ''))))
  end

  health.start('diffgemma: running server')
  local clients = server.clients()
  if #clients == 0 then
    if problem then
      health.error(('the server is not running: it cannot start, %s (see above)'):format(problem))
    elseif status.current.state == 'error' then
      health.error('the server is not running: ' .. (status.current.message or 'it failed'), advice)
    else
      health.info('the server is not running (it starts with the first buffer of a configured filetype)')
    end
    return
  end
  local current = status.current
  local line = ('server %s%s'):format(current.state, current.message and (': ' .. current.message) or '')
  if current.state == 'error' or current.state == 'stopped' then
    health.error(line, advice)
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
