# Tenant "acme" may only use profiles without network.
package aisbx

default allow := true

deny contains msg if {
	input.caller.tenant == "acme"
	input.profile.network != "none"
	msg := sprintf("tenant acme may not use network: profile %s has network %s", [input.profile.name, input.profile.network])
}
