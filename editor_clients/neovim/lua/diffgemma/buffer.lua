-- Cursor and text operations shared by the plugin's ghost text and the partial accepts of the native path.
-- Rows and columns are 0-based, columns in bytes (extmark coordinates).
local text = require('diffgemma.text')

local M = {}

---@return integer row, integer col of the cursor in the current window
function M.cursor()
  local cursor = vim.api.nvim_win_get_cursor(0)
  return cursor[1] - 1, cursor[2]
end

--- The buffer text from (row, col) to the cursor, lines joined with "\n"; nil if the cursor is before it.
---@return string|nil
function M.text_to_cursor(bufnr, row, col)
  local cursor_row, cursor_col = M.cursor()
  if cursor_row < row or (cursor_row == row and cursor_col < col) then
    return nil
  end
  return table.concat(vim.api.nvim_buf_get_text(bufnr, row, col, cursor_row, cursor_col, {}), '\n')
end

--- Inserts `piece` at the cursor and moves the cursor to its end (insert mode).
---@param bufnr integer
---@param piece string
function M.insert_at_cursor(bufnr, piece)
  local row, col = M.cursor()
  local lines = text.lines(piece)
  vim.api.nvim_buf_set_text(bufnr, row, col, row, col, lines)
  local end_row = row + #lines - 1
  local end_col = (#lines == 1 and col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { end_row + 1, end_col })
end

return M
