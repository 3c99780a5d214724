-- :Diffgemma [status|enable|disable|toggle|restart|log]. The server is registered by
-- require('diffgemma').setup() (see :help diffgemma).
if vim.g.loaded_diffgemma then
  return
end
vim.g.loaded_diffgemma = true

local SUBCOMMANDS = {
  status = function()
    local current = require('diffgemma').status()
    local enabled = require('diffgemma').is_enabled() and 'enabled' or 'disabled'
    print(('diffgemma: %s%s; completions %s'):format(
      current.state, current.message and (' (' .. current.message .. ')') or '', enabled))
  end,
  enable = function()
    require('diffgemma').enable()
  end,
  disable = function()
    require('diffgemma').disable()
  end,
  toggle = function()
    require('diffgemma').toggle()
  end,
  restart = function()
    require('diffgemma').restart()
  end,
  log = function()
    vim.cmd('botright new')
    vim.bo.buftype = 'nofile'
    vim.bo.bufhidden = 'wipe'
    vim.bo.swapfile = false
    vim.api.nvim_buf_set_name(0, 'diffgemma://log')
    vim.api.nvim_buf_set_lines(0, 0, -1, false, require('diffgemma.status').log)
    vim.bo.modifiable = false
  end,
}

vim.api.nvim_create_user_command('Diffgemma', function(args)
  local name = args.args ~= '' and args.args or 'status'
  local subcommand = SUBCOMMANDS[name]
  if not subcommand then
    vim.notify(('diffgemma: unknown subcommand %q; use one of: %s'):format(
      name, table.concat(vim.tbl_keys(SUBCOMMANDS), ', ')), vim.log.levels.ERROR)
    return
  end
  subcommand()
end, {
  nargs = '?',
  complete = function(lead)
    return vim.tbl_filter(function(name)
      return name:sub(1, #lead) == lead
    end, vim.tbl_keys(SUBCOMMANDS))
  end,
  desc = 'diffgemma: status, enable, disable, toggle, restart, log',
})
