-- Ghost text appears for a hole, <Tab> puts the suggestion in the buffer and the server counts the
-- acceptance; then :checkhealth diffgemma.
local H = dofile(os.getenv('DIFFGEMMA_TEST_HARNESS'))
H.run(function()
  local config = H.config()
  local bufnr, client = H.start({ native = config.native })
  H.result.mode = require('diffgemma').mode()
  H.insert_at_end_of_line(config.row)
  H.result.ghost = H.wait_for_ghost(bufnr)
  H.result.item = H.latest_items()[1]
  H.result.before = H.lines(bufnr)
  H.feed('<Tab>')
  H.wait_for_line_change(bufnr, config.row, H.result.before[config.row], 'the suggestion to be accepted')
  H.result.after = H.lines(bufnr)
  H.result.cursor_after = vim.api.nvim_win_get_cursor(0)
  H.wait_for_acceptances(client, bufnr, 1)
  H.feed('<Esc>')
  H.wait(function()
    return vim.api.nvim_get_mode().mode == 'n'
  end, 5000, 'normal mode')
  vim.cmd('checkhealth diffgemma')
  H.result.health = H.lines(vim.api.nvim_get_current_buf())
end)
