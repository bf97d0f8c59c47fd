package aisbx_test

import data.aisbx

test_large_code_is_refused if {
	aisbx.deny == {"the code is 70000 bytes, more than the 65536 allowed"} with input as {"tool": "run", "request": {"code_bytes": 70000}}
}

test_small_code_is_allowed if {
	count({r | some r in aisbx.deny}) == 0 with input as {"tool": "run", "request": {"code_bytes": 100}}
}

test_commands_have_no_code if {
	count({r | some r in aisbx.deny}) == 0 with input as {"tool": "run", "request": {"code_bytes": 0, "command": ["ls"]}}
}
