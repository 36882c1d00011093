//! `skython`: one binary for the server (`up`) and the client commands.

mod client;
mod up;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "skython",
    version,
    about = "Plain Python functions as HTTP endpoints"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start Skython on this machine: gateway, Python runtime and embedded store.
    Up(up::UpArgs),
    /// Deploy (or update) a Python file as an endpoint.
    Deploy(client::DeployArgs),
    /// Call an endpoint with JSON arguments.
    Invoke(client::InvokeArgs),
    /// Show a function's recent logs.
    Logs(client::LogsArgs),
    /// List functions.
    Ls(client::LsArgs),
    /// Remember a server URL and token for the client commands.
    Login(client::LoginArgs),
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
    /// Print the SkyFunction CustomResourceDefinition (YAML).
    Crdgen,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async move {
        match cli.command {
            Command::Up(a) => up::run(a).await,
            Command::Deploy(a) => client::deploy(a).await,
            Command::Invoke(a) => client::invoke(a).await,
            Command::Logs(a) => client::logs(a).await,
            Command::Ls(a) => client::ls(a).await,
            Command::Login(a) => client::login(a),
            Command::Crdgen => {
                print!("{}", skython_crds::crd_yaml()?);
                Ok(())
            }
            Command::Openapi => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&skython_gateway::openapi::document())?
                );
                Ok(())
            }
        }
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
