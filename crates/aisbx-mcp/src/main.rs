//! `aisbx-mcp`: the aisbx MCP server (stdio by default; `--http ADDR` for Streamable HTTP).

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "aisbx-mcp",
    version,
    about = "The aisbx MCP server: run code in a sandbox from any MCP client."
)]
struct Cli {
    #[command(flatten)]
    mcp: aisbx_mcp::McpArgs,
}

fn main() {
    aisbx_mcp::maybe_run_helper();
    let cli = Cli::parse();
    std::process::exit(aisbx_mcp::main_with_args(cli.mcp));
}
