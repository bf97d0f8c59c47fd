mod attacks;
mod cleanup;
mod common;
mod limits;
mod run_cli;
mod sandboxes;
mod snapshots;
mod unprivileged;
