-- The README's manual setup: the plugin directory appended to 'runtimepath', nothing else; :help finds the
-- plugin's help.
local H = dofile(os.getenv('DIFFGEMMA_TEST_HARNESS'))
H.run(function()
  local config = H.config()
  vim.opt.rtp:append(config.plugin_dir)
  H.result.help = {}
  for _, subject in ipairs({ 'diffgemma', 'diffgemma-setup', ':Diffgemma' }) do
    local ok, err = pcall(vim.cmd, 'help ' .. subject)
    table.insert(H.result.help, {
      subject = subject,
      error = not ok and tostring(err) or vim.NIL,
      file = ok and vim.fn.fnamemodify(vim.api.nvim_buf_get_name(0), ':t') or vim.NIL,
      line = ok and vim.api.nvim_get_current_line() or vim.NIL,
    })
    if ok then
      vim.cmd('helpclose')
    end
  end
end)
