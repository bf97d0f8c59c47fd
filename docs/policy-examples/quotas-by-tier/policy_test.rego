package aisbx_test

import data.aisbx

test_unknown_tenants_get_the_free_quotas if {
	q := aisbx.quotas with input as {"tool": "run", "caller": {"tenant": "someone"}}
	q.concurrent_runs == 1
	q.sandboxes == 2
}

test_acme_gets_the_pro_quotas if {
	q := aisbx.quotas with input as {"tool": "run", "caller": {"tenant": "acme"}}
	q.concurrent_runs == 8
	not q.sandboxes
}

test_quotas_never_refuse_by_themselves if {
	aisbx.allow with input as {"tool": "run", "caller": {"tenant": "someone"}}
}
