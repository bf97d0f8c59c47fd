# Quotas by the tenant's tier, from data.json: a tenant not listed is on the free
# tier. They can only lower the quotas tenants.toml gives (`aisbx tenant quota`).
package aisbx

default allow := true

quota_tier := object.get(data.quota_tenants, input.caller.tenant, "free")

quotas := data.quota_tiers[quota_tier]
