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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version succeed; a bad argument is aisbx's own refusal
            // (125, as every aisbx failure), never a status a program could return.
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 125 } else { 0 });
        }
    };
    std::process::exit(aisbx_mcp::main_with_args(cli.mcp));
}
