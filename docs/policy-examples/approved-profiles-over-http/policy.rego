# Over HTTP only approved profiles; the local command line and stdio keep
# every profile.
package aisbx

default allow := true

approved := {"base", "python", "node", "strict"}

deny contains msg if {
	input.caller.transport == "http"
	not approved[input.profile.name]
	msg := sprintf("profile %s is not approved for HTTP clients (approved: %s)", [input.profile.name, concat(", ", sort(approved))])
}
