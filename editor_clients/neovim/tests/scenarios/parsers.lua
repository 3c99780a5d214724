-- Neovim's bundled tree-sitter parsers are found: a .lua file opens without an error (its ftplugin starts
-- tree-sitter) and the lua parser loads.
local H = dofile(os.getenv('DIFFGEMMA_TEST_HARNESS'))
H.run(function()
  local file = vim.fn.tempname() .. '.lua'
  vim.fn.writefile({ 'local answer = 42', 'return answer' }, file)
  vim.v.errmsg = ''
  local ok, err = pcall(vim.cmd, 'edit ' .. vim.fn.fnameescape(file))
  H.result.edit_error = not ok and tostring(err) or vim.NIL
  H.result.errmsg = vim.v.errmsg
  H.result.filetype = vim.bo.filetype
  local called, loaded = pcall(vim.treesitter.language.add, 'lua')
  H.result.parser_added = called and loaded == true
  local parsed, parser = pcall(vim.treesitter.get_parser, 0, 'lua')
  H.result.parsed = parsed and parser ~= nil and parser:parse()[1]:root():type() or vim.NIL
  H.result.parser_files = vim.api.nvim_get_runtime_file('parser/lua.so', true)
end)
