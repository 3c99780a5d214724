-- A cursor in the middle of a line (before the ")" of `end = _w().end()`): the suggestion is drawn between the
-- "(" and the ")" and the rest of the line stays on screen after it; <Tab> inserts it there.
local H = dofile(os.getenv('DIFFGEMMA_TEST_HARNESS'))
H.run(function()
  local config = H.config()
  local bufnr = H.start({ native = config.native })
  vim.o.columns = 300 -- the whole line on one screen row, however long the suggestion
  H.result.mode = require('diffgemma').mode()
  vim.api.nvim_win_set_cursor(0, { config.row, config.col })
  H.feed('i')
  H.wait(function()
    return vim.api.nvim_get_mode().mode == 'i'
  end, 5000, 'insert mode')
  H.result.before = H.line(bufnr, config.row)
  H.result.ghost = H.wait_for_ghost(bufnr)
  H.result.item = H.latest_items()[1]
  H.result.screen = H.screen_line(config.row)
  H.feed('<Tab>')
  H.result.after = H.wait_for_line_change(bufnr, config.row, H.result.before, 'the suggestion to be accepted')
  H.result.cursor_after = vim.api.nvim_win_get_cursor(0)
end)
