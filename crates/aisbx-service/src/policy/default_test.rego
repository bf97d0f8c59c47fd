# Tests of the default policy; `aisbx policy test DIR` runs every test_* rule.
package aisbx_test

import data.aisbx

plain_run := {
	"tool": "run",
	"caller": {"tenant": "default", "transport": "cli", "client": "alice"},
	"request": {
		"language": "python",
		"code": "print(1)",
		"code_bytes": 8,
		"command": [],
		"files": [],
		"limits": {},
		"sandbox_id": null,
		"workdir": false,
	},
	"profile": {
		"name": "python",
		"limits": {"timeout_secs": 30, "memory_bytes": 536870912, "pids": 256, "cpus": 1},
		"seccomp": "default",
		"network": "none",
		"ro_binds": [],
		"rw_binds": [],
	},
}

test_allows_a_plain_run if {
	aisbx.allow with input as plain_run
}

test_gives_no_reason_to_refuse if {
	count({r | some r in aisbx.deny}) == 0 with input as plain_run
}

test_sets_no_ceiling if {
	not aisbx.limits with input as plain_run
}

test_allows_every_transport if {
	every t in ["cli", "stdio", "http", "unix"] {
		aisbx.allow with input as object.union(plain_run, {"caller": {"tenant": "default", "transport": t}})
	}
}
