-- A server command that is missing, not executable, or not a language server: a clear error that names the
-- command, and :checkhealth diffgemma says what is wrong and how to install the server.
local H = dofile(os.getenv('DIFFGEMMA_TEST_HARNESS'))
H.run(function()
  local config = H.config()
  require('diffgemma').setup({ cmd = config.cmd })
  vim.cmd('edit ' .. vim.fn.fnameescape(config.file))
  H.wait(function()
    return require('diffgemma').status().state == 'error' and H.client() == nil
  end, 10000, 'the plugin to report that the server cannot run')
  H.result.status = require('diffgemma').status()
  H.result.messages = H.wait(function()
    local messages = H.messages()
    return messages:find('diffgemma: ', 1, true) and messages
  end, 5000, 'an error message')
  vim.cmd('checkhealth diffgemma')
  H.result.health = H.lines(vim.api.nvim_get_current_buf())
end)
