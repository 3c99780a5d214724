-- Without a server: the pure text helpers and setup()'s option checks.
local H = dofile(os.getenv('DIFFGEMMA_TEST_HARNESS'))
H.run(function()
  local text = require('diffgemma.text')
  local cases = { ' item item', 'foo(bar)', '  \tx', ')\n    return 1', '\n    return 1\nend', '', 'é, x' }
  H.result.next_word, H.result.next_line, H.result.lines = {}, {}, {}
  for _, case in ipairs(cases) do
    table.insert(H.result.next_word, { case, text.next_word(case) })
    table.insert(H.result.next_line, { case, text.next_line(case) })
    table.insert(H.result.lines, { case, text.lines(case) })
  end
  H.result.remaining = {
    text.remaining('    return x', '    ret') or vim.NIL,
    text.remaining('    return x', '    rex') or vim.NIL,
    text.remaining('abc', 'abc') or vim.NIL,
  }
  H.result.errors = {}
  local bad = {
    { settigns = {} },
    { settings = { modle = 'x' } },
    { cmd = 'diffgemma-lsp' },
    { cmd = {} },
    { keymaps = { accept_all = '<Tab>' } },
    { keymaps = { accept = 1 } },
  }
  for _, options in ipairs(bad) do
    local ok, err = pcall(require('diffgemma').setup, options)
    table.insert(H.result.errors, ok and 'no error' or tostring(err))
  end
  local ok, err = pcall(require('diffgemma').accept)
  H.result.accept_before_setup = ok and 'no error' or tostring(err)

  -- The help file: its tags are generated without errors (a duplicate tag is one), in a scratch copy.
  local doc = vim.fn.tempname()
  vim.fn.mkdir(doc, 'p')
  local help = vim.api.nvim_get_runtime_file('doc/diffgemma.txt', false)[1]
  vim.fn.writefile(vim.fn.readfile(help), doc .. '/diffgemma.txt')
  vim.cmd('helptags ' .. vim.fn.fnameescape(doc))
  H.result.help_tags = {}
  H.result.help_tags_file = vim.fn.readfile(doc .. '/tags')
  for _, line in ipairs(H.result.help_tags_file) do
    table.insert(H.result.help_tags, vim.split(line, '\t')[1])
  end
end)
