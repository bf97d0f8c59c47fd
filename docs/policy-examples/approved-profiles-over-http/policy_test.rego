package aisbx_test

import data.aisbx

req(transport, profile) := {"caller": {"transport": transport}, "profile": {"name": profile}}

test_unapproved_profile_over_http_is_refused if {
	aisbx.deny == {"profile dev is not approved for HTTP clients (approved: base, node, python, strict)"} with input as req("http", "dev")
}

test_approved_profile_over_http_is_allowed if {
	count({r | some r in aisbx.deny}) == 0 with input as req("http", "python")
}

test_any_profile_from_the_cli if {
	count({r | some r in aisbx.deny}) == 0 with input as req("cli", "dev")
}
