# The default policy of aisbx. It keeps the behaviour of aisbx without a
# policy: every request is allowed, and the profile and the limits asked decide
# the run. Start your own from it with `aisbx policy init DIR`.
#
# The contract (docs/POLICY.md):
#   allow  - true lets the request through; undefined or false refuses it.
#   deny   - a set of reasons; any reason refuses the request and is shown
#            to the caller and written to the audit log.
#   limits - an object of ceilings applied to the run (timeout_secs,
#            memory_bytes, pids, cpus); the run gets the lower of each
#            ceiling and what its profile and request ask.
package aisbx

default allow := true

# Add reasons to refuse, for example:
#
#   deny contains "no network for tenant acme" if {
#       input.caller.tenant == "acme"
#       input.profile.network != "none"
#   }
#
# and ceilings, for example:
#
#   limits := {"timeout_secs": 60} if input.caller.transport == "http"
