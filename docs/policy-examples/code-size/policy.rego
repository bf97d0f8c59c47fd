# Code sent to `run` may be at most 64 KiB.
package aisbx

default allow := true

max_code_bytes := 65536

deny contains msg if {
	input.tool == "run"
	input.request.code_bytes > max_code_bytes
	msg := sprintf("the code is %d bytes, more than the %d allowed", [input.request.code_bytes, max_code_bytes])
}
