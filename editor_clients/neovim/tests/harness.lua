-- Drives headless Neovim through a test scenario for tests/test_neovim_plugin.py: the scenario runs as a
-- coroutine that waits (polling from timers, so Neovim keeps processing input, LSP messages and autocommands)
-- for conditions, and ends by writing H.result as JSON to $DIFFGEMMA_TEST_RESULT and quitting.
local H = {}

H.result = {}
H.responses = {} -- results of textDocument/inlineCompletion, in arrival order
H.response_states = {} -- the plugin's server state when each of them arrived

local result_path = assert(os.getenv('DIFFGEMMA_TEST_RESULT'), 'DIFFGEMMA_TEST_RESULT is not set')
local scenario

local function now_ms()
  return vim.loop.hrtime() / 1e6
end

local function finish(err)
  local file = assert(io.open(result_path, 'w'))
  file:write(vim.json.encode({ error = err or vim.NIL, result = H.result }))
  file:close()
  vim.cmd('qall!')
end

local function step(...)
  local ok, err = coroutine.resume(scenario, ...)
  if not ok then
    finish(debug.traceback(scenario, tostring(err)))
  elseif coroutine.status(scenario) == 'dead' then
    finish(nil)
  end
end

--- Runs `fn` as the scenario.
function H.run(fn)
  scenario = coroutine.create(fn)
  vim.schedule(step)
end

--- Waits until `condition()` returns a true value (returned), polling every 20 ms; fails after `timeout_ms`.
function H.wait(condition, timeout_ms, what)
  local deadline = now_ms() + timeout_ms
  local function poll()
    local ok, value = pcall(condition)
    if ok and value then
      step(value)
    elseif now_ms() > deadline then
      step(nil, ('timed out after %d ms waiting for %s%s'):format(timeout_ms, what, ok and '' or (': ' .. tostring(value))))
    else
      vim.defer_fn(poll, 20)
    end
  end
  vim.defer_fn(poll, 0)
  local value, err = coroutine.yield()
  if err then
    error(err, 0)
  end
  return value
end

function H.sleep(ms)
  local until_ms = now_ms() + ms
  H.wait(function()
    return now_ms() >= until_ms
  end, ms + 1000, 'time to pass')
end

--- Types `keys` as the user would (mappings apply).
function H.feed(keys)
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(keys, true, false, true), 'mt', false)
end

function H.client()
  local get = vim.lsp.get_clients or vim.lsp.get_active_clients
  for _, client in ipairs(get()) do
    if client.name == 'diffgemma' then
      return client
    end
  end
end

--- Records every textDocument/inlineCompletion result `client` receives from the server in H.responses, as
--- the server sent it (before the plugin or Neovim looks at it).
function H.record_inline_completions(client)
  local rpc = client.rpc
  local original = rpc.request
  rpc.request = function(method, params, callback, ...)
    if method == 'textDocument/inlineCompletion' and callback then
      local inner = callback
      callback = function(err, result, ...)
        if result ~= nil then
          table.insert(H.responses, vim.deepcopy(result))
          table.insert(H.response_states, require('diffgemma').status().state)
        end
        return inner(err, result, ...)
      end
    end
    return original(method, params, callback, ...)
  end
end

--- The text on the screen where line `row` (1-based) of the current window is drawn (trailing blanks cut).
function H.screen_line(row)
  vim.cmd('redraw')
  local position = vim.fn.screenpos(0, row, 1)
  local chars = {}
  for col = position.col, vim.o.columns do
    table.insert(chars, vim.fn.screenstring(position.row, col))
  end
  return (table.concat(chars):gsub('%s+$', ''))
end

--- The messages shown so far (:messages).
function H.messages()
  return vim.api.nvim_exec('messages', true)
end

--- Records the state of every `User DiffgemmaStatus` autocommand in H.result.status_events.
function H.record_status_events()
  H.result.status_events = {}
  vim.api.nvim_create_autocmd('User', {
    pattern = 'DiffgemmaStatus',
    callback = function(args)
      local data = args.data -- 0.8+
      table.insert(H.result.status_events, data and data.state or require('diffgemma').status().state)
    end,
  })
end

--- The ghost text drawn in `bufnr` by the active mode (the plugin's extmarks, or vim.lsp.inline_completion's):
--- { row, col, lines = suggestion text per screen line, hint = the "(i/n)" text, position }, or nil.
function H.ghost(bufnr)
  local native = require('diffgemma').mode() == 'native'
  local namespace = vim.api.nvim_get_namespaces()[native and 'nvim.lsp.inline_completion' or 'diffgemma.ghost']
  local highlight = native and 'ComplHint' or 'DiffgemmaGhostText'
  local hint_highlight = native and 'ComplHintMore' or 'DiffgemmaGhostHint'
  if not namespace then
    return nil
  end
  local marks = vim.api.nvim_buf_get_extmarks(bufnr, namespace, 0, -1, { details = true })
  if #marks == 0 then
    return nil
  end
  local row, col, details = marks[1][2], marks[1][3], marks[1][4]
  local hint = {}
  local function text_of(chunks)
    local pieces = {}
    for _, chunk in ipairs(chunks or {}) do
      if chunk[2] == highlight then
        table.insert(pieces, chunk[1])
      elseif chunk[2] == hint_highlight then
        table.insert(hint, chunk[1])
      end
    end
    return table.concat(pieces)
  end
  local lines = { text_of(details.virt_text) }
  for _, line in ipairs(details.virt_lines or {}) do
    table.insert(lines, text_of(line))
  end
  return { row = row, col = col, lines = lines, hint = table.concat(hint), position = details.virt_text_pos }
end

--- Waits for ghost text different from `previous` (any ghost text when nil) and returns it.
function H.wait_for_ghost(bufnr, previous, what, timeout_ms)
  return H.wait(function()
    local ghost = H.ghost(bufnr)
    return ghost and not vim.deep_equal(ghost, previous) and ghost
  end, timeout_ms or 30000, what or 'ghost text')
end

function H.wait_until_no_ghost(bufnr, what)
  H.wait(function()
    return H.ghost(bufnr) == nil
  end, 5000, what)
end

--- The items of the newest non-empty textDocument/inlineCompletion answer.
function H.latest_items()
  for i = #H.responses, 1, -1 do
    local items = H.responses[i] and (H.responses[i].items or H.responses[i])
    if items and #items > 0 then
      return items
    end
  end
end

--- Line `row` (1-based) of `bufnr`.
function H.line(bufnr, row)
  return vim.api.nvim_buf_get_lines(bufnr, row - 1, row, false)[1]
end

--- Waits until line `row` differs from `previous` and returns it.
function H.wait_for_line_change(bufnr, row, previous, what)
  return H.wait(function()
    local line = H.line(bufnr, row)
    return line ~= previous and line
  end, 5000, what)
end

--- Waits until the server has counted `count` accepted suggestions.
function H.wait_for_acceptances(client, bufnr, count)
  return H.wait(function()
    return H.stats(client, bufnr).acceptances >= count
  end, 5000, count .. ' acceptance(s) to reach the server')
end

function H.lines(bufnr)
  return vim.api.nvim_buf_get_lines(bufnr, 0, -1, false)
end

--- The server's counters (diffgemma/stats).
function H.stats(client, bufnr)
  local response
  if vim.fn.has('nvim-0.11') == 1 then
    response = client:request_sync('diffgemma/stats', {}, 5000, bufnr)
  else
    response = client.request_sync('diffgemma/stats', {}, 5000, bufnr)
  end
  assert(response and response.result, 'diffgemma/stats failed: ' .. vim.inspect(response))
  return response.result
end

--- The test's settings from $DIFFGEMMA_TEST_CONFIG: { cmd, settings, file }.
function H.config()
  local encoded = assert(os.getenv('DIFFGEMMA_TEST_CONFIG'), 'DIFFGEMMA_TEST_CONFIG is not set')
  return vim.json.decode(encoded)
end

--- setup() with the test's server command and settings (plus `options`), opens the test file, waits for the
--- model, and starts recording the server's inline completion answers. Returns the buffer and the client.
function H.start(options)
  local config = H.config()
  local setup = vim.tbl_extend('force', { cmd = config.cmd, settings = config.settings }, options or {})
  require('diffgemma').setup(setup)
  vim.cmd('edit ' .. vim.fn.fnameescape(config.file))
  local bufnr = vim.api.nvim_get_current_buf()
  H.wait(function()
    return require('diffgemma').status().state == 'ready'
  end, 90000, 'the server to load the model')
  local client = H.wait(H.client, 5000, 'the diffgemma client')
  H.record_inline_completions(client)
  return bufnr, client
end

--- Moves to the end of line `row` (1-based) and enters insert mode there.
function H.insert_at_end_of_line(row)
  vim.api.nvim_win_set_cursor(0, { row, 0 })
  H.feed('A')
  H.wait(function()
    return vim.api.nvim_get_mode().mode == 'i'
  end, 5000, 'insert mode')
end

return H
