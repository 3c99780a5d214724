-- Accept by word, then by line; dismiss; a key without a suggestion keeps its meaning; a cursor move and
-- leaving insert mode clear the ghost text (the plugin's own ghost text only).
local H = dofile(os.getenv('DIFFGEMMA_TEST_HARNESS'))
H.run(function()
  local config = H.config()
  local row = config.row
  local bufnr, client = H.start({ native = config.native })
  H.result.mode = require('diffgemma').mode()
  H.insert_at_end_of_line(row)

  H.result.ghost = H.wait_for_ghost(bufnr)
  H.result.line = H.line(bufnr, row)
  H.feed('<M-Right>')
  H.result.line_after_word = H.wait_for_line_change(bufnr, row, H.result.line, 'a word to be accepted')
  H.result.ghost_right_after_word = H.ghost(bufnr) or vim.NIL
  H.result.ghost_after_word = H.wait_for_ghost(bufnr, nil, 'the rest of the suggestion')
  H.feed('<M-Down>')
  H.result.line_after_line = H.wait_for_line_change(bufnr, row, H.result.line_after_word, 'a line to be accepted')
  H.wait_for_acceptances(client, bufnr, 1)

  H.result.ghost_before_dismiss = H.wait_for_ghost(bufnr, nil, 'a new suggestion')
  H.feed('<C-]>')
  H.wait_until_no_ghost(bufnr, 'the dismissed suggestion to disappear')
  H.result.line_after_dismiss = H.line(bufnr, row)
  H.feed('<Tab>')
  H.result.line_after_tab = H.wait_for_line_change(bufnr, row, H.result.line_after_dismiss, 'a plain <Tab>')

  if H.result.mode == 'ghost' then
    H.wait_for_ghost(bufnr, nil, 'a suggestion after the tab')
    H.feed('<Left>')
    H.wait_until_no_ghost(bufnr, 'a cursor move to clear the ghost text')
    H.result.cleared_by_cursor_move = true
    H.feed('<End>')
    H.wait_for_ghost(bufnr, nil, 'a suggestion at the end of the line again')
    H.feed('<Esc>')
    H.wait_until_no_ghost(bufnr, 'leaving insert mode to clear the ghost text')
    H.result.cleared_by_mode_change = vim.api.nvim_get_mode().mode == 'n'
  end
  H.result.stats = H.stats(client, bufnr)

  -- :Diffgemma disable: typing brings no suggestion; :Diffgemma enable: it comes back.
  H.feed('<Esc>')
  H.wait(function()
    return vim.api.nvim_get_mode().mode == 'n'
  end, 5000, 'normal mode')
  vim.cmd('Diffgemma disable')
  H.insert_at_end_of_line(row)
  H.feed('<BS>')
  H.sleep(1000)
  H.result.ghost_while_disabled = H.ghost(bufnr) or vim.NIL
  vim.cmd('Diffgemma enable')
  H.feed('<BS>')
  H.result.ghost_after_enable = H.wait_for_ghost(bufnr, nil, 'a suggestion once enabled again')
end)
