# The `dev` seccomp filter (ptrace allowed, for debuggers) only for the
# tenants of the "debuggers" group in data.json.
package aisbx

default allow := true

deny contains msg if {
	input.profile.seccomp == "dev"
	not input.caller.tenant in data.groups.debuggers
	msg := sprintf("profile %s uses the dev seccomp filter, which only the debuggers group may use", [input.profile.name])
}
