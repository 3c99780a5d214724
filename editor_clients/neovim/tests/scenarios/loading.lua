-- Insert mode entered while the server loads the model: the request made then gets nothing (the server has no
-- model yet); once the server reports it is ready, a suggestion appears without another keystroke.
local H = dofile(os.getenv('DIFFGEMMA_TEST_HARNESS'))
H.run(function()
  local config = H.config()
  require('diffgemma').setup({ cmd = config.cmd, settings = config.settings, native = config.native })
  vim.cmd('edit ' .. vim.fn.fnameescape(config.file))
  local bufnr = vim.api.nvim_get_current_buf()
  H.result.mode = require('diffgemma').mode()
  local client = H.wait(function()
    local client = H.client()
    local loading = require('diffgemma').status().state == 'loading'
    return loading and client and vim.lsp.buf_is_attached(bufnr, client.id) and client
  end, 30000, 'the diffgemma client to attach and the server to load the model')
  H.record_inline_completions(client)
  H.insert_at_end_of_line(config.row)
  H.result.state_at_insert = require('diffgemma').status().state
  H.wait(function()
    return require('diffgemma').status().state == 'ready'
  end, 90000, 'the server to load the model')
  H.result.ghost = H.wait_for_ghost(bufnr, nil, 'a suggestion once the model is ready', 15000)
  H.result.answers = H.responses
  H.result.answer_states = H.response_states
  H.result.item = H.latest_items()[1]
  H.result.line = H.line(bufnr, config.row)
end)
