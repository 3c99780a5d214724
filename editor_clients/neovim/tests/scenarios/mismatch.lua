-- Typing a character that is not the suggestion's next one: the suggestion disappears at once (it is not
-- kept on screen shifted behind the typed character), and a fresh one for the new text follows.
local H = dofile(os.getenv('DIFFGEMMA_TEST_HARNESS'))
H.run(function()
  local config = H.config()
  local row = config.row
  local bufnr = H.start({ native = config.native })
  H.result.mode = require('diffgemma').mode()
  H.insert_at_end_of_line(row)
  H.result.ghost = H.wait_for_ghost(bufnr)
  H.result.line = H.line(bufnr, row)
  local next_char = H.result.ghost.lines[1]:sub(1, 1)
  H.result.typed = next_char == 'Q' and 'Z' or 'Q'
  local answers = #H.responses
  H.feed(H.result.typed)
  H.result.line_after_typing = H.wait_for_line_change(bufnr, row, H.result.line, 'the typed character')
  -- Well within the 150-200 ms before a new request is even sent.
  H.sleep(40)
  H.result.ghost_right_after_typing = H.ghost(bufnr) or vim.NIL
  H.result.screen_right_after_typing = H.screen_line(row)
  H.result.fresh = H.wait_for_ghost(bufnr, nil, 'a fresh suggestion without another keystroke')
  H.result.answers_after_typing = #H.responses - answers
  H.result.fresh_item = H.latest_items()[1]
end)
