package aisbx_test

import data.aisbx

run_as(tenant, network) := {
	"tool": "run",
	"caller": {"tenant": tenant, "transport": "http"},
	"profile": {"name": "web", "network": network},
}

test_acme_with_network_is_refused if {
	d := aisbx.deny with input as run_as("acme", "host")
	d == {"tenant acme may not use network: profile web has network host"}
}

test_acme_without_network_is_allowed if {
	aisbx.allow with input as run_as("acme", "none")
	count({r | some r in aisbx.deny}) == 0 with input as run_as("acme", "none")
}

test_other_tenants_keep_network if {
	count({r | some r in aisbx.deny}) == 0 with input as run_as("globex", "host")
}
