-- Neovim 0.12+: the built-in vim.lsp.inline_completion shows and accepts the server's suggestions. This module
-- turns it on for the buffers the server serves and adds what it lacks: accepting by word or by line, and
-- dismissing. It also adjusts what vim.lsp.inline_completion gets and does:
-- * the server's items replace the line from its start to the cursor (insertText repeats that text); 0.12 draws
--   any item with a non-empty range as an overlay, which hides the rest of the line when the cursor is
--   mid-line. Each such item is narrowed, before Neovim sees it, to an empty range at the cursor with only
--   the new text, which Neovim draws inline.
-- * Typing something other than the suggestion drops it (Neovim would keep it on screen, shifted), and asks
--   for a new one.
-- * A partial accept shows the rest of the suggestion at once (Neovim forgets it until it asks again).
-- * When the model becomes ready, a buffer in insert mode gets a suggestion without another keystroke.
local buffer = require('diffgemma.buffer')
local compat = require('diffgemma.compat')
local text = require('diffgemma.text')

local M = {}

-- The namespace vim.lsp.inline_completion draws in.
local NAMESPACE = 'nvim.lsp.inline_completion'
local METHOD = 'textDocument/inlineCompletion'

local enabled = true
local attached = {} ---@type table<integer, integer> bufnr -> client id

---@class diffgemma.NativeItem
---@field row integer where the item's (narrowed) range starts, 0-based
---@field col integer its byte column
---@field text string its insertText

---@class diffgemma.NativeState
---@field items diffgemma.NativeItem[] the plain-text items of the newest answer, as Neovim got them
---@field handler function|nil vim.lsp.inline_completion's handler of the newest request
---@field client_id integer|nil

---@type table<integer, diffgemma.NativeState>
local states = {}

local wrapped = setmetatable({}, { __mode = 'k' }) ---@type table<table, true> clients whose requests are adjusted

local function in_insert_mode()
  return vim.api.nvim_get_mode().mode:sub(1, 1) == 'i'
end

local function state_of(bufnr)
  states[bufnr] = states[bufnr] or { items = {} }
  return states[bufnr]
end

--- The item with an empty range at the end of its range, without the text that range covers, when
--- insertText starts with that text (`line` is the range's line as the server saw it); else the item itself.
local function narrow(item, line, row, encoding)
  local range = item.range
  if type(item.insertText) ~= 'string' or not range or not line then
    return item
  end
  if range.start.line ~= row or range['end'].line ~= row then
    return item
  end
  local start_col = compat.byte_col(line, range.start.character, encoding)
  local end_col = compat.byte_col(line, range['end'].character, encoding)
  local covered = line:sub(start_col + 1, end_col)
  if covered == '' or item.insertText:sub(1, #covered) ~= covered then
    return item
  end
  local narrowed = vim.deepcopy(item)
  narrowed.insertText = item.insertText:sub(#covered + 1)
  narrowed.range = { start = vim.deepcopy(range['end']), ['end'] = vim.deepcopy(range['end']) }
  return narrowed
end

--- The plain-text items of `items` in buffer coordinates (for telling whether typing still matches them);
--- `line` is the text of line `line_row` their ranges refer to, when known.
local function track(items, bufnr, encoding, line, line_row)
  local tracked = {}
  for _, item in ipairs(items) do
    if type(item.insertText) == 'string' and item.range then
      local row = item.range.start.line
      if row ~= line_row or not line then
        line = vim.api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
        line_row = row
      end
      table.insert(tracked, {
        row = row,
        col = compat.byte_col(line, item.range.start.character, encoding),
        text = item.insertText,
      })
    end
  end
  return tracked
end

--- Wraps `client`'s requests so that vim.lsp.inline_completion gets narrowed items (see the top of the file).
local function adjust_requests(client)
  if wrapped[client] then
    return
  end
  wrapped[client] = true
  local request = client.request
  client.request = function(self, method, params, handler, bufnr)
    if method == METHOD and type(handler) == 'function' and type(params) == 'table' and params.position then
      local target = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
      local row = params.position.line
      -- The line as the server sees it: the request flushes the changes made so far.
      local line = vim.api.nvim_buf_get_lines(target, row, row + 1, false)[1]
      local inner = handler
      handler = function(err, result, ctx)
        if not err and type(result) == 'table' and vim.api.nvim_buf_is_valid(target) then
          local items = {}
          for _, item in ipairs(result.items or result) do
            table.insert(items, narrow(item, line, row, client.offset_encoding))
          end
          result = { items = items }
          local state = state_of(target)
          state.handler, state.client_id = inner, client.id
          if in_insert_mode() then -- what Neovim's handler shows
            state.items = track(items, target, client.offset_encoding, line, row)
          end
        end
        return inner(err, result, ctx)
      end
    end
    return request(self, method, params, handler, bufnr)
  end
end

--- The extmark vim.lsp.inline_completion draws in `bufnr`: row, col and the text of its first line.
local function drawn(bufnr)
  local namespace = vim.api.nvim_get_namespaces()[NAMESPACE]
  if not namespace then
    return nil
  end
  local mark = vim.api.nvim_buf_get_extmarks(bufnr, namespace, 0, -1, { limit = 1, details = true })[1]
  if not mark then
    return nil
  end
  local chunk = mark[4].virt_text and mark[4].virt_text[1]
  return { row = mark[2], col = mark[3], text = chunk and chunk[2] == 'ComplHint' and chunk[1] or '' }
end

--- The tracked items that can be the one drawn: Neovim draws an item's text from the column it skips to.
local function drawn_items(bufnr, mark)
  local found = {}
  for _, item in ipairs(state_of(bufnr).items) do
    local first = text.lines(item.text)[1]
    local skip = mark.col - item.col
    if item.row == mark.row and skip >= 0 and first:sub(skip + 1) == mark.text then
      table.insert(found, item)
    end
  end
  return found
end

--- Asks vim.lsp.inline_completion for a suggestion as if the cursor had moved (its debounced request).
local function request_soon(bufnr)
  pcall(vim.api.nvim_exec_autocmds, 'CursorMovedI', {
    group = ('nvim.lsp.inline_completion:%d'):format(bufnr),
    buffer = bufnr,
    modeline = false,
  })
end

--- Drops Neovim's suggestion state for the buffer (switching the feature off and on does).
local function drop(bufnr)
  local state = state_of(bufnr)
  state.items, state.handler = {}, nil
  vim.lsp.inline_completion.enable(false, { bufnr = bufnr })
  vim.lsp.inline_completion.enable(enabled, { bufnr = bufnr })
end

--- After typing: drops a suggestion the text before the cursor no longer matches, and asks for a new one.
local function on_typed(bufnr)
  if not enabled or vim.api.nvim_get_current_buf() ~= bufnr then
    return
  end
  local mark = drawn(bufnr)
  if not mark then
    return
  end
  local candidates = drawn_items(bufnr, mark)
  if #candidates == 0 then
    return -- not a suggestion of this server
  end
  for _, item in ipairs(candidates) do
    local typed = buffer.text_to_cursor(bufnr, item.row, item.col)
    local rest = typed and text.remaining(item.text, typed)
    if rest and rest ~= '' then
      return -- still what the user is typing
    end
  end
  drop(bufnr)
  request_soon(bufnr)
end

function M.attach(client, bufnr)
  attached[bufnr] = client.id
  adjust_requests(client)
  vim.lsp.inline_completion.enable(enabled, { bufnr = bufnr })
  local group = vim.api.nvim_create_augroup('diffgemma.native.' .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ 'CursorMovedI', 'TextChangedI' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      on_typed(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd({ 'InsertLeave', 'BufUnload' }, {
    group = group,
    buffer = bufnr,
    callback = function(args)
      state_of(bufnr).items = {}
      if args.event == 'BufUnload' then
        states[bufnr], attached[bufnr] = nil, nil
        vim.api.nvim_del_augroup_by_id(group)
      end
    end,
  })
end

function M.visible(bufnr)
  return drawn(bufnr) ~= nil
end

--- Shows `insert_text` at the cursor through vim.lsp.inline_completion, as if the server had answered it.
---@return boolean whether it could
local function show_rest(bufnr, client_id, insert_text, command)
  local state = state_of(bufnr)
  local client = vim.lsp.get_client_by_id(client_id)
  if not state.handler or state.client_id ~= client_id or not client or insert_text == '' then
    return false
  end
  local position = vim.lsp.util.make_position_params(0, client.offset_encoding).position
  local item = { insertText = insert_text, range = { start = position, ['end'] = position }, command = command }
  local ok = pcall(state.handler, nil, { items = { item } }, { method = METHOD, client_id = client_id, bufnr = bufnr })
  if ok then
    state.items = track({ item }, bufnr, client.offset_encoding)
  end
  return ok
end

--- The typed text since the item's range start and what of the item is left, if the typing matches it.
local function typed_and_rest(bufnr, item)
  if type(item.insert_text) ~= 'string' or not item.range then
    return nil, nil
  end
  local row, col = item.range:to_extmark()
  local typed = buffer.text_to_cursor(bufnr, row, col)
  return typed, typed and text.remaining(item.insert_text, typed)
end

--- For a whole accept after typing part of the item: inserts the rest at the cursor (Neovim would insert
--- the item over its range, repeating what was typed since) and runs the item's command.
local function accept_whole(bufnr, item)
  local typed, rest = typed_and_rest(bufnr, item)
  if not rest or typed == '' then
    return item
  end
  buffer.insert_at_cursor(bufnr, rest)
  local client = vim.lsp.get_client_by_id(item.client_id)
  if item.command and client then
    client:exec_cmd(item.command, { bufnr = bufnr })
  end
  return nil
end

--- For a partial accept: inserts the next word or line of the item, shows the rest at once and returns nil
--- (nothing more for Neovim to apply); returns the item itself when that piece is all that is left, or when
--- the item is a snippet or has no range, so Neovim accepts it whole and runs its command.
local function accept_part(bufnr, item, kind)
  local _, rest = typed_and_rest(bufnr, item)
  if not rest then
    return item
  end
  local piece = kind == 'word' and text.next_word(rest) or text.next_line(rest)
  if piece == rest then
    return accept_whole(bufnr, item)
  end
  buffer.insert_at_cursor(bufnr, piece)
  show_rest(bufnr, item.client_id, rest:sub(#piece + 1), item.command)
  return nil
end

---@param kind 'all'|'word'|'line'
function M.accept(bufnr, kind)
  vim.lsp.inline_completion.get({
    bufnr = bufnr,
    on_accept = function(item)
      state_of(bufnr).items = {}
      if kind == 'all' then
        return accept_whole(bufnr, item)
      end
      return accept_part(bufnr, item, kind)
    end,
  })
end

function M.cycle(bufnr, step)
  vim.lsp.inline_completion.select({ bufnr = bufnr, count = step })
end

--- Hides the suggestion: switching the feature off and on for the buffer drops its state.
function M.dismiss(bufnr)
  drop(bufnr)
end

--- The model became ready: a buffer in insert mode asks for the suggestion it could not get while loading.
function M.refresh()
  local bufnr = vim.api.nvim_get_current_buf()
  if enabled and attached[bufnr] and in_insert_mode() then
    request_soon(bufnr)
  end
end

function M.set_enabled(flag)
  enabled = flag
  for bufnr in pairs(attached) do
    if vim.api.nvim_buf_is_valid(bufnr) then
      state_of(bufnr).items = {}
      vim.lsp.inline_completion.enable(flag, { bufnr = bufnr })
    else
      attached[bufnr], states[bufnr] = nil, nil
    end
  end
end

return M
