-- Ghost text appears for a hole, <Tab> puts the suggestion in the buffer and the server counts the
-- acceptance; then (unless config.accept_only) :checkhealth diffgemma and a server restart (its status events and
-- messages).
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
  if config.accept_only then
    return
  end
  H.feed('<Esc>')
  H.wait(function()
    return vim.api.nvim_get_mode().mode == 'n'
  end, 5000, 'normal mode')
  vim.cmd('checkhealth diffgemma')
  H.result.health = H.lines(vim.api.nvim_get_current_buf())

  -- A restart replaces the server process and attaches the new one to the buffer. The old one's exit (a fast
  -- event) fires User DiffgemmaStatus with "stopped" without an error.
  H.record_status_events()
  local old_id = client.id
  require('diffgemma').restart()
  local restarted = H.wait(function()
    local new = H.client()
    return new and new.id ~= old_id and require('diffgemma').status().state == 'ready' and new
  end, 90000, 'the restarted server to be ready')
  H.result.restarted_attached = vim.lsp.buf_is_attached(bufnr, restarted.id)
  H.result.messages_after_restart = H.messages()
end)
