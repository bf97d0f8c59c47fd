package aisbx_test

import data.aisbx

req(tenant, seccomp) := {"caller": {"tenant": tenant}, "profile": {"name": "gdb", "seccomp": seccomp}}

test_dev_outside_the_group_is_refused if {
	count(aisbx.deny) == 1 with input as req("acme", "dev")
}

test_dev_inside_the_group_is_allowed if {
	count({r | some r in aisbx.deny}) == 0 with input as req("lab", "dev")
}

test_default_seccomp_is_allowed_for_everyone if {
	count({r | some r in aisbx.deny}) == 0 with input as req("acme", "default")
}
