use std::process::ExitCode;

use paysync::config::{Cli, Command, env_file};
use paysync::{app, crd, http, telemetry};

fn main() -> ExitCode {
    // Before the runtime's threads exist: loading the settings file changes the environment.
    if let Err(e) = env_file::load() {
        eprintln!("paysync: cannot read the settings file: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse_and_check();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("paysync: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    // Commands that print data keep stdout for it.
    let to_stderr = !matches!(cli.command, Command::Serve(_) | Command::Migrate(_));
    if let Err(e) = telemetry::init(cli.log_format, to_stderr) {
        eprintln!("paysync: cannot set up logging: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Serve(args) => app::serve(*args).await,
        Command::Migrate(args) => app::migrate(args).await,
        Command::Openapi => print_openapi(),
        Command::Crd => print_crd(),
        Command::DeadLetters(command) => app::dead_letters(command).await,
        Command::Customers(command) => app::customers(command).await,
        Command::Reconcile(args) => app::reconcile(*args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "paysync failed");
            ExitCode::FAILURE
        }
    }
}

fn print_crd() -> anyhow::Result<()> {
    print!("{}", crd::crd_yaml()?);
    Ok(())
}

fn print_openapi() -> anyhow::Result<()> {
    println!("{}", http::openapi().to_pretty_json()?);
    Ok(())
}
