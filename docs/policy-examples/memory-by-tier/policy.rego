# Memory and time ceilings by the tenant's tier, from data.json: a tenant not
# listed is on the free tier.
package aisbx

default allow := true

tier := object.get(data.tenants, input.caller.tenant, "free")

limits := {
	"memory_bytes": data.tiers[tier].memory_bytes,
	"timeout_secs": data.tiers[tier].timeout_secs,
}
