-- A remote model (settings.model an http(s) URL), without a server: the remote settings are known to setup(),
-- :checkhealth reports the URL as a remote model (and warns about an API key over http:// to another host), and
-- a remote error that comes and goes is shown once per reason.
local H = dofile(os.getenv('DIFFGEMMA_TEST_HARNESS'))
H.run(function()
  local config = H.config()
  local health = require('diffgemma.health')
  local status = require('diffgemma.status')

  -- The status of a remote server that goes down, comes back and goes down again (what lsp_server sends).
  local notifications = {}
  local notify = vim.notify
  vim.notify = function(message, level)
    table.insert(notifications, { message = message, level = level })
  end
  local url = config.remote_url
  status.set('ready', 'remote ' .. url)
  for _ = 1, 3 do -- reported again at every request while the server is down
    status.set('error', url .. ': connection refused')
  end
  status.set('ready', 'remote ' .. url)
  status.set('error', url .. ': connection refused') -- the same reason again: no second notification
  status.set('error', url .. ': HTTP 401 Unauthorized') -- a new reason while in error: the status only
  status.set('ready', 'remote ' .. url)
  status.set('error', url .. ': HTTP 401 Unauthorized') -- out of "ready" with a reason not shown yet
  status.set('loading', 'loading ' .. url) -- a settings change reloads: errors are news again
  status.set('error', url .. ': HTTP 401 Unauthorized')
  status.set('ready', 'remote ' .. url)
  H.sleep(100) -- the notifications are scheduled
  vim.notify = notify
  H.result.notifications = notifications
  H.result.status_after_recovery = status.current
  H.result.status_log = vim.tbl_map(function(line)
    return line:sub(10) -- without the HH:MM:SS time
  end, status.log)

  -- The model section of :checkhealth for model settings, as (level, message) pairs.
  local tokenizer_dir = vim.fn.tempname()
  vim.fn.mkdir(tokenizer_dir, 'p')
  vim.fn.writefile({ '{}' }, tokenizer_dir .. '/tokenizer.json')
  local key = config.api_key
  local cases = {
    embedded = { {}, nil },
    missing_checkpoint = { { model = '/nowhere/checkpoint' }, nil },
    https_with_key = { { model = 'https://gpu-box:8000/v1', apiKey = key, remoteModel = 'dg' }, nil },
    http_with_key = { { model = 'http://gpu-box:8000/v1', apiKey = key }, nil },
    http_with_env_key = { { model = 'http://gpu-box:8000/v1' }, key },
    http_without_key = { { model = 'http://gpu-box:8000/v1' }, nil },
    http_user_info = { { model = 'http://me:pw@GPU-Box:8000/v1', apiKey = key }, nil },
    localhost = { { model = 'http://localhost:8000/v1', apiKey = key }, nil },
    localhost_upper = { { model = 'HTTP://LOCALHOST:8000/v1', apiKey = key }, nil },
    loopback_ipv4 = { { model = 'http://127.0.0.1:8000/v1', apiKey = key }, nil },
    loopback_ipv6 = { { model = 'http://[::1]:8000/v1', apiKey = key }, nil },
    no_host = { { model = 'http://' }, nil },
    tls_off = { { model = 'https://gpu-box/v1', tlsVerify = false }, nil },
    tokenizer_dir = { { model = 'https://gpu-box/v1', tokenizer = tokenizer_dir }, nil },
    tokenizer_file = { { model = 'https://gpu-box/v1', tokenizer = tokenizer_dir .. '/tokenizer.json' }, nil },
    tokenizer_missing = { { model = 'https://gpu-box/v1', tokenizer = '/nowhere/tokenizer.json' }, nil },
  }
  H.result.reports = {}
  for name, case in pairs(cases) do
    H.result.reports[name] = vim.tbl_map(function(entry)
      return { entry.level, entry.message }
    end, health.model_report(case[1], case[2]))
  end

  -- setup() takes the remote settings (a misspelt one is still an error) and sends them to the server as given.
  local remote_settings = {
    model = 'http://gpu-box:8000/v1',
    apiKey = key,
    remoteModel = 'dg',
    requestTimeout = 2.5,
    tlsVerify = false,
    tokenizer = tokenizer_dir,
  }
  local ok, err = pcall(require('diffgemma').setup, { settings = { remoteModle = 'dg' } })
  H.result.misspelt_error = ok and 'no error' or tostring(err)
  ok, err = pcall(require('diffgemma').setup, { cmd = config.cmd, settings = remote_settings })
  H.result.setup_error = ok and vim.NIL or tostring(err)
  H.result.sent_settings = require('diffgemma.config').settings_for_server(require('diffgemma').config())
  H.result.known_settings = require('diffgemma.config').server_settings

  -- The whole report, with the server command missing (no server starts: no buffer of its filetypes is open).
  vim.cmd('checkhealth diffgemma')
  H.result.health = H.lines(vim.api.nvim_get_current_buf())
end)
