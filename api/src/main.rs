use std::process::ExitCode;

use api::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    };
    observability::telemetry::init(config.log_format);
    if let Err(error) = serve(config).await {
        tracing::error!("{error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let listeners = api::Listeners::bind(&config).await?;
    let app = api::build(config).await?;
    tracing::info!(
        public = %listeners.public_addr(),
        admin = %listeners.admin_addr(),
        "serving: Swagger UI at /docs, metrics at /metrics on the admin address"
    );
    api::run(app, listeners).await?;
    Ok(())
}
