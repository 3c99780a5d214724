-- Pure text helpers for ghost text: what part of a suggestion is still to come, and how much of it a partial
-- accept takes. Strings are byte strings (Lua); suggestions are split on "\n".
local M = {}

--- Splits on "\n" keeping empty pieces ("a\n" -> { "a", "" }).
---@param text string
---@return string[]
function M.lines(text)
  local lines = {}
  local start = 1
  while true do
    local newline = text:find('\n', start, true)
    if not newline then
      table.insert(lines, text:sub(start))
      return lines
    end
    table.insert(lines, text:sub(start, newline - 1))
    start = newline + 1
  end
end

--- The rest of `insert_text` after `typed`, or nil when the user typed something else.
---@param insert_text string
---@param typed string
---@return string|nil
function M.remaining(insert_text, typed)
  if insert_text:sub(1, #typed) ~= typed then
    return nil
  end
  return insert_text:sub(#typed + 1)
end

--- The next word of `text`: leading blanks and then a run of word characters or of other non-blank
--- characters. At a line break: the break and the next line's indentation.
---@param text string
---@return string
function M.next_word(text)
  return text:match('^\n[ \t]*')
    or text:match('^[ \t]*[%w_]+')
    or text:match('^[ \t]*[^%w_%s]+')
    or text:match('^[ \t]+')
    or text
end

--- The rest of the current line of `text` (without its line break); at a line break, the break and the whole
--- next line.
---@param text string
---@return string
function M.next_line(text)
  if text:sub(1, 1) == '\n' then
    return '\n' .. (text:match('^\n([^\n]*)') or '')
  end
  return text:match('^[^\n]*')
end

return M
