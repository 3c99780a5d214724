-- Neovim 0.12+: the built-in vim.lsp.inline_completion shows and accepts the server's suggestions. This module
-- turns it on for the buffers the server serves and adds what it lacks: accepting by word or by line, and
-- dismissing.
local buffer = require('diffgemma.buffer')
local text = require('diffgemma.text')

local M = {}

-- The namespace vim.lsp.inline_completion draws in.
local NAMESPACE = 'nvim.lsp.inline_completion'

local enabled = true
local attached = {} ---@type table<integer, true>

function M.attach(_, bufnr)
  attached[bufnr] = true
  vim.lsp.inline_completion.enable(enabled, { bufnr = bufnr })
end

function M.visible(bufnr)
  local namespace = vim.api.nvim_get_namespaces()[NAMESPACE]
  return namespace ~= nil and #vim.api.nvim_buf_get_extmarks(bufnr, namespace, 0, -1, { limit = 1 }) > 0
end

--- For a partial accept: inserts the next word or line of the item and returns nil (nothing more for
--- Neovim to apply); returns the item itself when that piece is all that is left, or when the item is a
--- snippet or has no range, so Neovim accepts it whole and runs its command.
local function accept_part(bufnr, item, kind)
  if type(item.insert_text) ~= 'string' or not item.range then
    return item
  end
  local row, col = item.range:to_extmark()
  local typed = buffer.text_to_cursor(bufnr, row, col)
  local rest = typed and text.remaining(item.insert_text, typed)
  if not rest then
    return item
  end
  local piece = kind == 'word' and text.next_word(rest) or text.next_line(rest)
  if piece == rest then
    return item
  end
  buffer.insert_at_cursor(bufnr, piece)
  return nil
end

---@param kind 'all'|'word'|'line'
function M.accept(bufnr, kind)
  if kind == 'all' then
    vim.lsp.inline_completion.get({ bufnr = bufnr })
    return
  end
  vim.lsp.inline_completion.get({
    bufnr = bufnr,
    on_accept = function(item)
      return accept_part(bufnr, item, kind)
    end,
  })
end

function M.cycle(bufnr, step)
  vim.lsp.inline_completion.select({ bufnr = bufnr, count = step })
end

--- Hides the suggestion: switching the feature off and on for the buffer drops its state.
function M.dismiss(bufnr)
  vim.lsp.inline_completion.enable(false, { bufnr = bufnr })
  vim.lsp.inline_completion.enable(enabled, { bufnr = bufnr })
end

function M.set_enabled(flag)
  enabled = flag
  for bufnr in pairs(attached) do
    if vim.api.nvim_buf_is_valid(bufnr) then
      vim.lsp.inline_completion.enable(flag, { bufnr = bufnr })
    else
      attached[bufnr] = nil
    end
  end
end

return M
