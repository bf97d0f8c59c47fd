//! Integration tests: real sandboxes started through the real `aisbx` binary.
//! Each isolation property is proven by attempting the attack and asserting it
//! fails. Every exhaustion test is bounded by design.

mod suite;
