-- Ghost text drawn by the plugin (Neovim 0.7-0.11, or native = false): textDocument/inlineCompletion after a
-- pause in typing, shown with extmarks at the cursor, accepted whole, by word or by line, cycled and dismissed.
-- It follows typing that matches the suggestion, and disappears when the cursor moves away, the text changes
-- otherwise, or insert mode ends.
local buffer = require('diffgemma.buffer')
local compat = require('diffgemma.compat')
local status = require('diffgemma.status')
local text = require('diffgemma.text')

local M = {}

M.namespace = vim.api.nvim_create_namespace('diffgemma.ghost')
M.highlight = 'DiffgemmaGhostText'
M.hint_highlight = 'DiffgemmaGhostHint'

local TRIGGER_AUTOMATIC = 2 -- InlineCompletionTriggerKind.Automatic

local debounce_ms = 150
local enabled = true

---@class diffgemma.GhostItem
---@field insert_text string
---@field row integer where the replaced range starts (0-based)
---@field col integer byte column where it starts
---@field command table|nil LSP command to run once the whole item is accepted

---@class diffgemma.GhostState
---@field client_id integer
---@field timer userdata|nil debounce timer
---@field pending table|nil { client, id } of the request in flight
---@field generation integer bumped by every request and dismissal: older answers are dropped
---@field tick integer changedtick the state last looked at
---@field items diffgemma.GhostItem[]|nil
---@field index integer
---@field shown boolean whether ghost text is drawn

---@type table<integer, diffgemma.GhostState>
local states = {}

local function in_insert_mode()
  return vim.api.nvim_get_mode().mode:sub(1, 1) == 'i'
end

local function stop_timer(state)
  if state.timer then
    state.timer:stop()
    state.timer:close()
    state.timer = nil
  end
end

local function cancel_pending(state)
  if state.pending then
    compat.cancel_request(state.pending.client, state.pending.id)
    state.pending = nil
  end
end

local function hide(bufnr, state)
  vim.api.nvim_buf_clear_namespace(bufnr, M.namespace, 0, -1)
  state.shown = false
end

--- Forgets the suggestion and anything on its way.
local function reset(bufnr, state)
  stop_timer(state)
  cancel_pending(state)
  state.generation = state.generation + 1
  state.items = nil
  hide(bufnr, state)
end

--- The current item and the part of it not yet in the buffer, if the text before the cursor still matches it.
---@return diffgemma.GhostItem|nil, string|nil
local function current(state, bufnr)
  local item = state.items and state.items[state.index]
  if not item then
    return nil, nil
  end
  local typed = buffer.text_to_cursor(bufnr, item.row, item.col)
  local rest = typed and text.remaining(item.insert_text, typed)
  if not rest or rest == '' then
    return item, nil
  end
  return item, rest
end

--- Draws the current item at the cursor; returns whether anything is shown.
local function render(bufnr, state)
  hide(bufnr, state)
  local _, rest = current(state, bufnr)
  if not rest then
    return false
  end
  local row, col = buffer.cursor()
  local lines = text.lines(rest)
  local virt_text = { { lines[1], M.highlight } }
  local virt_lines = {}
  for i = 2, #lines do
    table.insert(virt_lines, { { lines[i], M.highlight } })
  end
  if #state.items > 1 then
    local hint = { (' (%d/%d)'):format(state.index, #state.items), M.hint_highlight }
    table.insert(#virt_lines > 0 and virt_lines[#virt_lines] or virt_text, hint)
  end
  local opts = { virt_text = virt_text, hl_mode = 'combine' }
  if #virt_lines > 0 then
    opts.virt_lines = virt_lines
  end
  if compat.inline_virtual_text then
    opts.virt_text_pos = 'inline'
  else
    -- Before 0.10 virtual text cannot push characters aside: overlay the suggestion and redraw the rest of
    -- the line after it.
    local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1]
    table.insert(virt_text, { line:sub(col + 1), 'Normal' })
    opts.virt_text_pos = 'overlay'
  end
  vim.api.nvim_buf_set_extmark(bufnr, M.namespace, row, col, opts)
  state.shown = true
  return true
end

--- Turns the server's items into ghost items; drops items whose range does not end at the cursor.
local function convert(result, client, bufnr)
  local row, col = buffer.cursor()
  local line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1]
  local items = {}
  for _, item in ipairs(result.items or result) do
    local insert_text = type(item.insertText) == 'string' and item.insertText or item.insertText.value
    local start_row, start_col = row, col
    local ends_at_cursor = true
    if item.range then
      start_row = item.range.start.line
      start_col = compat.byte_col(line, item.range.start.character, client.offset_encoding)
      ends_at_cursor = item.range['end'].line == row
        and compat.byte_col(line, item.range['end'].character, client.offset_encoding) == col
        and start_row == row
    end
    if ends_at_cursor then
      table.insert(items, { insert_text = insert_text, row = start_row, col = start_col, command = item.command })
    end
  end
  return items
end

local function request(bufnr)
  local state = states[bufnr]
  if not state or not enabled or not in_insert_mode() or vim.api.nvim_get_current_buf() ~= bufnr then
    return
  end
  local client = vim.lsp.get_client_by_id(state.client_id)
  if not client then
    return
  end
  cancel_pending(state)
  state.generation = state.generation + 1
  local generation = state.generation
  local tick = vim.api.nvim_buf_get_changedtick(bufnr)
  local row, col = buffer.cursor()
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = TRIGGER_AUTOMATIC }
  local ok, id = compat.request(client, 'textDocument/inlineCompletion', params, function(err, result)
    if generation ~= state.generation then
      return -- superseded or dismissed
    end
    state.pending = nil
    if err then
      status.append_log('inline completion failed: ' .. (err.message or vim.inspect(err)))
      return
    end
    local cursor_row, cursor_col = buffer.cursor()
    if
      not result
      or not in_insert_mode()
      or vim.api.nvim_get_current_buf() ~= bufnr
      or vim.api.nvim_buf_get_changedtick(bufnr) ~= tick
      or cursor_row ~= row
      or cursor_col ~= col
    then
      return -- the buffer or cursor moved on; a newer request follows
    end
    state.items = convert(result, client, bufnr)
    state.index = 1
    state.tick = tick
    render(bufnr, state)
  end, bufnr)
  if ok then
    state.pending = { client = client, id = id }
  end
end

local function schedule_request(bufnr, state)
  stop_timer(state)
  if not enabled then
    return
  end
  state.timer = vim.loop.new_timer()
  state.timer:start(debounce_ms, 0, vim.schedule_wrap(function()
    stop_timer(state)
    request(bufnr)
  end))
end

local function on_text_changed(bufnr)
  local state = states[bufnr]
  state.tick = vim.api.nvim_buf_get_changedtick(bufnr)
  -- Typing what the suggestion says keeps the rest of it on screen until the next answer.
  render(bufnr, state)
  schedule_request(bufnr, state)
end

local function on_cursor_moved(bufnr)
  local state = states[bufnr]
  if vim.api.nvim_buf_get_changedtick(bufnr) ~= state.tick then
    return -- moved by typing: TextChangedI follows
  end
  reset(bufnr, state)
  schedule_request(bufnr, state)
end

--- Starts ghost text in `bufnr`, served by `client`.
function M.attach(client, bufnr)
  if states[bufnr] then
    reset(bufnr, states[bufnr])
  end
  states[bufnr] = {
    client_id = client.id,
    generation = 0,
    tick = vim.api.nvim_buf_get_changedtick(bufnr),
    index = 1,
    shown = false,
  }
  local group = vim.api.nvim_create_augroup('diffgemma.ghost.' .. bufnr, { clear = true })
  local function on(events, callback, pattern)
    vim.api.nvim_create_autocmd(events, {
      group = group,
      buffer = pattern == nil and bufnr or nil,
      pattern = pattern,
      callback = callback,
    })
  end
  on('InsertEnter', function()
    schedule_request(bufnr, states[bufnr])
  end)
  on('TextChangedI', function()
    on_text_changed(bufnr)
  end)
  on('CursorMovedI', function()
    on_cursor_moved(bufnr)
  end)
  on({ 'InsertLeave', 'BufLeave' }, function()
    reset(bufnr, states[bufnr])
  end)
  on('ModeChanged', function()
    if vim.api.nvim_get_current_buf() == bufnr then
      reset(bufnr, states[bufnr])
    end
  end, 'i:*')
  on({ 'BufUnload' }, function()
    reset(bufnr, states[bufnr])
    states[bufnr] = nil
    vim.api.nvim_del_augroup_by_id(group)
  end)
end

--- Whether a suggestion is drawn in `bufnr`.
function M.visible(bufnr)
  local state = states[bufnr]
  return state ~= nil and state.shown
end

--- Puts the whole suggestion, its next word or its next line in the buffer. Accepting everything that is
--- left runs the item's command (the server counts the acceptance); a partial accept leaves the rest shown.
---@param kind 'all'|'word'|'line'
function M.accept(bufnr, kind)
  local state = states[bufnr]
  local item, rest = current(state, bufnr)
  if not rest then
    return
  end
  local piece = (kind == 'word' and text.next_word(rest)) or (kind == 'line' and text.next_line(rest)) or rest
  -- state.tick stays behind: the CursorMovedI this insertion causes is then taken for typing, not navigation.
  buffer.insert_at_cursor(bufnr, piece)
  if piece ~= rest then
    render(bufnr, state)
    return
  end
  reset(bufnr, state)
  local client = vim.lsp.get_client_by_id(state.client_id)
  if item.command and client then
    compat.request(client, 'workspace/executeCommand', {
      command = item.command.command,
      arguments = item.command.arguments,
    }, function(err)
      if err then
        status.append_log('accept command failed: ' .. (err.message or vim.inspect(err)))
      end
    end, bufnr)
  end
end

--- Shows the next (step 1) or previous (step -1) suggestion.
function M.cycle(bufnr, step)
  local state = states[bufnr]
  if not state.items or #state.items == 0 then
    return
  end
  state.index = (state.index - 1 + step) % #state.items + 1
  render(bufnr, state)
end

--- The model became ready: a buffer in insert mode asks for the suggestion it could not get while loading.
function M.refresh()
  local bufnr = vim.api.nvim_get_current_buf()
  local state = states[bufnr]
  if state and enabled and in_insert_mode() and not state.shown then
    schedule_request(bufnr, state)
  end
end

--- Hides the suggestion until the next edit.
function M.dismiss(bufnr)
  reset(bufnr, states[bufnr])
end

function M.set_debounce(ms)
  debounce_ms = ms
end

function M.set_enabled(flag)
  enabled = flag
  if not flag then
    for bufnr, state in pairs(states) do
      reset(bufnr, state)
    end
  end
end

return M
