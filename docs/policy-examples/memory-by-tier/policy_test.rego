package aisbx_test

import data.aisbx

test_unknown_tenants_get_the_free_tier if {
	l := aisbx.limits with input as {"caller": {"tenant": "someone"}}
	l.memory_bytes == 268435456
	l.timeout_secs == 30
}

test_acme_gets_the_pro_tier if {
	l := aisbx.limits with input as {"caller": {"tenant": "acme"}}
	l.memory_bytes == 2147483648
}

test_tiers_can_be_replaced_in_a_test if {
	l := aisbx.limits with input as {"caller": {"tenant": "x"}}
		with data.tenants as {"x": "pro"}
	l.timeout_secs == 600
}
